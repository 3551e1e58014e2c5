"""Register simulated observations in the ops DB and write their files to the archive.

Rows are written set-based (one INSERT per table per batch). Files are written first
and removed again if the database transaction fails, so a failure leaves neither rows
nor files behind.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.errors import SimulationError
from ccat_wm.paths import path_component
from ccat_wm.simulate.catalog import (
    DEFAULT_LINES,
    DEFAULT_PROGRAM,
    DEFAULT_SOURCES,
    INSTRUMENT,
    LINES,
    MODULES,
)
from ccat_wm.simulate.generator import SimulatedScan, simulate_scan, source_position

SIMULATE_LOCK_ID = 0x0CCA751
FIRST_EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
"""Start of the first scan in an empty ops DB, so that a seed gives the same data."""
GAP_BETWEEN_SCANS = dt.timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class SimulationRequest:
    """What to simulate."""

    scans: int
    """Number of new scans."""
    seed: int
    """Seed; the same seed on the same ops DB state gives the same data."""
    sources: tuple[str, ...] = DEFAULT_SOURCES
    """Source names to pick from."""
    lines: tuple[str, ...] = DEFAULT_LINES
    """Line names to pick from (known to the simulator)."""
    program: str = DEFAULT_PROGRAM
    """Observing program of the obs units."""
    location: str | None = None
    """Archive location name; default the only LONG_TERM_ARCHIVE location."""
    start: dt.datetime | None = None
    """Start of the first new scan; default after the latest scan."""
    bad_scans: int = 0
    """How many of the new scans, the last ones, are observed in poor weather."""


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """What was registered."""

    scan_names: tuple[str, ...]
    """Names of the new scans."""
    package_count: int
    """Number of raw data packages registered."""
    total_bytes: int
    """Total size of their files."""
    archive: str
    """Archive location name."""
    bad_scan_names: tuple[str, ...] = ()
    """Names of the scans observed in poor weather (`bad_scans`)."""


def validate_request(request: SimulationRequest) -> None:
    """Reject impossible requests before anything is touched."""
    if request.scans < 1:
        raise SimulationError(f"--scans must be at least 1, got {request.scans}")
    if not 0 <= request.bad_scans <= request.scans:
        raise SimulationError(
            f"--bad-scans must be between 0 and --scans ({request.scans}), got {request.bad_scans}"
        )
    unknown = [name for name in request.lines if name not in LINES]
    if unknown:
        raise SimulationError(
            f"unknown line(s) {', '.join(unknown)}; the simulator knows {', '.join(LINES)}"
        )
    if not request.sources or any(not s.strip() for s in request.sources):
        raise SimulationError("--sources must list at least one non-empty source name")


def _archive(session: Session, name: str | None) -> m.DataLocation:
    query = select(m.DataLocation).where(
        m.DataLocation.location_type == m.LocationType.LONG_TERM_ARCHIVE
    )
    if name is not None:
        query = select(m.DataLocation).where(m.DataLocation.name == name)
    found = session.scalars(query).all()
    if name is not None and (
        not found or found[0].location_type is not m.LocationType.LONG_TERM_ARCHIVE
    ):
        raise SimulationError(
            f"--location {name!r} is not a LONG_TERM_ARCHIVE location in the ops DB"
        )
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise SimulationError(
            f"found {what} LONG_TERM_ARCHIVE locations; declare one with `ccat-wm apply` "
            "or choose one with --location"
        )
    if found[0].storage_type is not m.StorageType.DISK:
        raise SimulationError(
            f"archive {found[0].name!r} is not on disk; the simulator writes files"
        )
    return found[0]


def _ids(
    session: Session, model: type[m.Base], rows: Sequence[dict[str, Any]], key: str
) -> dict[str, int]:
    """Insert rows that are missing (by unique `key`), return key -> id for all of them."""
    table = m.table_of(model)
    if rows:
        session.execute(pg_insert(table).on_conflict_do_nothing(), list(rows))
    keys = [r[key] for r in rows]
    result = session.execute(select(table.c[key], table.c.id).where(table.c[key].in_(keys)))
    return {k: i for k, i in result.all()}


def _dimension_ids(session: Session, request: SimulationRequest) -> dict[str, dict[str, int]]:
    # long: the dimension rows inserted in dependency order, each needing the ids before it
    instrument = _ids(
        session,
        m.Instrument,
        [{"name": INSTRUMENT, "description": "CCAT Heterodyne Array Instrument"}],
        "name",
    )[INSTRUMENT]
    module_rows = [
        {"instrument_id": instrument, "name": mod.name, "description": ""} for mod in MODULES
    ]
    session.execute(pg_insert(m.table_of(m.InstrumentModule)).on_conflict_do_nothing(), module_rows)
    modules = dict(
        session.execute(
            select(m.InstrumentModule.name, m.InstrumentModule.id).where(
                m.InstrumentModule.instrument_id == instrument
            )
        ).all()
    )
    sources = _ids(
        session,
        m.Source,
        [
            dict(zip(("name", "ra_deg", "dec_deg"), (s, *source_position(s)), strict=True))
            for s in request.sources
        ],
        "name",
    )
    lines = _ids(
        session,
        m.Line,
        [{"name": n, "rest_frequency_ghz": LINES[n].rest_frequency_ghz} for n in request.lines],
        "name",
    )
    program = _ids(
        session, m.ObservingProgram, [{"name": request.program, "description": ""}], "name"
    )[request.program]
    obs_units = _ids(
        session,
        m.ObsUnit,
        [
            {
                "name": f"{request.program}/{s}/{ln}",
                "source_id": sources[s],
                "line_id": lines[ln],
                "observing_program_id": program,
                "instrument_id": instrument,
            }
            for s in request.sources
            for ln in request.lines
        ],
        "name",
    )
    return {"module": modules, "obs_unit": obs_units}


def _next_scan(session: Session, request: SimulationRequest) -> tuple[int, dt.datetime]:
    count = session.scalar(select(func.count()).select_from(m.ExecutedObsUnit)) or 0
    latest = session.scalar(select(func.max(m.ExecutedObsUnit.end_time)))
    start = request.start or (latest + GAP_BETWEEN_SCANS if latest else FIRST_EPOCH)
    return count + 1, start


def package_path(root: Path, program: str, scan: SimulatedScan, package_name: str) -> Path:
    """Where a package's file lives in the archive (`ccat_wm.paths.path_component` names)."""
    parts = (program, scan.source, scan.name)
    names = (*(path_component(p) for p in parts), path_component(f"{package_name}.npz"))
    return root.joinpath("raw", *names)


