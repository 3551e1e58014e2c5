"""`ccat-wm demo`: the whole chain on the embedded defaults.

For now the walk-through of what exists: migrate the ops DB, declare a demo archive and
a local processing location under CCAT_WM_HOME, apply the example CHAI pipeline,
simulate scans into the archive (only the first time, so that running it again changes
nothing), then print what is there and what the plan would run.
"""

from __future__ import annotations

import datetime as dt
import getpass
from collections.abc import Callable
from pathlib import Path

import yaml
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ccat_ops_db import migrate
from ccat_ops_db import models as m
from ccat_wm.db import display_url, get_engine, resolve_db_url
from ccat_wm.gaps.plan import make_plan
from ccat_wm.settings import Settings
from ccat_wm.simulate.register import SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples" / "specs"
DEMO_SPEC = EXAMPLES_DIR / "chai-demo.yaml"
DEMO_SCANS = 24
DEMO_SEED = 253


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


def run_demo(settings: Settings, echo: Callable[[str], object]) -> None:
    """Run the walk-through, reporting each stage through `echo`."""
    url = resolve_db_url(settings)
    engine = get_engine(url)
    echo(f"[1/4] ops DB: {display_url(url)}")
    migrate.upgrade(engine)
    echo(f"      schema at revision {migrate.current_revision(engine)}")
    files = load_spec_files([demo_locations_file(settings), DEMO_SPEC])
    with Session(engine) as session, session.begin():
        changes = apply_specs(session, files, user=getpass.getuser())
    echo(f"[2/4] applied {DEMO_SPEC.name}: {len(changes)} change(s)")
    for change in changes:
        echo(f"      {change.render()}")
    with Session(engine) as session, session.begin():
        existing = session.scalar(select(func.count()).select_from(m.ExecutedObsUnit)) or 0
        if existing:
            echo(f"[3/4] {existing} scans already registered; not simulating more")
        else:
            request = SimulationRequest(scans=DEMO_SCANS, seed=DEMO_SEED)
            result = register_simulation(session, request, _progress(echo))
            scans, packages = len(result.scan_names), result.package_count
            echo(f"[3/4] simulated {scans} scans, {packages} raw data packages")
    with Session(engine) as session, session.begin():
        plan = make_plan(session, dt.datetime.now(dt.UTC))  # its own read-only transaction
    with Session(engine) as session:
        _summary(session, settings, echo)
    waves = ", ".join(f"{c.step}: {c.runs}" for c in plan.costs)
    echo(f"      plan: {len(plan.gaps)} gaps ({waves}); see `ccat-wm plan`")


def _progress(echo: Callable[[str], object]) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        if done % 8 == 0 or done == total:
            echo(f"      simulated {done}/{total} scans")

    return report


def _summary(session: Session, settings: Settings, echo: Callable[[str], object]) -> None:
    scans = session.scalar(select(func.count()).select_from(m.ExecutedObsUnit))
    packages = session.scalar(select(func.count()).select_from(m.RawDataPackage))
    size = session.scalar(select(func.coalesce(func.sum(m.RawDataPackage.size), 0)))
    echo(f"[4/4] ops DB holds {scans} scans and {packages} raw data packages ({size} bytes)")
    echo(f"      archive: {settings.home / 'archive'}")
    rows = session.execute(
        select(
            m.Pipeline.name, m.Pipeline.trigger_type, m.ReductionStep.name, m.ReductionStep.group_by
        )
        .join(m.ReductionStep, m.ReductionStep.pipeline_id == m.Pipeline.id)
        .order_by(m.Pipeline.name, m.ReductionStep.step_order)
    ).all()
    for pipeline, trigger, step, group_by in rows:
        grouping = ", ".join(group_by) or "all"
        echo(f"      pipeline {pipeline} ({trigger.value}): step {step} per {grouping}")
