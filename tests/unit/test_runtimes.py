"""Command building: Apptainer and podman argument lists, the host runtime, command templates.

Apptainer cannot be installed here: its argument lists are checked against its
documented grammar (tests/unit/apptainer_grammar.py, which cites the sources).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ccat_wm.errors import ConfigurationError
from ccat_wm.execution.launch import render_command
from infra.runtimes import (
    ContainerJob,
    ImageRef,
    PodmanOptions,
    RuntimeConfigError,
    apptainer_command,
    apptainer_pull_command,
    contract_mounts,
    host_command,
    podman_command,
    sif_path,
)
from tests.unit.apptainer_grammar import GrammarError, parse_exec, parse_pull

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


SIF = Path(f"/cache/sif/chai-calibration_sha256-{'3f' * 32}.sif")


def test_apptainer_command_binds_the_contract_read_only_where_it_says() -> None:
    """Checked against Apptainer 1.3's documented grammar (tests/unit/apptainer_grammar.py)."""
    argv, env = apptainer_command(job(), SIF)
    parsed = parse_exec(argv)
    assert parsed.values("bind") == [
        f"{ROOT}/input:/workflow/input:ro",
        f"{ROOT}/workspace:/workflow/workspace",
        f"{ROOT}/output:/workflow/output",
        f"{ROOT}/config:/workflow/config:ro",
        f"{ROOT}/logs:/workflow/logs",
    ]
    assert parsed.positionals == [str(SIF), "chai-calibrate", "--mode", "hot_cold"]
    # Nothing of the host but the binds: no home, no system bind paths, no network.
    assert ("containall", None) in parsed.options and ("no-home", None) in parsed.options
    assert parsed.values("no-mount") == ["bind-paths"]
    assert ("net", None) in parsed.options and parsed.values("network") == ["none"]
    assert parsed.values("pwd") == ["/workflow"]
    assert env["APPTAINERENV_WORKFLOW_DIR"] == "/workflow"
    assert env["APPTAINERENV_WORKFLOW_OUTPUT_DIR"] == "/workflow/workspace/calibrate"
    assert env["APPTAINERENV_WORKFLOW_MANIFEST"] == "/workflow/config/manifest.json"
    assert env["APPTAINERENV_OMP_NUM_THREADS"] == "4"
    assert "WORKFLOW_DIR" not in env


def test_apptainer_command_requests_gpus_with_nv() -> None:
    parsed = parse_exec(apptainer_command(job(gpu=1), SIF)[0])
    assert ("nv", None) in parsed.options
    assert parsed.positionals[0] == str(SIF)
    assert ("nv", None) not in parse_exec(apptainer_command(job(gpu=0), SIF)[0]).options


def test_the_grammar_check_can_fail() -> None:
    """The checker refuses what Apptainer would not take (so its passing means something)."""
    argv, _ = apptainer_command(job(), SIF)
    with pytest.raises(GrammarError, match="no option --bnid"):
        parse_exec([a.replace("--bind", "--bnid") for a in argv])
    with pytest.raises(GrammarError, match="not src"):
        parse_exec(["apptainer", "exec", "--bind", "/a:/b:ro:x", str(SIF), "true"])
    with pytest.raises(GrammarError, match="ro or rw"):
        parse_exec(["apptainer", "exec", "--bind", "/a:/b:readonly", str(SIF), "true"])
    with pytest.raises(GrammarError, match="is a switch"):
        parse_exec(["apptainer", "exec", "--nv=2", str(SIF), "true"])
    with pytest.raises(GrammarError, match="not a URI"):
        parse_pull(["apptainer", "pull", "x.sif", "ghcr.io/a/b@sha256:00"])


def test_images_are_pulled_by_digest_oci_as_docker_and_sif_as_oras() -> None:
    """OCI images: `docker://` (Apptainer converts them); SIFs in a registry: `oras://`."""
    destination = Path("/cache/x.sif.partial")
    oci = parse_pull(apptainer_pull_command(IMAGE, destination))
    assert oci.positionals == [
        str(destination),
        f"docker://ghcr.io/ccatobs/chai-calibration@{DIGEST}",
    ]
    assert ("disable-cache", None) in oci.options  # our cache is the SIF cache
    sif = ImageRef("ghcr.io/ccatobs/chai-calibration", DIGEST, "1.4.0", sif=True)
    pulled = parse_pull(apptainer_pull_command(sif, destination))
    assert pulled.positionals[-1] == f"oras://ghcr.io/ccatobs/chai-calibration@{DIGEST}"
    tag_only = ImageRef("ghcr.io/ccatobs/x", None, "2.0")
    assert tag_only.reference == "docker://ghcr.io/ccatobs/x:2.0"
    with pytest.raises(RuntimeConfigError, match="neither a digest nor a tag"):
        _ = ImageRef("ghcr.io/ccatobs/x").reference


