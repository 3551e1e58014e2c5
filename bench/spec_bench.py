"""Benchmark of reading a large spec: load + validate, and `apply --dry-run`, against yaml.

    python bench/spec_bench.py [--sites 99000] [--repeat 3]

Writes a spec of `--sites` sites (each with a description) plus the demo pipeline,
about 10 MB at 99,000 sites, and times, interleaved: PyYAML's C parser reading the
file alone (the baseline: what any YAML reader pays), `load_spec_files` (parse with
line numbers, bounds, pydantic), and the whole `apply` in a transaction that is rolled
back, on a throwaway database of the CCAT_OPS_DB_URL server. Prints medians, the
ratio of loading to the baseline, and a last line of JSON. Target: 10 MB in under 10 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import scratch_database
from ccat_ops_db import migrate
from ccat_wm.db import get_engine, normalize_db_url
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from tests.helpers import demo_spec_data, locations_data

TARGET_S = 10.0


def write_spec(path: Path, sites: int) -> int:
    """Write the big spec; return its size in bytes."""
    spec = {**locations_data(path.parent), **demo_spec_data()}
    spec["sites"] = [
        {"name": f"site-{i:06d}", "description": f"an observing site number {i} " + "x" * 40}
        for i in range(sites)
    ]
    path.write_text(yaml.safe_dump(spec, sort_keys=False, width=200))
    return path.stat().st_size


def main() -> None:
    """Time the three readers, interleaved, and print medians."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sites", type=int, default=99_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, scratch_database("ccat_wm_bench_spec") as url:
        path = Path(tmp) / "big.yaml"
        size = write_spec(path, args.sites)
        engine = get_engine(normalize_db_url(url))
        migrate.upgrade(engine)
        times: dict[str, list[float]] = {"yaml_c": [], "load": [], "apply_dry_run": []}
        for _ in range(args.repeat):
            started = time.perf_counter()
            yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
            times["yaml_c"].append(time.perf_counter() - started)
            started = time.perf_counter()
            loaded = load_spec_files([path])
            times["load"].append(time.perf_counter() - started)
            started = time.perf_counter()
            with Session(engine) as session:
                apply_specs(session, load_spec_files([path]), user="bench")
                session.rollback()
            times["apply_dry_run"].append(time.perf_counter() - started)
        assert len(loaded[0].spec.sites) == args.sites
        medians = {k: statistics.median(v) for k, v in times.items()}
        print(f"spec of {args.sites:,} sites, {size / 2**20:.1f} MB; medians of {args.repeat}:")
        for name, value in medians.items():
            print(f"  {name:15s} {value:8.2f} s")
        ratio = medians["load"] / medians["yaml_c"]
        print(f"  load / yaml_c   {ratio:8.1f}x")
        verdict = "met" if medians["apply_dry_run"] < TARGET_S else "NOT met"
        print(f"target: apply --dry-run of this spec under {TARGET_S:.0f} s: {verdict}")
        print(
            json.dumps(
                {
                    "sites": args.sites,
                    "megabytes": round(size / 2**20, 1),
                    **{f"{k}_s": round(v, 3) for k, v in medians.items()},
                    "load_over_yaml_c": round(ratio, 2),
                }
            )
        )


if __name__ == "__main__":
    main()
