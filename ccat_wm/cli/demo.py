"""`ccat-wm demo`: the whole chain on the embedded defaults.

Migrate the ops DB, declare a demo archive and a local processing location (host
runtime) under CCAT_WM_HOME, apply the example CHAI pipeline, simulate scans into the
archive (only the first time; the last scan in poor weather), run the pipeline's flow on
Prefect (the ephemeral server unless PREFECT_API_URL is set) and print what it
produced, with the paths of the maps and the scan the calibration's QA gate left out of
them. Running it again finds no gaps and runs nothing.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import click
import yaml
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ccat_ops_db import migrate
from ccat_ops_db import models as m
from ccat_wm.db import display_url, get_engine, resolve_db_url
from ccat_wm.errors import CcatWmError
from ccat_wm.gaps.plan import make_plan
from ccat_wm.quality.standing import rejected_sub_groups
from ccat_wm.selection.dimensions import display_key
from ccat_wm.settings import Settings, load_settings
from ccat_wm.simulate.register import SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files

DEMO_SPEC = Path(__file__).resolve().parents[1] / "examples" / "chai-demo.yaml"
"""The demo pipeline's spec: package data, so the demo runs from a wheel as from a checkout
(`examples/specs/chai-demo.yaml` in the repository links to it)."""
DEMO_SCANS = 24
DEMO_BAD_SCANS = 1
"""The last scan is observed in poor weather: the calibration's QA gate rejects it."""
DEMO_SEED = 253
DEMO_PIPELINE = "chai-demo"


def demo_locations_file(settings: Settings) -> Path:
    """Write the demo's locations (archive and local processing under home) and return it."""
    home = settings.home
    spec = {
        "sites": [{"name": "demo", "description": "this machine"}],
        "locations": [
            {
                "name": "archive",
                "site": "demo",
                "location_type": "LONG_TERM_ARCHIVE",
                "storage_type": "disk",
                "path": str(home / "archive"),
            },
            {
                "name": "local",
                "site": "demo",
                "location_type": "PROCESSING",
                "backend": "local",
                "runtime": "host",
                "path": str(settings.runs_dir),
            },
        ],
    }
    home.mkdir(parents=True, exist_ok=True)
    path = home / "demo-locations.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def demo_programs() -> list[str]:
    """Return the programs the demo pipeline's steps run (the first word of each command)."""
    spec = yaml.safe_load(DEMO_SPEC.read_text())
    return sorted({step["config"]["command"][0] for p in spec["pipelines"] for step in p["steps"]})


def check_demo_programs() -> None:
    """Fail before anything is created when the example reduction programs are missing.

    The host runtime finds programs installed next to this interpreter first, then on
    PATH, so both are searched.
    """
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    missing = [name for name in demo_programs() if shutil.which(name, path=search) is None]
    if missing:
        raise CcatWmError(
            f"the demo's example reduction programs are not installed: {', '.join(missing)}; "
            f"install them with `{Path(sys.executable).parent / 'pip'} install -e "
            "examples/chai-software` (from the repository; `make demo` does it), then run "
            "`ccat-wm demo` again"
        )


