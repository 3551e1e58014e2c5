"""The demo pipeline in real podman containers, on the local backend and on SLURM.

The image is the example software built on this host by `infra.example_image` (Debian
root file system, the host's Python package versions), pinned by the digest podman
reports. The same scans are processed by the host runtime and in containers; the
products must be the same bytes.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.simulate.register import SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from infra.example_image import BuiltImage, spec_with_image
from tests.helpers import locations_data, podman_location, run_cli, write_yaml

pytestmark = pytest.mark.db


def _pipeline_at(data: dict[str, Any], name: str, location: str) -> dict[str, Any]:
    pipeline = copy.deepcopy(data["pipelines"][0])
    pipeline["name"] = name
    pipeline["processing_location"] = location
    return pipeline


def _products(engine: Engine, pipeline: str) -> dict[tuple[str, str, str], str]:
    """(step, sub-group, file name) -> checksum of every non-log product of a pipeline."""
    run, step, prod = m.ExecutedReductionStep, m.ReductionStep, m.DataProduct
    with Session(engine) as session:
        rows = session.execute(
            select(
                step.name, run.sub_group_key, prod.file_path, prod.checksum, prod.data_product_type
            )
            .join(run, run.reduction_step_id == step.id)
            .join(prod, prod.executed_reduction_step_id == run.id)
            .join(m.Pipeline, m.Pipeline.id == step.pipeline_id)
            .where(m.Pipeline.name == pipeline, run.status == m.RunStatus.COMPLETED)
        ).all()
    return {
        (s, key, Path(path).name): checksum
        for s, key, path, checksum, kind in rows
        if kind is not m.DataProductType.LOG
    }


def test_the_demo_runs_in_podman_containers_bit_identical_to_the_host_run(
    engine: Engine,
    tmp_path: Path,
    run_env: dict[str, str],
    example_image: BuiltImage,
    slurm_cluster: None,
) -> None:
    """Host runtime, podman on the local backend and podman on SLURM: the same bytes."""
    data = spec_with_image(example_image)
    locations = locations_data(tmp_path)["locations"]
    locations += [
        podman_location("pod", tmp_path / "pod-runs"),
        podman_location("slurmpod", tmp_path / "slurm-runs", slurm=True),
    ]
    data["locations"] = locations
    data["pipelines"] = [
        _pipeline_at(data, "chai-host", "local"),
        _pipeline_at(data, "chai-podman", "pod"),
        _pipeline_at(data, "chai-slurm-podman", "slurmpod"),
    ]
    spec = write_yaml(tmp_path / "spec.yaml", data)
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([spec]), user="tester")
        register_simulation(session, SimulationRequest(scans=3, seed=253))
    for pipeline in ("chai-host", "chai-podman", "chai-slurm-podman"):
        done = run_cli(run_env, "run", pipeline, timeout=900)
        assert done.returncode == 0, f"{pipeline}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    host = _products(engine, "chai-host")
    assert {step for step, _, _ in host} == {"calibrate", "baseline", "grid"}
    assert any(name.endswith(".fits") for step, _, name in host if step == "grid")
    assert any(name.endswith(".png") for step, _, name in host if step == "grid")
    assert _products(engine, "chai-podman") == host
    assert _products(engine, "chai-slurm-podman") == host

    with Session(engine) as session:
        commands = dict(
            session.execute(
                select(m.Pipeline.name, m.ExecutedReductionStep.execution_command)
                .join(m.ReductionStep, m.ReductionStep.pipeline_id == m.Pipeline.id)
                .join(
                    m.ExecutedReductionStep,
                    m.ExecutedReductionStep.reduction_step_id == m.ReductionStep.id,
                )
                .where(m.ReductionStep.name == "grid")
            ).all()
        )
    image = f"localhost/chai-gridding@{example_image.digest}"
    for pipeline in ("chai-podman", "chai-slurm-podman"):
        command = commands[pipeline]
        assert command.startswith("WORKFLOW_DIR=/workflow "), command
        assert "WORKFLOW_OUTPUT_DIR=/workflow/output" in command
        assert " podman --runtime runc --cgroup-manager=cgroupfs run " in command
        assert "--network=none" in command and image in command
        assert "--env=WORKFLOW_DIR" in command
    assert commands["chai-host"].startswith(f"WORKFLOW_DIR={tmp_path / 'runs'}")
