"""`gc` removes only what it can prove is garbage (real PostgreSQL, real runs on the host).

A two-step pipeline leaves intermediate products in `workspace/` (the directory gc
cleans in a COMPLETED run). Each case changes what gc sees the way an operator could:
the location's path respelled through a symlink, a product of another run inside the
run's directory, the location's directory moved behind gc's back, one location whose
disk fails. Products survive every one of them, and `apply` refuses a path change that
would strand a location's records.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.errors import SpecError
from ccat_wm.execution.retention import collect_garbage
from ccat_wm.execution.runner import RunExecutor
from ccat_wm.execution.waves import prepare_wave
from ccat_wm.settings import Settings
from ccat_wm.simulate.register import SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from tests.helpers import locations_data, write_yaml

pytestmark = pytest.mark.db
WRITE = (
    "import os, pathlib; out = pathlib.Path(os.environ['WORKFLOW_OUTPUT_DIR']); "
    "(out / 'science').mkdir(parents=True, exist_ok=True); "
    "(out / 'science' / 'part.npz').write_text('intermediate or final product')"
)


def _spec(root: Path, runs_path: Path, *, second: bool = False) -> Path:
    step = {
        "software": "tool", "group_by": ["executed_obs_unit"], "max_retries": 0,
        "config": {"name": "write", "command": [sys.executable, "-c", WRITE],
                   "resources": {"cpu": 1, "memory_gb": 1, "time_hours": 0.1}},
    }  # fmt: skip
    locations = locations_data(root)["locations"]
    locations[1]["path"] = str(runs_path)
    if second:
        locations.append({**locations[1], "name": "other", "path": str(root / "other-runs")})
    data: dict[str, Any] = {
        "locations": locations,
        "instruments": [{"name": "CHAI", "modules": ["LFA", "HFA"]}],
        "software": [{"name": "tool", "ghcr_url": "ghcr.io/ccatobs/tool",
                      "versions": [{"tag": "1", "digest": "sha256:" + "ab" * 32,
                                    "is_latest": True}]}],
        "data_groupings": [{"name": "g", "instrument_module": "CHAI/LFA", "filter_rules": []}],
        "pipelines": [{
            "name": name, "data_grouping": "g", "processing_location": place,
            "trigger": {"type": "MANUAL"},
            "steps": [{**step, "name": "reduce"},
                      {**step, "name": "map", "depends_on": ["reduce"]}],
        } for name, place in (("p", "local"), *((("q", "other"),) if second else ()))],
    }  # fmt: skip
    return write_yaml(root / "spec.yaml", data)


def _apply(engine: Engine, path: Path) -> None:
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([path]), user="tester")


def _run_all(engine: Engine, pipeline: str) -> None:
    """Run every ready run of the pipeline until none is left (step after step)."""
    for _ in range(4):
        with Session(engine) as session, session.begin():
            wave = prepare_wave(
                session, pipeline, dt.datetime.now(dt.UTC), claim_as="t", manual=True
            )
        ids = [i.run_id for i in wave.items if i.run_id is not None]
        if not ids:
            return
        for run_id in ids:
            RunExecutor(engine, Settings()).execute(run_id)


def _intermediates(engine: Engine) -> list[Path]:
    with Session(engine) as session:
        paths = session.scalars(
            select(m.DataProduct.file_path).where(
                m.DataProduct.data_product_type == m.DataProductType.INTERMEDIATE
            )
        ).all()
    assert paths
    return [Path(p) for p in paths]


@pytest.fixture
def done(engine: Engine, tmp_path: Path) -> Path:
    """A location whose two-step pipeline completed; returns its directory."""
    runs = tmp_path / "runs"
    _apply(engine, _spec(tmp_path, runs))
    with Session(engine) as session, session.begin():
        register_simulation(session, SimulationRequest(scans=1, seed=5))
    _run_all(engine, "p")
    return runs


def test_a_respelled_location_path_keeps_its_products(
    engine: Engine, tmp_path: Path, done: Path
) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(done)
    _apply(engine, _spec(tmp_path, alias))  # the same directory: accepted
    (removal,) = collect_garbage(engine, "local")
    assert removal.error is None and removal.completed_workspaces == 2
    assert removal.products_kept >= 1
    for product in _intermediates(engine):
        assert product.read_text() == "intermediate or final product"


def test_a_product_of_another_run_in_a_cleaned_directory_is_kept(
    engine: Engine, done: Path
) -> None:
    with Session(engine) as session, session.begin():
        first, second = session.scalars(
            select(m.ExecutedReductionStep.id).order_by(m.ExecutedReductionStep.id)
        ).all()
        stray = Path(_intermediates(engine)[0]).parents[3] / "input" / "registered-by-run-2.dat"
        stray.write_text("a product another run registered here")
        session.execute(
            insert(m.DataProduct).values(
                executed_reduction_step_id=second, data_product_type=m.DataProductType.QA_METRIC,
                file_path=str(stray), file_size=1, checksum="0" * 64, metadata_={},
            )
        )  # fmt: skip
        session.execute(  # the other run is not among those this pass cleans
            insert(m.RunCleanup).values(
                executed_reduction_step_id=second, scope=m.CleanupScope.WORKSPACE,
                removed_at=dt.datetime.now(dt.UTC), files_removed=0, bytes_freed=0,
            )
        )  # fmt: skip
    assert first != second
    (removal,) = collect_garbage(engine, "local")
    assert removal.runs == [first]
    assert stray.exists()


def test_a_location_moved_behind_gcs_back_is_not_emptied_and_dry_run_warns(
    engine: Engine, tmp_path: Path, done: Path
) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(done, moved, symlinks=True)
    with Session(engine) as session, session.begin():  # what apply refuses, done in SQL
        session.execute(
            update(m.DataLocation).where(m.DataLocation.name == "local").values(path=str(moved))
        )
    (dry,) = collect_garbage(engine, "local", dry_run=True)
    assert dry.warnings and "has the location's directory moved?" in dry.warnings[0]
    (real,) = collect_garbage(engine, "local")
    assert len(real.warnings) == len(dry.warnings)
    for product in _intermediates(engine):  # the copies at the new place are kept too
        assert (moved / product.relative_to(done)).exists()


def test_apply_refuses_moving_a_location_with_runs_and_says_how(
    engine: Engine, tmp_path: Path, done: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(SpecError) as info:
        _apply(engine, _spec(tmp_path, elsewhere))
    text = str(info.value)
    assert "location 'local' has" in text and "is a different directory" in text
    assert "leave a symlink at" in text
    with Session(engine) as session:
        stored = session.scalars(
            select(m.DataLocation.path).where(m.DataLocation.name == "local")
        ).one()
    assert stored == str(done)


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Files made immutable (`chattr +i`: even root cannot unlink them), released after."""
    held: list[Path] = []
    yield held
    for path in held:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_one_failing_location_is_reported_and_the_others_are_cleaned(
    engine: Engine, tmp_path: Path, immutable: list[Path]
) -> None:
    _apply(engine, _spec(tmp_path, tmp_path / "runs", second=True))
    with Session(engine) as session, session.begin():
        register_simulation(session, SimulationRequest(scans=1, seed=5))
    _run_all(engine, "p")
    _run_all(engine, "q")
    stuck = next((tmp_path / "runs").rglob("input/*"))
    subprocess.run(["chattr", "+i", str(stuck)], check=True)
    immutable.append(stuck)
    report = {r.location: r for r in collect_garbage(engine)}
    assert report["local"].error and "Operation not permitted" in report["local"].error
    assert report["other"].error is None and report["other"].completed_workspaces == 2
    assert not any((tmp_path / "other-runs").rglob("input/*"))
    assert os.path.exists(stuck)
