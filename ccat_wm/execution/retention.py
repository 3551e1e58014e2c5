"""`ccat-wm gc`: the retention policy of a processing location's disk.

What is removed, per processing location:

- **Staged copies** (`<location>/.staging/<package>`, recorded as the package's copy at
  the location) that no PENDING or in-flight run consumes. The copy's record goes in
  the same transaction; a later run stages the package again.
- **A COMPLETED run's workspace**: its `input/` and everything under `workspace/` that is
  not one of its registered products. Its products (intermediate ones live in
  `workspace/<step>/`), `output/`, `config/manifest.json` and `logs/` stay.
- **A FAILED or CANCELLED run's directory**, `failed_run_retention_days` (location
  setting, default 14) after the run ended: everything but its registered products
  (the logs of its attempts).

Never removed: a file recorded as a product (of any run: each candidate is looked up
in the product table by its path and by its real path, so a location whose `path` was
respelled through a symlink still protects its products), a file whose place below its
run directory is that of one of the run's products while its real path is not (the
location's directory looks moved: it is kept and reported as a warning, in `--dry-run`
too), anything outside the run directories and
the staging cache (archive copies live elsewhere; a run's `input/` holds hard links or
private copies, and removing a link never changes the file it shares), and anything of
a run that is PENDING or in flight. Runs are chosen and locked (`FOR UPDATE`) in one
transaction that also records what was removed (`run_cleanup`), so a run whose status
changes meanwhile is left alone, and a run is cleaned once. Symbolic links are removed,
never followed. `bytes_freed` counts files whose last link was removed. A location whose
pass fails (its disk unreadable, say) is reported with its error, and the other
locations are still processed.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ARRAY,
    Connection,
    Engine,
    String,
    and_,
    any_,
    delete,
    exists,
    insert,
    literal,
    or_,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from ccat_ops_db import models as m
from ccat_wm.errors import CcatWmError
from ccat_wm.execution.layout import run_root
from ccat_wm.execution.staging import STAGING_CACHE

DEFAULT_FAILED_RETENTION_DAYS = 14.0
"""Days a failed or cancelled run's directory is kept unless the location says otherwise."""
RUN = m.ExecutedReductionStep
KEPT_IN_A_COMPLETED_RUN = ("output", "config", "logs")
"""Top-level directories of a COMPLETED run that gc leaves (besides its products)."""


@dataclass(slots=True)
class Removal:
    """What one gc pass removed (or, with `--dry-run`, would remove) at one location."""

    location: str
    dry_run: bool
    staged_copies: int = 0
    completed_workspaces: int = 0
    failed_run_directories: int = 0
    files_removed: int = 0
    bytes_freed: int = 0
    products_kept: int = 0
    """Registered product files found inside what was removed, and left in place."""
    runs: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Files kept because they look registered although no record names them."""
    error: str | None = None
    """Why this location's pass failed (nothing of it was recorded as removed)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "location": self.location,
            "dry_run": self.dry_run,
            "staged_copies": self.staged_copies,
            "completed_workspaces": self.completed_workspaces,
            "failed_run_directories": self.failed_run_directories,
            "files_removed": self.files_removed,
            "bytes_freed": self.bytes_freed,
            "products_kept": self.products_kept,
            "runs": self.runs,
            "warnings": self.warnings,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class _Location:
    id: int
    name: str
    path: Path
    retention_days: float


def _locations(conn: Connection, name: str | None) -> list[_Location]:
    place = m.DataLocation
    query = select(place.id, place.name, place.path, place.settings).where(
        place.location_type == m.LocationType.PROCESSING
    )
    if name is not None:
        query = query.where(place.name == name)
    rows = conn.execute(query.order_by(place.name)).all()
    if name is not None and not rows:
        raise CcatWmError(f"no processing location {name!r}; see the locations in your specs")
    return [
        _Location(
            lid, lname, Path(path),
            float((settings or {}).get("failed_run_retention_days", DEFAULT_FAILED_RETENTION_DAYS)),
        )
        for lid, lname, path, settings in rows
    ]  # fmt: skip