def test_podman_and_kubernetes_run_oci_images_only() -> None:
    assert IMAGE.oci_reference == f"ghcr.io/ccatobs/chai-calibration@{DIGEST}"
    sif = ImageRef("ghcr.io/ccatobs/chai-calibration", DIGEST, "1.4.0", sif=True)
    with pytest.raises(RuntimeConfigError, match="is a SIF; podman and Kubernetes run OCI"):
        _ = sif.oci_reference
    with pytest.raises(RuntimeConfigError, match="is a SIF"):
        podman_command(replace(job(), image=sif), PodmanOptions())


def test_a_sif_file_is_run_in_place() -> None:
    image = ImageRef("", DIGEST, "1.4.0", sif=True, sif_path="/data/sif/chai.sif")
    assert sif_path(image, Path("/cache")) == Path("/data/sif/chai.sif")
    argv, _ = apptainer_command(replace(job(), image=image), sif_path(image, Path("/cache")))
    assert parse_exec(argv).positionals[0] == "/data/sif/chai.sif"


def test_podman_command_mounts_the_same_contract_and_passes_values_by_name() -> None:
    argv, env = podman_command(
        replace(job(gpu=1), cpu=4, memory_gb=16, name="ccat-run-7-a0-calibrate"), PodmanOptions()
    )
    assert argv[:4] == ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs"]
    assert argv[4] == "run"
    volumes = [a.removeprefix("--volume=") for a in argv if a.startswith("--volume=")]
    assert volumes == [
        f"{m.host_path}:{m.container_path}:{'ro' if m.read_only else 'rw'}"
        for m in contract_mounts(job())
    ]
    assert volumes[0] == f"{ROOT}/input:/workflow/input:ro"
    assert volumes[3] == f"{ROOT}/config:/workflow/config:ro"
    for option in ("--network=none", "--read-only", "--rm", "--cpus=4", "--memory=16384m",
                   "--ulimit=nofile=1024:1024", "--ulimit=nproc=4096:4096",
                   "--device=nvidia.com/gpu=all", "--name=ccat-run-7-a0-calibrate",
                   "--workdir=/workflow", "--pull=missing"):  # fmt: skip
        assert option in argv, option
    image_at = argv.index(f"ghcr.io/ccatobs/chai-calibration@{DIGEST}")
    assert argv[image_at + 1 :] == ["chai-calibrate", "--mode", "hot_cold"]
    # Values by name only: none in the argument list (nor in `ps`), all in podman's env.
    assert "--env=OMP_NUM_THREADS" in argv and "--env=WORKFLOW_DIR" in argv
    assert not any("=4" in a for a in argv if a.startswith("--env="))
    assert env["OMP_NUM_THREADS"] == "4" and env["WORKFLOW_DIR"] == "/workflow"
    assert env["WORKFLOW_OUTPUT_DIR"] == "/workflow/workspace/calibrate"


def test_podman_options_are_location_settings() -> None:
    options = PodmanOptions.from_settings(
        {"podman_oci_runtime": "", "podman_cgroup_manager": "systemd", "podman_ulimits": {},
         "podman_pull": "never", "podman_extra_args": ["--security-opt=seccomp=unconfined"]}
    )  # fmt: skip
    argv, _ = podman_command(job(), options)
    assert argv[:3] == ["podman", "--cgroup-manager=systemd", "run"]
    assert not any(a.startswith("--ulimit") for a in argv)
    assert "--pull=never" in argv and "--security-opt=seccomp=unconfined" in argv
    # On SLURM, podman starts in the job's own PID namespace (its conmon stays in the job).
    wrapped, _ = podman_command(job(), replace(options, pid_namespace=True))
    assert wrapped[:6] == ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "podman"]


def test_a_path_that_would_split_a_bind_spec_is_refused() -> None:
    bad = replace(job(), host_root=Path("/data/a:b/run-1"))
    with pytest.raises(RuntimeConfigError, match=r"/data/a:b/run-1/input.*':'"):
        apptainer_command(bad, SIF)
    with pytest.raises(RuntimeConfigError, match="','"):
        podman_command(replace(job(), host_root=Path("/data/a,b")), PodmanOptions())


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


def test_the_stored_command_shows_the_container_environment_without_secret_values() -> None:
    from ccat_wm.execution.launch import display_command
    from infra.backends import JobSpec

    argv, env = podman_command(
        replace(job(), env={"DB_PASSWORD": "hunter2", "OMP_NUM_THREADS": "4"}), PodmanOptions()
    )
    shown = tuple(k for k in env if f"--env={k}" in argv)
    spec = JobSpec("j", tuple(argv), env, ROOT, ROOT / "log", shown_env=shown)
    stored = display_command(spec)
    assert stored.startswith("OMP_NUM_THREADS=4 WORKFLOW_DIR=/workflow ")
    assert "WORKFLOW_OUTPUT_DIR=/workflow/workspace/calibrate" in stored
    assert "'DB_PASSWORD=<withheld>' podman --runtime runc" in stored
    assert "hunter2" not in stored and "PATH=" not in stored
