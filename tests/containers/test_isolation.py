"""The container contract enforced: each case is a program run in a podman container by
the real pipeline (real PostgreSQL, Prefect through the CLI, the local backend).

The probe (tests/programs/container_probe.py) needs only Python's standard library; the
container cannot see the test tree, so its source is the config parameter `code`.
The same probe under the host runtime is the control: what it is allowed there, the
container must refuse.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.simulate.register import SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from infra.example_image import BuiltImage
from tests.helpers import locations_data, podman_location, run_cli, write_yaml

pytestmark = pytest.mark.db

PROBE = Path(__file__).resolve().parent.parent / "programs" / "container_probe.py"


def _step(mode: str, arg: str = "", memory_gb: float = 1) -> dict[str, Any]:
    return {
        "name": "probe",
        "software": "probe",
        "group_by": ["executed_obs_unit"],
        "max_retries": 0,
        "config": {
            "name": f"probe-{mode}-{memory_gb}",
            "parameters": {"code": PROBE.read_text(), "mode": mode, "arg": arg},
            "command": ["python3", "-c", "{code}", "{mode}", "{arg}"],
            "resources": {"cpu": 1, "memory_gb": memory_gb, "time_hours": 0.1},
        },
    }


def _apply(
    engine: Engine,
    root: Path,
    image: BuiltImage,
    pipelines: dict[str, tuple[str, dict[str, Any]]],
    *,
    extra_locations: list[dict[str, Any]] | None = None,
    scans: int = 2,
) -> None:
    """Apply `name -> (location, step)` pipelines over `scans` simulated scans."""
    locations = locations_data(root)["locations"]
    locations.append(podman_location("pod", root / "pod-runs"))
    locations += extra_locations or []
    spec = {
        "locations": locations,
        "instruments": [{"name": "CHAI", "modules": ["LFA", "HFA"]}],
        "software": [
            {
                "name": "probe",
                "ghcr_url": image.repository("chai-software"),
                "versions": [{"tag": "1.0.0", "digest": image.digest, "is_latest": True}],
            }
        ],
        "data_groupings": [{"name": "g", "instrument_module": "CHAI/LFA", "filter_rules": []}],
        "pipelines": [
            {"name": name, "data_grouping": "g", "processing_location": location,
             "trigger": {"type": "MANUAL"}, "steps": [step]}
            for name, (location, step) in pipelines.items()
        ],
    }  # fmt: skip
    path = write_yaml(root / "spec.yaml", spec)
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([path]), user="tester")
        register_simulation(session, SimulationRequest(scans=scans, seed=11))


def _run_column(engine: Engine, pipeline: str, column: Any) -> list[Any]:
    """One column of a pipeline's runs, in run order."""
    run = m.ExecutedReductionStep
    with Session(engine) as session:
        return list(
            session.execute(
                select(column)
                .select_from(run)
                .join(m.ReductionStep, m.ReductionStep.id == run.reduction_step_id)
                .join(m.Pipeline, m.Pipeline.id == m.ReductionStep.pipeline_id)
                .where(m.Pipeline.name == pipeline)
                .order_by(run.id)
            ).scalars()
        )


def _runs(engine: Engine, pipeline: str) -> list[tuple[m.RunStatus, str | None]]:
    """(status, failure reason) of each run of a pipeline."""
    run = m.ExecutedReductionStep
    return list(
        zip(
            _run_column(engine, pipeline, run.status),
            _run_column(engine, pipeline, run.failure_reason),
            strict=True,
        )
    )


def _run_ids(engine: Engine, pipeline: str) -> list[int]:
    return _run_column(engine, pipeline, m.ExecutedReductionStep.id)


def _probe_products(engine: Engine, pipeline: str) -> list[dict[str, Any]]:
    with Session(engine) as session:
        paths = session.scalars(
            select(m.DataProduct.file_path)
            .join(m.ExecutedReductionStep)
            .join(m.ReductionStep)
            .join(m.Pipeline)
            .where(m.Pipeline.name == pipeline, m.DataProduct.file_path.like("%probe.json"))
        ).all()
    return [json.loads(Path(p).read_text()) for p in paths]


@pytest.fixture
def home_marker() -> Iterator[Path]:
    """A file in the host user's home directory, which no container may see."""
    marker = Path.home() / f".ccat-wm-probe-{uuid.uuid4().hex}"
    marker.write_text("host secret")
    yield marker
    marker.unlink()