def _finished_runs(conn: Connection, location: _Location, now: dt.datetime) -> list[Any]:
    """Lock and return the location's finished runs that gc has not cleaned yet."""
    cutoff = now - dt.timedelta(days=location.retention_days)
    out_of_retries = or_(  # a FAILED run with retries left is about to be PENDING again
        RUN.retry_count >= m.ReductionStep.max_retries,
        RUN.failure_kind.in_(sorted(m.UNRETRYABLE_FAILURES)),
    )
    failed = or_(
        RUN.status == m.RunStatus.CANCELLED,
        and_(RUN.status == m.RunStatus.FAILED, out_of_retries),
    )
    query = (
        select(RUN.id, RUN.status, RUN.sub_group_key, m.Pipeline.name)
        .join(RUN.reduction_step)
        .join(m.ReductionStep.pipeline)
        .where(
            m.Pipeline.processing_location_id == location.id,
            or_(
                RUN.status == m.RunStatus.COMPLETED,
                and_(failed, RUN.finished_at < cutoff),
            ),
            ~exists().where(m.RunCleanup.executed_reduction_step_id == RUN.id),
        )
        .order_by(RUN.id)
        .with_for_update(of=RUN, skip_locked=True)
    )
    return list(conn.execute(query))


@dataclass(frozen=True, slots=True)
class _Registered:
    """What gc must not remove among the files of the runs it cleans."""

    real_paths: set[str]
    """Real paths of the products of the runs being cleaned."""
    places: dict[tuple[int, str], str]
    """(run id, path below `run-<id>/`) -> the stored path, for each of those products."""


def _registered(conn: Connection, run_ids: list[int]) -> _Registered:
    if not run_ids:
        return _Registered(set(), {})
    product = m.DataProduct
    rows = conn.execute(
        select(product.executed_reduction_step_id, product.file_path).where(
            product.executed_reduction_step_id.in_(run_ids)
        )
    )
    real, places = set(), {}
    for run_id, path in rows:
        real.add(os.path.realpath(path))
        below = path.partition(f"/run-{run_id}/")[2]
        if below:
            places[(run_id, below)] = path
    return _Registered(real, places)


def _recorded_anywhere(conn: Connection, paths: list[Path]) -> set[str]:
    """Which of these paths (or their real paths) the product table records, for any run."""
    spellings = {str(p) for p in paths} | {os.path.realpath(p) for p in paths}
    if not spellings:
        return set()
    product = m.DataProduct
    wanted = literal(sorted(spellings), ARRAY(String()))  # one parameter, any count
    return set(conn.scalars(select(product.file_path).where(product.file_path == any_(wanted))))


def _files(root: Path) -> Iterator[Path]:
    """Every file and symbolic link under `root`, never following links."""
    for directory, dirs, files in os.walk(root, followlinks=False):
        base = Path(directory)
        for name in dirs:
            if (base / name).is_symlink():
                yield base / name
        for name in files:
            yield base / name


def _remove(paths: list[Path], removal: Removal) -> None:
    for path in paths:
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if not removal.dry_run:
            path.unlink()
        removal.files_removed += 1
        if info.st_nlink == 1:
            removal.bytes_freed += info.st_size


def _prune_empty(root: Path) -> None:
    """Remove empty directories under `root` (deepest first), keeping `root`."""
    for directory, _, _ in sorted(os.walk(root), key=lambda w: -len(Path(w[0]).parts)):
        path = Path(directory)
        if path != root and not any(path.iterdir()):
            path.rmdir()


