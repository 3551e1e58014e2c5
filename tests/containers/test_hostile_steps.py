"""A hostile step program cannot make the manager reach outside the run's tree.

Each case is a real run (real PostgreSQL, the local backend, the run executor) of
tests/programs/container_probe.py in one of its hostile modes, under the host runtime
and in a real podman container (rootful here: the manager's side runs as root, so any
link it followed would be a container escape). The program plants links to a host
directory and a host file; afterwards both are exactly as before, nothing outside the
run's tree is registered, and each run failed with a reason that names what was planted.
"""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.execution.runner import RunExecutor
from ccat_wm.execution.waves import prepare_wave
from ccat_wm.settings import Settings
from ccat_wm.simulate.register import SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from tests.helpers import locations_data, podman_location, write_yaml

pytestmark = pytest.mark.db
PROBE = Path(__file__).resolve().parent.parent / "programs" / "container_probe.py"
FAKE_DIGEST = "sha256:" + "ab" * 32


def _step(name: str, mode: str, arg: str, retries: int) -> dict[str, Any]:
    return {
        "name": name, "software": "probe", "group_by": ["executed_obs_unit"],
        "max_retries": retries,
        "config": {
            "name": f"{name}-{mode}",
            "parameters": {"code": PROBE.read_text(), "mode": mode, "arg": arg},
            "command": ["python3", "-c", "{code}", "{mode}", "{arg}"],
            "resources": {"cpu": 1, "memory_gb": 1, "time_hours": 0.1},
        },
    }  # fmt: skip


def _hostile_pipelines(
    engine: Engine, root: Path, location: str, digest: str, repository: str, host: dict[str, str]
) -> None:
    """One pipeline per hostile mode; `link-output` is an intermediate step (workspace/)."""
    arg = json.dumps(host)
    locations = locations_data(root)["locations"]
    if location == "pod":
        locations.append(podman_location("pod", root / "pod-runs"))
    pipelines = {
        "plant-logs": [_step("probe", "plant-logs", arg, retries=1)],
        "swap-log": [_step("probe", "swap-log", arg, retries=0)],
        "link-output": [
            _step("probe", "link-output", arg, retries=0),
            {**_step("after", "ok", "", retries=0), "depends_on": ["probe"]},
        ],
    }
    spec = {
        "locations": locations,
        "instruments": [{"name": "CHAI", "modules": ["LFA", "HFA"]}],
        "software": [{"name": "probe", "ghcr_url": repository,
                      "versions": [{"tag": "1.0.0", "digest": digest, "is_latest": True}]}],
        "data_groupings": [{"name": "g", "instrument_module": "CHAI/LFA", "filter_rules": []}],
        "pipelines": [
            {"name": name, "data_grouping": "g", "processing_location": location,
             "trigger": {"type": "MANUAL"}, "steps": steps}
            for name, steps in pipelines.items()
        ],
    }  # fmt: skip
    path = write_yaml(root / "spec.yaml", spec)
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([path]), user="tester")
        register_simulation(session, SimulationRequest(scans=1, seed=3))


def _run(engine: Engine, pipeline: str) -> m.ExecutedReductionStep:
    """Execute the pipeline's first run through all its attempts; return it as recorded."""
    with Session(engine) as session, session.begin():
        wave = prepare_wave(
            session, pipeline, dt.datetime.now(dt.UTC), claim_as="test", manual=True
        )
    (run_id,) = [i.run_id for i in wave.items if i.run_id is not None]
    RunExecutor(engine, Settings()).execute(run_id)
    with Session(engine) as session:
        return session.get_one(m.ExecutedReductionStep, run_id)


@pytest.fixture(params=["host", pytest.param("podman", marks=[pytest.mark.podman])])
def runtime(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """(location, image digest, repository): the host runtime, or podman's example image."""
    if request.param == "host":
        return "local", FAKE_DIGEST, "ghcr.io/ccatobs/probe"
    image = request.getfixturevalue("example_image")
    return "pod", image.digest, image.repository("chai-software")


def test_planted_links_redirect_no_write_read_or_chmod_to_the_host(
    engine: Engine, tmp_path: Path, runtime: tuple[str, str, str]
) -> None:
    """Logs not moved into a linked directory, no job output appended through a planted
    log link, no linked attempt log read or chmodded, no host directory as products."""
    location, digest, repository = runtime
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    host_file = host_dir / "secret.txt"
    host_file.write_text("host secret")
    host_file.chmod(0o644)
    _hostile_pipelines(
        engine, tmp_path, location, digest, repository,
        {"dir": str(host_dir), "file": str(host_file)},
    )  # fmt: skip

    planted = _run(engine, "plant-logs")
    swapped = _run(engine, "swap-log")
    linked = _run(engine, "link-output")

    assert sorted(p.name for p in host_dir.iterdir()) == ["secret.txt"]
    assert host_file.read_text() == "host secret"
    assert stat.S_IMODE(host_file.stat().st_mode) == 0o644

    assert planted.status is m.RunStatus.FAILED and planted.retry_count == 1
    attempts = _attempts(engine, planted.id)
    assert "probe-attempt-1: was replaced by a symlink" in attempts[0], attempts
    assert "probe-attempt-2.log: was replaced by a symlink" in attempts[1], attempts
    assert planted.failure_kind is m.FailureKind.CONTRACT
    assert swapped.status is m.RunStatus.FAILED
    assert swapped.failure_reason and (
        "probe-attempt-1.log was replaced by a symlink; it was not read" in swapped.failure_reason
    ), swapped.failure_reason
    assert linked.status is m.RunStatus.FAILED
    assert linked.failure_reason and (
        "workspace/probe: was replaced by a symlink" in linked.failure_reason
    ), linked.failure_reason

    with Session(engine) as session:
        paths = session.scalars(select(m.DataProduct.file_path)).all()
    base = tmp_path / ("pod-runs" if location == "pod" else "runs")
    assert all(Path(p).is_relative_to(base) for p in paths), paths
    assert not any(Path(p).is_relative_to(host_dir) for p in paths)


def _attempts(engine: Engine, run_id: int) -> list[str]:
    """The failure reason of each recorded attempt of a run, in order."""
    a = m.RunAttempt
    with Session(engine) as session:
        return [
            reason or ""
            for reason in session.scalars(
                select(a.failure_reason)
                .where(a.executed_reduction_step_id == run_id)
                .order_by(a.attempt)
            )
        ]
