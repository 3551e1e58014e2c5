"""`ccat-wm apply` and `ccat-wm simulate`: what the ops DB knows about pipelines and data."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import secrets
from dataclasses import asdict
from pathlib import Path

import click
from sqlalchemy.orm import Session

from ccat_wm.cli import complete
from ccat_wm.cli.common import Moment, engine, split_commas
from ccat_wm.simulate.catalog import DEFAULT_LINES, DEFAULT_PROGRAM, DEFAULT_SOURCES
from ccat_wm.simulate.register import SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--dry-run", is_flag=True, help="Validate and print what would change; write nothing."
)
@click.option(
    "--user", default=None, help="Author recorded on new pipelines (default: login name)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the changes as JSON.")
def apply(files: tuple[Path, ...], dry_run: bool, user: str | None, as_json: bool) -> None:
    """Create or update sites, locations, software, groupings and pipelines from YAML."""
    loaded = load_spec_files(files)
    ops_db = engine()
    with Session(ops_db) as session:
        changes = apply_specs(session, loaded, user=user or getpass.getuser())
        if dry_run:
            session.rollback()
        else:
            session.commit()
    if as_json:
        payload = {"dry_run": dry_run, "changes": [asdict(c) for c in changes]}
        click.echo(json.dumps(payload, indent=2))
        return
    for change in changes:
        click.echo(change.render())
    verb = "would change" if dry_run else "changed"
    click.echo(f"{len(changes)} object(s) {verb}" if changes else "no changes")


@click.command()
@click.option("--scans", type=int, required=True, help="Number of new scans.")
@click.option(
    "--sources",
    default=",".join(DEFAULT_SOURCES),
    show_default=True,
    help="Comma-separated source names.",
)
@click.option(
    "--lines",
    default=",".join(DEFAULT_LINES),
    show_default=True,
    help="Comma-separated line names.",
)
@click.option(
    "--seed", type=int, default=None, help="Seed for reproducible data (default: random, printed)."
)
@click.option("--program", default=DEFAULT_PROGRAM, show_default=True, help="Observing program.")
@click.option(
    "--location",
    default=None,
    help="Archive location (default: the only LONG_TERM_ARCHIVE one).",
    shell_complete=complete.locations,
)
@click.option(
    "--start", type=Moment(), default=None, help="Start of the first scan (ISO 8601; naive = UTC)."
)
@click.option(
    "--bad-scans",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Of the new scans, the last N are observed in poor weather (Tsys* of thousands of K), "
    "for a quality gate to reject.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def simulate(
    *,
    scans: int,
    bad_scans: int,
    sources: str,
    lines: str,
    seed: int | None,
    program: str,
    location: str | None,
    start: dt.datetime | None,
    as_json: bool,
) -> None:
    """Register synthetic CHAI observations with real small files in an archive location."""
    request = SimulationRequest(
        scans=scans,
        seed=seed if seed is not None else secrets.randbelow(2**31),
        sources=split_commas(sources),
        lines=split_commas(lines),
        program=program,
        location=location,
        start=start,
        bad_scans=bad_scans,
    )
    ops_db = engine()

    def progress(done: int, total: int) -> None:
        if not as_json and (done == total or done % max(1, total // 10) == 0):
            click.echo(f"simulated {done}/{total} scans", err=True)

    with Session(ops_db) as session, session.begin():
        result = register_simulation(session, request, progress)
    from tasks.events import announce_raw_data

    announce_raw_data(result.archive, result.package_count, result.scan_names)
    if as_json:
        click.echo(json.dumps({**asdict(result), "seed": request.seed}))
        return
    click.echo(
        f"registered {len(result.scan_names)} scans "
        f"({result.scan_names[0]} .. {result.scan_names[-1]}), "
        f"{result.package_count} raw data packages, {result.total_bytes} bytes in archive "
        f"{result.archive!r} (seed {request.seed})"
    )
    if result.bad_scan_names:
        click.echo(f"observed in poor weather: {', '.join(result.bad_scan_names)}")