def _clean_run(
    conn: Connection, run: tuple[int, Path, bool], registered: _Registered, removal: Removal
) -> tuple[int, int]:
    """Remove what the policy removes of one run's directory; return (files, bytes)."""
    run_id, root, completed = run
    before = (removal.files_removed, removal.bytes_freed)
    if not root.is_dir() or root.is_symlink():
        return 0, 0
    tops = [
        child for child in root.iterdir()
        if not (completed and child.name in KEPT_IN_A_COMPLETED_RUN)
    ]  # fmt: skip
    candidates = [
        path
        for top in tops
        for path in ([top] if top.is_symlink() or not top.is_dir() else list(_files(top)))
    ]
    recorded = _recorded_anywhere(conn, candidates)
    doomed: list[Path] = []
    for path in candidates:
        real = os.path.realpath(path)
        if real in registered.real_paths or str(path) in recorded or real in recorded:
            removal.products_kept += 1
            continue
        stored = registered.places.get((run_id, str(path.relative_to(root))))
        if stored is not None:  # where a product of this run belongs, yet not that file
            removal.products_kept += 1
            removal.warnings.append(
                f"kept {path}: it is where run {run_id}'s product {stored} belongs, but the "
                "two paths are not the same file; has the location's directory moved? "
                "(see `ccat-wm apply` on changing a location's path)"
            )
            continue
        doomed.append(path)
    _remove(doomed, removal)
    if not removal.dry_run:
        for top in tops:
            if top.is_dir() and not top.is_symlink():
                _prune_empty(top)
                if not any(top.iterdir()):
                    top.rmdir()
    return removal.files_removed - before[0], removal.bytes_freed - before[1]


def _clean_runs(conn: Connection, location: _Location, now: dt.datetime, removal: Removal) -> None:
    runs = _finished_runs(conn, location, now)
    registered = _registered(conn, [r.id for r in runs])
    records = []
    for run_id, status, key, pipeline in runs:
        completed = status is m.RunStatus.COMPLETED
        root = run_root(location.path, pipeline, key, run_id)
        files, freed = _clean_run(conn, (run_id, root, completed), registered, removal)
        if completed:
            removal.completed_workspaces += 1
        else:
            removal.failed_run_directories += 1
        removal.runs.append(run_id)
        records.append(
            {
                "executed_reduction_step_id": run_id,
                "scope": m.CleanupScope.WORKSPACE if completed else m.CleanupScope.RUN_DIRECTORY,
                "removed_at": now,
                "files_removed": files,
                "bytes_freed": freed,
            }
        )
    if records and not removal.dry_run:
        conn.execute(insert(m.RunCleanup), records)


def _clean_staging(conn: Connection, location: _Location, removal: Removal) -> None:
    copy, inp = m.RawDataPackageCopy, m.ExecutedReductionStepInput
    cache = location.path / STAGING_CACHE
    needed = exists().where(
        inp.raw_data_package_id == copy.raw_data_package_id,
        RUN.id == inp.executed_reduction_step_id,
        RUN.status.in_(m.UNFINISHED_STATUSES),
    )
    unused = and_(
        copy.data_location_id == location.id,
        copy.path.startswith(f"{cache}/", autoescape=True),
        ~needed,
    )
    if removal.dry_run:
        paths = list(conn.scalars(select(copy.path).where(unused)))
    else:
        paths = list(conn.scalars(delete(copy).where(unused).returning(copy.path)))
    _remove([Path(p) for p in paths], removal)
    removal.staged_copies += len(paths)


def collect_garbage(
    engine: Engine,
    location: str | None = None,
    *,
    dry_run: bool = False,
    now: dt.datetime | None = None,
) -> list[Removal]:
    """Apply the retention policy at one processing location, or at every one.

    Each location is one transaction: its records are written and committed only after
    its files are removed (a file that was removed without its record is removed again,
    harmlessly, by the next pass). With `dry_run` nothing changes; the counts say what
    would go.
    """
    moment = now or dt.datetime.now(dt.UTC)
    with engine.connect() as conn:
        places = _locations(conn, location)
        conn.rollback()
    report = []
    for place in places:
        removal = Removal(place.name, dry_run)
        try:
            with engine.begin() as conn:
                _clean_runs(conn, place, moment, removal)
                _clean_staging(conn, place, removal)
        except (OSError, CcatWmError, SQLAlchemyError) as exc:  # the next location still runs
            removal = Removal(place.name, dry_run, error=f"{type(exc).__name__}: {exc}"[:2000])
        report.append(removal)
    return report