def test_a_container_cannot_write_inputs_or_config_nor_see_the_host_or_the_network(
    engine: Engine,
    tmp_path: Path,
    run_env: dict[str, str],
    example_image: BuiltImage,
    home_marker: Path,
) -> None:
    """Read-only input/ and config/, no host path, only loopback, no host service."""
    host_paths = [str(home_marker), str(tmp_path / "archive"), str(tmp_path / "pod-runs"),
                  str(tmp_path / "runs"), str(tmp_path)]  # fmt: skip
    arg = json.dumps({"host_paths": host_paths, "tcp": ["127.0.0.1", 5432]})
    _apply(engine, tmp_path, example_image, {
        "in-podman": ("pod", _step("isolation", arg)),
        "on-host": ("local", _step("isolation", arg)),
    })  # fmt: skip
    for pipeline in ("in-podman", "on-host"):
        done = run_cli(run_env, "run", pipeline, timeout=600)
        assert done.returncode == 0, f"{pipeline}: {done.stdout[-3000:]}\n{done.stderr[-2000:]}"

    contained = _probe_products(engine, "in-podman")
    assert len(contained) == 2  # one per scan, both runs COMPLETED
    for seen in contained:
        assert seen["inputs"] and all(
            r == "refused: Read-only file system" for r in seen["inputs"].values()
        ), seen["inputs"]
        assert all(path.startswith("/workflow/input/") for path in seen["inputs"])
        assert seen["manifest"] == "refused: Read-only file system"
        assert seen["new_input"] == "refused: Read-only file system"
        assert seen["new_config"] == "refused: Read-only file system"
        assert seen["host_paths"] == dict.fromkeys(host_paths, False)
        assert seen["interfaces"] == ["lo"]
        assert seen["tcp"] == "refused: Connection refused"
        assert seen["workflow_dir"] == "/workflow"
        assert seen["workflow_listing"] == ["config", "input", "logs", "output", "workspace"]
        assert "WORKFLOW_MANIFEST" in seen["environment"]
        assert not {"CCAT_OPS_DB_URL", "PREFECT_API_URL"} & set(seen["environment"])

    # The control: on the host the same probe reaches what the container hides.
    on_host = _probe_products(engine, "on-host")
    assert len(on_host) == 2
    for seen in on_host:
        assert seen["host_paths"][str(home_marker)] is True
        assert seen["host_paths"][str(tmp_path / "archive")] is True
        assert seen["tcp"] == "allowed"
        assert len(seen["interfaces"]) > 1 or seen["interfaces"] != ["lo"]
        assert seen["new_input"] == "allowed"


def test_an_escaping_symlink_and_science_outside_the_output_directory_fail_the_run(
    engine: Engine, tmp_path: Path, run_env: dict[str, str], example_image: BuiltImage
) -> None:
    """A symlink to a host file fails collection naming the file; a program that ignores
    $WORKFLOW_OUTPUT_DIR meets a read-only root file system and fails with that error."""
    _apply(engine, tmp_path, example_image, {
        "escape": ("pod", _step("symlink")),
        "wrongdir": ("pod", _step("wrong-dir")),
    })  # fmt: skip
    for pipeline in ("escape", "wrongdir"):
        done = run_cli(run_env, "run", pipeline, timeout=600)
        assert done.returncode == 1, f"{pipeline}: {done.stdout[-3000:]}\n{done.stderr[-2000:]}"

    escape = _runs(engine, "escape")
    assert len(escape) == 2
    for status, reason in escape:
        assert status is m.RunStatus.FAILED
        assert reason and "science/passwd.fits: symlink leaves the output directory" in reason
    wrong = _runs(engine, "wrongdir")
    assert len(wrong) == 2
    for status, reason in wrong:
        assert status is m.RunStatus.FAILED
        assert reason and "exit code 1" in reason, reason
    run_id = _run_ids(engine, "wrongdir")[0]
    logs = run_cli(run_env, "logs", str(run_id))
    assert "Read-only file system: '/workflow/science'" in logs.stdout, logs.stdout[-2000:]


def test_the_memory_request_is_a_limit_the_container_cannot_pass(
    engine: Engine, tmp_path: Path, run_env: dict[str, str], example_image: BuiltImage
) -> None:
    """`memory_gb` becomes `--memory`: 300 MB under a 1 GB limit completes, over 100 MB not."""
    _apply(engine, tmp_path, example_image, {
        "fits": ("pod", _step("allocate", "300", memory_gb=1)),
        "too-big": ("pod", _step("allocate", "300", memory_gb=0.1)),
    })  # fmt: skip
    assert run_cli(run_env, "run", "fits", timeout=600).returncode == 0
    assert run_cli(run_env, "run", "too-big", timeout=600).returncode == 1
    assert {status for status, _ in _runs(engine, "fits")} == {m.RunStatus.COMPLETED}
    too_big = _runs(engine, "too-big")
    assert len(too_big) == 2
    for status, reason in too_big:
        assert status is m.RunStatus.FAILED
        assert reason and "exit code 137" in reason, reason
    commands = _run_column(engine, "too-big", m.ExecutedReductionStep.execution_command)
    assert all("--memory=102m" in c for c in commands), commands
