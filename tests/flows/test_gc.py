"""`ccat-wm gc`: the retention policy, applied while runs are in flight (local backend).

Every product file and every archive file is checksummed before and after; the files of
the run in flight are too, and it completes afterwards.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_ops_db.models import UNFINISHED_STATUSES
from ccat_wm.cli.driver import run_pipeline
from ccat_wm.simulate.register import SimulationRequest, register_simulation
from tests.flows.conftest import setup_pipeline, tool_step
from tests.flows.test_pipeline_flow import runs
from tests.helpers import cli_json, locations_data

pytestmark = [pytest.mark.db, pytest.mark.usefixtures("prefect_server")]


def checksums(root: Path) -> dict[str, str]:
    """SHA-256 of every regular file under `root` (symbolic links not followed)."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def product_checksums(engine: Engine) -> dict[str, str]:
    """SHA-256 of every registered product's file, which must exist."""
    with engine.connect() as conn:
        paths = conn.scalars(select(m.DataProduct.file_path)).all()
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def gc(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    report: list[dict[str, Any]] = cli_json(env, "gc", "--json", *args)
    return report


def test_gc_removes_what_the_policy_says_and_nothing_of_products_archive_or_runs_in_flight(
    engine: Engine, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    location = {
        **locations_data(tmp_path)["locations"][1],
        "settings": {"failed_run_retention_days": 0},
    }
    location.pop("name")
    release = tmp_path / "release"  # the slow step's runs wait for this file
    release.touch()
    setup_pipeline(
        engine,
        tmp_path,
        [
            tool_step("calibrate"),
            tool_step("grid", depends_on=["calibrate"]),
            tool_step("broken", parameters={"fail_key": "scan-000001"}),
            tool_step("slow", parameters={"mode": "wait", "arg": str(release)}),
        ],
        scans=2,
        location=location,
    )
    run_pipeline(engine, "t")  # scan 1's `broken` run fails; the rest completes
    with Session(engine) as session, session.begin():
        register_simulation(session, SimulationRequest(scans=1, seed=8))
    release.unlink()  # the new scan's slow run stays in flight until gc is done
    flow = threading.Thread(target=lambda: run_pipeline(engine, "t"))
    flow.start()
    deadline = time.monotonic() + 180
    while True:  # until the new scan's other steps (grid follows calibrate) have ended
        new_runs = [r for r in runs(engine) if r.ExecutedReductionStep.sub_group_key.endswith("3")]
        open_runs = [r for r in new_runs if r.ExecutedReductionStep.status in UNFINISHED_STATUSES]
        states = [(r.step, r.ExecutedReductionStep.status) for r in new_runs]
        if len(new_runs) == 4 and [(r.step, r.ExecutedReductionStep.status) for r in open_runs] == [
            ("slow", m.RunStatus.RUNNING)
        ]:
            break
        assert time.monotonic() < deadline, f"the new scan's runs: {states}"
        time.sleep(0.2)
    in_flight = open_runs[0].ExecutedReductionStep
    base = tmp_path / "runs"
    in_flight_dir = next(base.glob(f"t/*/run-{in_flight.id}"))
    archive, products = checksums(tmp_path / "archive"), product_checksums(engine)
    staged_before = sorted(p.name for p in (base / ".staging").iterdir())
    assert len(staged_before) >= 3
    run_dirs = sorted(base.glob("t/*/run-*"))  # a follow-up run may add its own later

    def everything() -> dict[str, str]:
        return {k: v for d in [*run_dirs, base / ".staging"] for k, v in checksums(d).items()}

    before = everything()
    in_flight_files = checksums(in_flight_dir)

    preview = gc(cli_env, "--dry-run")

    assert everything() == before  # a dry run removes nothing
    (would,) = preview
    assert would["dry_run"] and would["completed_workspaces"] >= 6 and would["files_removed"] > 0

    (done,) = gc(cli_env, "--location", "local")

    assert done["failed_run_directories"] == 1 and done["completed_workspaces"] >= 6
    assert done["bytes_freed"] > 0 and done["products_kept"] > 0
    assert in_flight.id not in done["runs"]
    assert checksums(in_flight_dir) == in_flight_files  # nothing of the run in flight
    assert checksums(tmp_path / "archive") == archive  # nothing of the archive
    assert product_checksums(engine) == products  # every product file is still there, unchanged
    staged_after = sorted(p.name for p in (base / ".staging").iterdir())
    assert len(staged_after) < len(staged_before)  # scans 1-2's copies went; scan 3's stays
    with engine.connect() as conn:
        copies = conn.scalars(select(m.RawDataPackageCopy.path)).all()
    assert all(Path(p).exists() for p in copies)  # records and files agree
    every_run = {r.ExecutedReductionStep.id: r for r in runs(engine)}
    for run_id in done["runs"]:
        run = every_run[run_id].ExecutedReductionStep
        root = next(base.glob(f"t/*/run-{run_id}"))
        assert not (root / "input").exists(), root
        if run.status is m.RunStatus.COMPLETED:
            assert (root / "config" / "manifest.json").exists()
        else:  # the failed run keeps only its logs (registered LOG products)
            kept = {p.relative_to(root).parts[0] for p in root.rglob("*") if p.is_file()}
            assert kept == {"logs"}

    release.touch()
    flow.join(timeout=120)
    assert not flow.is_alive()
    assert runs(engine)[-1].ExecutedReductionStep.status is m.RunStatus.COMPLETED
    # gc ran while the run was in flight (read right after gc), and it finished after.
    assert every_run[in_flight.id].ExecutedReductionStep.status is m.RunStatus.RUNNING
    finished = {r.ExecutedReductionStep.id: r.ExecutedReductionStep.status for r in runs(engine)}
    assert finished[in_flight.id] is m.RunStatus.COMPLETED  # it finished after gc

    (again,) = gc(cli_env)  # the rest: the new runs' workspaces, the last staged copies
    assert set(again["runs"]) & set(done["runs"]) == set()  # each run is cleaned once
    assert in_flight.id in again["runs"]
    assert not list((base / ".staging").iterdir())
    assert product_checksums(engine).items() >= products.items()
    assert checksums(tmp_path / "archive") == archive
