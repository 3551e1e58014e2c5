"""`ccat-wm verify`: check that the files on disk are still what the ops DB recorded.

Every registered product (of one pipeline, or all) and every staged package copy at a
processing location is checked: missing, a different size, or a different SHA-256 is
reported. Files that nothing in the ops DB claims are reported as unexpected, where
they should not be: in the output directory of a COMPLETED run, and in a processing
location's `.staging/` cache. The rows come from two set-based queries; the files are
hashed in parallel (hashlib releases the GIL while hashing), so a check runs at the
speed of the disks or of the cores, whichever is slower (bench/verify_bench.py).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, aliased

from ccat_ops_db import models as m
from ccat_wm.errors import CcatWmError
from ccat_wm.execution.checksums import sha256_file
from ccat_wm.execution.layout import RunLayout
from ccat_wm.execution.runtree import UnsafeEntryError, open_regular_path
from ccat_wm.execution.scan import SIDECAR
from ccat_wm.execution.staging import STAGING_CACHE

_IN_PROGRESS = re.compile(r"^\..+\.tmp-\d+$")
"""A copy or link being made (staging writes `.<name>.tmp-<pid>`, then renames it)."""


@dataclass(frozen=True, slots=True)
class Expected:
    """A file the ops DB records, with its size and checksum."""

    path: str
    kind: str
    """`product` or `staged copy`."""
    id: int
    """The product's id, or the raw data package's."""
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Finding:
    """A file that is not what the ops DB recorded."""

    path: str
    kind: str
    id: int
    problem: str
    """`missing`, `size`, `checksum`, or `not-a-file` (a symlink, FIFO or device in its place:
    never followed, never read)."""
    expected_size: int
    actual_size: int | None = None
    expected_sha256: str = ""
    actual_sha256: str | None = None
    note: str | None = None
    """What stands in a `not-a-file` finding's place."""


@dataclass(slots=True)
class VerifyReport:
    """What `verify` checked and found."""

    pipeline: str | None
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    missing: list[Finding] = field(default_factory=list)
    changed: list[Finding] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing missing, changed or unexpected."""
        return not (self.missing or self.changed or self.unexpected)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with `ok`."""
        return {**asdict(self), "ok": self.ok}


def _pipeline_id(session: Session, pipeline: str) -> int:
    found = session.scalar(select(m.Pipeline.id).where(m.Pipeline.name == pipeline))
    if found is None:
        known = ", ".join(session.scalars(select(m.Pipeline.name).order_by(m.Pipeline.name)))
        raise CcatWmError(f"unknown pipeline {pipeline!r}; known: {known or 'none'}")
    return found


def expected_files(session: Session, pipeline: str | None = None) -> list[Expected]:
    """Products (of `pipeline`, or all) and staged package copies at processing locations."""
    product, run, step = m.DataProduct, m.ExecutedReductionStep, m.ReductionStep
    products = (
        select(product.file_path, product.id, product.file_size, product.checksum)
        .join(run, run.id == product.executed_reduction_step_id)
        .join(run.reduction_step)
    )
    copy, pkg, place = m.RawDataPackageCopy, m.RawDataPackage, m.DataLocation
    copies = (
        select(copy.path, pkg.id, pkg.size, pkg.checksum)
        .join(pkg, pkg.id == copy.raw_data_package_id)
        .join(place, place.id == copy.data_location_id)
        .where(place.location_type == m.LocationType.PROCESSING)
    )
    if pipeline is not None:
        pipeline_id = _pipeline_id(session, pipeline)
        products = products.where(step.pipeline_id == pipeline_id)
        copies = copies.where(
            place.id == select(m.Pipeline.processing_location_id).where(
                m.Pipeline.id == pipeline_id
            ).scalar_subquery()
        )  # fmt: skip
    rows = [Expected(p, "product", i, s, c) for p, i, s, c in session.execute(products)]
    rows += [Expected(p, "staged copy", i, s, c) for p, i, s, c in session.execute(copies)]
    return rows