def register_simulation(
    session: Session, request: SimulationRequest, progress: Callable[[int, int], None] | None = None
) -> SimulationResult:
    """Simulate `request.scans` new scans, write their files and register them (no commit).

    On any error the files written so far are removed; the caller rolls back.
    """
    validate_request(request)
    session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": SIMULATE_LOCK_ID})
    archive = _archive(session, request.location)
    root = Path(archive.path)
    ids = _dimension_ids(session, request)
    first, start = _next_scan(session, request)
    positions = {s: source_position(s) for s in request.sources}
    written: list[Path] = []
    try:
        scans = []
        for offset in range(request.scans):
            scan = simulate_scan(
                request.seed,
                first + offset,
                start=start,
                sources=list(request.sources),
                lines=list(request.lines),
                positions=positions,
                poor_weather=offset >= request.scans - request.bad_scans,
            )
            start = scan.end_time + GAP_BETWEEN_SCANS
            for package in scan.packages:
                path = package_path(root, request.program, scan, package.name)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(package.content)
                written.append(path)
            scans.append(scan)
            if progress is not None:
                progress(offset + 1, request.scans)
        total = _insert_rows(
            session, request=request, archive=archive, ids=ids, scans=scans, root=root
        )
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    bad = tuple(s.name for s in scans[len(scans) - request.bad_scans :])
    return SimulationResult(tuple(s.name for s in scans), len(written), total, archive.name, bad)


def _insert_rows(
    session: Session,
    *,
    request: SimulationRequest,
    archive: m.DataLocation,
    ids: dict[str, dict[str, int]],
    scans: list[SimulatedScan],
    root: Path,
) -> int:
    # long: three bulk INSERTs, each needing the ids the one before returned
    scan_rows = [
        {
            "name": s.name,
            "obs_unit_id": ids["obs_unit"][f"{request.program}/{s.source}/{s.line}"],
            "start_time": s.start_time,
            "end_time": s.end_time,
        }
        for s in scans
    ]
    scan_ids = dict(
        session.execute(
            insert(m.table_of(m.ExecutedObsUnit)).returning(
                m.ExecutedObsUnit.name, m.ExecutedObsUnit.id
            ),
            scan_rows,
        ).all()
    )
    package_rows = [
        {
            "name": p.name,
            "executed_obs_unit_id": scan_ids[s.name],
            "instrument_module_id": ids["module"][p.module],
            "size": len(p.content),
            "checksum": p.checksum,
            "metadata": p.metadata,
            "state": m.PackageState.ARCHIVED,
        }
        for s in scans
        for p in s.packages
    ]
    package_ids = dict(
        session.execute(
            insert(m.table_of(m.RawDataPackage)).returning(
                m.RawDataPackage.name, m.RawDataPackage.id
            ),
            package_rows,
        ).all()
    )
    now = dt.datetime.now(dt.UTC)
    copy_rows = [
        {
            "raw_data_package_id": package_ids[p.name],
            "data_location_id": archive.id,
            "path": str(package_path(root, request.program, s, p.name)),
            "verified_at": now,
        }
        for s in scans
        for p in s.packages
    ]
    session.execute(insert(m.table_of(m.RawDataPackageCopy)), copy_rows)
    return sum(len(p.content) for s in scans for p in s.packages)