def run_demo(settings: Settings, echo: Callable[[str], object]) -> None:
    """Run the walk-through, reporting each stage through `echo`."""
    # long: the demo's five stages in the order it prints them
    check_demo_programs()
    url = resolve_db_url(settings)
    engine = get_engine(url)
    echo(f"[1/5] ops DB: {display_url(url)}")
    migrate.upgrade(engine)
    echo(f"      schema at revision {migrate.current_revision(engine)}")
    files = load_spec_files([demo_locations_file(settings), DEMO_SPEC])
    with Session(engine) as session, session.begin():
        changes = apply_specs(session, files, user=getpass.getuser())
    echo(f"[2/5] applied {DEMO_SPEC.name}: {len(changes)} change(s)")
    for change in changes:
        echo(f"      {change.render()}")
    with Session(engine) as session, session.begin():
        existing = session.scalar(select(func.count()).select_from(m.ExecutedObsUnit)) or 0
        if existing:
            echo(f"[3/5] {existing} scans already registered; not simulating more")
        else:
            request = SimulationRequest(scans=DEMO_SCANS, seed=DEMO_SEED, bad_scans=DEMO_BAD_SCANS)
            result = register_simulation(session, request, _progress(echo))
            scans, packages = len(result.scan_names), result.package_count
            echo(
                f"[3/5] simulated {scans} scans, {packages} raw data packages "
                f"({', '.join(result.bad_scan_names)} in poor weather)"
            )
    with Session(engine) as session, session.begin():
        plan = make_plan(session, dt.datetime.now(dt.UTC), DEMO_PIPELINE, manual=True)
    due = [g for g in plan.gaps if g.eligible]
    with Session(engine) as session:
        pending = _pending_runs(session)
    failed = [g for g in plan.gaps if g.reason is m.GapReason.FAILED]
    outcome = None
    if not due and not pending:
        echo("[4/5] no gaps: everything is up to date, nothing to run")
    else:
        echo(f"[4/5] running {DEMO_PIPELINE}: {len(due)} sub-group(s) due now, more as they finish")
        echo("      starting Prefect's local server for the flow run (about 10 s the first time);")
        echo("      Prefect then logs each task run below")
        from ccat_wm.cli.driver import run_pipeline

        outcome = run_pipeline(engine, DEMO_PIPELINE)
        echo(f"      flow run {outcome.flow_run_id}: {outcome.state} ({len(outcome.runs)} runs)")
    with Session(engine) as session:
        _summary(session, echo)
    count = outcome.failed_sub_groups if outcome is not None else len(failed)
    if count:
        echo(
            f"      {count} sub-group(s) failed with their retries exhausted: read why with "
            f"`ccat-wm status {DEMO_PIPELINE} --status FAILED` and `ccat-wm logs RUN_ID`, "
            f"retry them with `ccat-wm retry {DEMO_PIPELINE}`"
        )
    if outcome is not None and outcome.failed:
        raise CcatWmError(
            f"the demo pipeline ended {outcome.state}: {outcome.message}; "
            f"see `ccat-wm status {DEMO_PIPELINE} --status FAILED`"
        )


def _progress(echo: Callable[[str], object]) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        if done % 8 == 0 or done == total:
            echo(f"      simulated {done}/{total} scans")

    return report


def _pending_runs(session: Session) -> int:
    run = m.ExecutedReductionStep
    return (
        session.scalar(
            select(func.count())
            .select_from(run)
            .join(run.reduction_step)
            .join(m.ReductionStep.pipeline)
            .where(m.Pipeline.name == DEMO_PIPELINE, run.status == m.RunStatus.PENDING)
        )
        or 0
    )


def _summary(session: Session, echo: Callable[[str], object]) -> None:
    run, product = m.ExecutedReductionStep, m.DataProduct
    statuses = session.execute(
        select(run.status, func.count()).group_by(run.status).order_by(run.status)
    ).all()
    kinds = session.execute(
        select(product.data_product_type, func.count())
        .group_by(product.data_product_type)
        .order_by(product.data_product_type)
    ).all()
    echo("[5/5] runs: " + (", ".join(f"{n} {s.value}" for s, n in statuses) or "none"))
    echo("      products: " + (", ".join(f"{n} {k.value}" for k, n in kinds) or "none"))
    maps = session.scalars(
        select(product.file_path)
        .where(
            product.data_product_type.in_([m.DataProductType.PLOT, m.DataProductType.SCIENCE]),
            product.file_path.like("%.moment0.png") | product.file_path.like("%.cube.fits"),
        )
        .order_by(product.id.desc())
    ).all()
    for path in sorted(maps):
        echo(f"      map: {path}")
    pipeline_id = session.scalar(select(m.Pipeline.id).where(m.Pipeline.name == DEMO_PIPELINE))
    for r in rejected_sub_groups(session, [pipeline_id] if pipeline_id else []):
        echo(
            f"      left out of the maps: {r.step}[{display_key(r.sub_group_key)}] "
            f"{r.message} ({r.who}); `ccat-wm qa accept` would take it in"
        )
    echo(
        "      next: `ccat-wm status`, `ccat-wm logs RUN_ID`, "
        "`ccat-wm lineage <product id or path>`"
    )


def left_running(settings: Settings) -> str | None:
    """Say what the demo leaves running (the embedded PostgreSQL) and how to stop it."""
    if settings.ops_db_url:
        return None
    from ccat_wm.embedded_pg import data_dir

    return (
        f"      left running: the embedded PostgreSQL (data in {data_dir(settings.home)}), so "
        "that the next command starts at once; `ccat-wm db stop` stops it"
    )


@click.command()
def demo() -> None:
    """Run the example pipeline end to end on the embedded defaults (again: nothing to do)."""
    settings = load_settings()
    run_demo(settings, click.echo)
    running = left_running(settings)
    if running:
        click.echo(running)