def watched_directories(session: Session, pipeline: str | None = None) -> list[Path]:
    """Directories where every file should be recorded: COMPLETED runs' outputs, `.staging/`."""
    run, step, pipe, place = m.ExecutedReductionStep, m.ReductionStep, m.Pipeline, m.DataLocation
    downstream = aliased(m.reduction_step_dependency)
    query = (
        select(
            place.path, pipe.name, run.sub_group_key, run.id, step.name,
            ~exists().where(downstream.c.depends_on_step_id == step.id),
        )
        .join(run.reduction_step)
        .join(step.pipeline)
        .join(pipe.processing_location)
        .where(run.status == m.RunStatus.COMPLETED)
    )  # fmt: skip
    locations = select(place.path).where(place.location_type == m.LocationType.PROCESSING)
    if pipeline is not None:
        pipeline_id = _pipeline_id(session, pipeline)
        query = query.where(pipe.id == pipeline_id)
        locations = locations.join(pipe, pipe.processing_location_id == place.id).where(
            pipe.id == pipeline_id
        )
    dirs = [
        RunLayout.for_run(Path(base), name, key, run_id, step_name, is_final=final).output
        for base, name, key, run_id, step_name, final in session.execute(query)
    ]
    return dirs + [Path(base) / STAGING_CACHE for base in session.scalars(locations)]


def _check(item: Expected) -> Finding | None:
    """Compare one file with its record; open only a regular file, without following a link."""
    try:
        with open_regular_path(Path(item.path)) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size != item.size:
                return Finding(item.path, item.kind, item.id, "size", item.size, size, item.sha256)
            actual = sha256_file(handle)  # type: ignore[arg-type]
    except FileNotFoundError:
        return Finding(item.path, item.kind, item.id, "missing", item.size, None, item.sha256)
    except UnsafeEntryError as exc:
        return Finding(item.path, item.kind, item.id, "not-a-file", item.size, None, item.sha256,
                       note=exc.what)  # fmt: skip
    if actual != item.sha256:
        return Finding(item.path, item.kind, item.id, "checksum", item.size, size, item.sha256,
                       actual)  # fmt: skip
    return None


def check_files(
    expected: Sequence[Expected], watched: Iterable[Path] = (), *, workers: int | None = None
) -> VerifyReport:
    """Check every expected file (in parallel) and look for unclaimed files in `watched`."""
    report = VerifyReport(pipeline=None)
    started = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # Largest first: a long hash does not start last and hold up the end.
        ordered = sorted(expected, key=lambda e: e.size, reverse=True)
        for finding in pool.map(_check, ordered, chunksize=64):
            if finding is None:
                continue
            (report.missing if finding.problem == "missing" else report.changed).append(finding)
    claimed = {item.path for item in expected}
    for directory in watched:
        for root, _, files in os.walk(directory):
            report.unexpected.extend(
                path
                for name in files
                if (path := os.path.join(root, name)) not in claimed
                and path.removesuffix(SIDECAR) not in claimed  # its metadata is recorded
                and not _IN_PROGRESS.match(name)
            )
    report.files = len(expected)
    report.bytes = sum(item.size for item in expected)
    report.seconds = time.perf_counter() - started
    report.missing.sort(key=lambda f: f.path)
    report.changed.sort(key=lambda f: f.path)
    report.unexpected.sort()
    return report


def verify(
    session: Session, pipeline: str | None = None, *, workers: int | None = None
) -> VerifyReport:
    """Check the products (of `pipeline`, or all) and staged copies against the ops DB."""
    expected = expected_files(session, pipeline)
    watched = watched_directories(session, pipeline)
    session.rollback()  # hold no transaction while the disks are read
    report = check_files(expected, watched, workers=workers)
    report.pipeline = pipeline
    return report
