"""Benchmark of result collection against the bare SHA-256 throughput of hashlib.

    python bench/ingest_bench.py [--small 2000x1] [--large 20x100] [--repeat 3]

Writes N files of S MB into a run's output directory (`science/`), then alternately
times (a) reading and hashing every file with Python's hashlib (OpenSSL), one after the
other, the real limit here, and (b) our whole collection: scan and classify the
directory, checksum every file, register the products in the ops DB (one transaction,
rolled back). Files are in the page cache for both (just written, read before timing).
Prints medians and the ratio collection / hashlib; the target is at most 1.25.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import scratch_database
from ccat_ops_db import migrate
from ccat_ops_db import models as m
from ccat_wm.db import get_engine, normalize_db_url
from ccat_wm.execution.collect import (
    checksum_outputs,
    register_products,
    scan_outputs,
    verify_unchanged,
)
from ccat_wm.execution.layout import RunLayout
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files

SPEC = """
locations:
  - {name: local, site: bench, location_type: PROCESSING, backend: local, path: /tmp/ccat-ingest-bench}
software:
  - {name: tool, versions: [{tag: "1.0.0", is_latest: true}]}
data_groupings:
  - {name: bench, filter_rules: []}
pipelines:
  - name: bench
    data_grouping: bench
    processing_location: local
    steps:
      - {name: reduce, software: tool, group_by: [], config: {name: c, command: [x]}}
"""


def write_files(layout: RunLayout, count: int, size_mb: int) -> list[Path]:
    block = os.urandom(1024 * 1024)
    paths = []
    (layout.output / "science").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = layout.output / "science" / f"file-{i:05d}.dat"
        with path.open("wb") as handle:
            for _ in range(size_mb):
                handle.write(block)
        paths.append(path)
    return paths


def bare_hashlib(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        with path.open("rb") as handle:
            hashlib.file_digest(handle, "sha256").hexdigest()
    return time.perf_counter() - start


def collection(engine, layout: RunLayout, run_id: int, *, verify: bool = True) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    records = checksum_outputs(scan_outputs(layout))
    with Session(engine) as session:
        register_products(session, run_id, records)
        if verify:
            verify_unchanged(records)  # the run's collection re-hashes every product
        session.flush()
        elapsed = time.perf_counter() - start
        session.rollback()
    return elapsed


def make_run(engine) -> int:  # type: ignore[no-untyped-def]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(SPEC)
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([Path(handle.name)]), user="bench")
        step = session.scalars(select(m.ReductionStep)).one()
        version = session.scalars(select(m.ReductionSoftwareVersion)).one()
        run = m.ExecutedReductionStep(
            reduction_step_id=step.id, reduction_software_version_id=version.id,
            status=m.RunStatus.COLLECTING_RESULTS, sub_group_key="", reason=m.GapReason.NEW,
            input_fingerprint="v1:0:0", config_fingerprint="x",
        )  # fmt: skip
        session.add(run)
        session.flush()
        return run.id


def case(engine, run_id: int, root: Path, count: int, size_mb: int, repeat: int) -> None:  # type: ignore[no-untyped-def]
    layout = RunLayout.for_run(
        root, "bench", f"case={count}x{size_mb}", run_id, "reduce", is_final=True
    )
    layout.create()
    paths = write_files(layout, count, size_mb)
    bare_hashlib(paths)  # warm the page cache
    bares, ours, singles = [], [], []
    for _ in range(repeat):
        bares.append(bare_hashlib(paths))
        ours.append(collection(engine, layout, run_id))
        singles.append(collection(engine, layout, run_id, verify=False))
    bare, our = statistics.median(bares), statistics.median(ours)
    single = statistics.median(singles)
    total_mb = count * size_mb
    print(
        f"{count:>6} x {size_mb:>3} MB  hashlib {bare:7.3f} s ({total_mb / bare:7.1f} MB/s)  "
        f"collection {our:7.3f} s ({total_mb / our:7.1f} MB/s)  ratio {our / bare:5.2f}  "
        f"(without the final re-hash {single:7.3f} s, ratio {single / bare:5.2f})",
        flush=True,
    )
    for path in paths:
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", default="2000x1")
    parser.add_argument("--large", default="20x100")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with (
        scratch_database(f"ccat_wm_ingest_bench_{os.getpid()}") as url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        engine = get_engine(normalize_db_url(url))
        migrate.upgrade(engine)
        run_id = make_run(engine)
        print(f"hash workers: {os.cpu_count()} CPUs; medians of {args.repeat}")
        for spec in (args.small, args.large):
            count, size = (int(v) for v in spec.split("x"))
            case(engine, run_id, Path(tmp), count, size, args.repeat)
        engine.dispose()


if __name__ == "__main__":
    main()
