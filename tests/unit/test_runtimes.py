"""Command building: the Apptainer argument list, the host runtime, command templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccat_wm.errors import ConfigurationError
from ccat_wm.execution.launch import render_command
from infra.runtimes import (
    ContainerJob,
    ImageRef,
    RuntimeConfigError,
    apptainer_command,
    apptainer_pull_command,
    host_command,
)

DIGEST = "sha256:" + "3f" * 32
IMAGE = ImageRef("ghcr.io/ccatobs/chai-calibration", DIGEST, "1.4.0")
ROOT = Path("/data/pipelines/chai/executed_obs_unit=scan-000001/run-7")


def job(gpu: int = 0, output: str = "workspace/calibrate") -> ContainerJob:
    return ContainerJob(
        command=("chai-calibrate", "--mode", "hot_cold"),
        host_root=ROOT,
        output_dir=output,
        env={"OMP_NUM_THREADS": "4"},
        image=IMAGE,
        gpu=gpu,
    )


def test_apptainer_command_binds_the_contract_read_only_where_it_says() -> None:
    argv, env = apptainer_command(job(), Path("/cache/sif"))
    assert argv == [
        "apptainer", "exec", "--cleanenv", "--no-home", "--pwd", "/workflow",
        "--bind", f"{ROOT}/input:/workflow/input:ro",
        "--bind", f"{ROOT}/workspace:/workflow/workspace",
        "--bind", f"{ROOT}/output:/workflow/output",
        "--bind", f"{ROOT}/config:/workflow/config:ro",
        "--bind", f"{ROOT}/logs:/workflow/logs",
        f"/cache/sif/chai-calibration_sha256-{'3f' * 32}.sif",
        "chai-calibrate", "--mode", "hot_cold",
    ]  # fmt: skip
    assert env["APPTAINERENV_WORKFLOW_DIR"] == "/workflow"
    assert env["APPTAINERENV_WORKFLOW_OUTPUT_DIR"] == "/workflow/workspace/calibrate"
    assert env["APPTAINERENV_WORKFLOW_MANIFEST"] == "/workflow/config/manifest.json"
    assert env["APPTAINERENV_OMP_NUM_THREADS"] == "4"
    assert "WORKFLOW_DIR" not in env


def test_apptainer_command_requests_gpus_with_nv() -> None:
    argv, _ = apptainer_command(job(gpu=1), Path("/cache/sif"))
    assert argv.count("--nv") == 1
    assert (
        argv.index("--nv") == argv.index(f"/cache/sif/chai-calibration_sha256-{'3f' * 32}.sif") - 1
    )
    assert "--nv" not in apptainer_command(job(gpu=0), Path("/c"))[0]


def test_images_are_pulled_by_digest_into_the_sif_cache() -> None:
    assert apptainer_pull_command(IMAGE, Path("/cache")) == [
        "apptainer", "pull", f"/cache/chai-calibration_sha256-{'3f' * 32}.sif",
        f"docker://ghcr.io/ccatobs/chai-calibration@{DIGEST}",
    ]  # fmt: skip
    tag_only = ImageRef("ghcr.io/ccatobs/x", None, "2.0")
    assert tag_only.reference == "docker://ghcr.io/ccatobs/x:2.0"
    with pytest.raises(RuntimeConfigError, match="neither a digest nor a tag"):
        _ = ImageRef("ghcr.io/ccatobs/x").reference


def test_host_command_points_the_contract_at_host_directories() -> None:
    argv, env = host_command(job(output="output"))
    assert argv == ["chai-calibrate", "--mode", "hot_cold"]
    assert env["WORKFLOW_DIR"] == str(ROOT)
    assert env["WORKFLOW_OUTPUT_DIR"] == str(ROOT / "output")
    assert env["WORKFLOW_MANIFEST"] == str(ROOT / "config" / "manifest.json")
    assert env["OMP_NUM_THREADS"] == "4"


def test_command_templates_substitute_parameters_without_interpreting_them() -> None:
    params = {"mode": "$(touch /tmp/pwned)", "order": 3, "x": "; rm -rf /"}
    assert render_command(["prog", "--mode", "{mode}", "--order={order}", "{x}"], params) == [
        "prog", "--mode", "$(touch /tmp/pwned)", "--order=3", "; rm -rf /",
    ]  # fmt: skip
    with pytest.raises(ConfigurationError, match=r"\{missing\}, which is not a config parameter"):
        render_command(["prog", "{missing}"], params)
