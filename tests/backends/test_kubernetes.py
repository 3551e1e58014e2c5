"""The Kubernetes backend: manifests validated against the real OpenAPI schema, and the
backend driven through the official client against a FAKE API server (none can run here).

Manifests come from the same path production uses (`build_job` of a run context, then
`job_manifest`) and are checked with `kubernetes-validate` in strict mode, which rejects
unknown fields as a real API server does. The API-level tests talk HTTP to
`fake_kube_api.FakeKubeApi` (see its docstring for what it does and cannot show).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from ccat_ops_db import models as m
from ccat_wm.execution.context import LocationInfo, RunContext
from ccat_wm.execution.launch import build_job, display_command
from ccat_wm.settings import Settings
from infra.backends import BackendError, JobSpec, JobState, Resources, get_backend
from infra.backends.kubernetes import KubernetesBackend
from infra.backends.kubernetes_manifest import (
    KubernetesSettings,
    job_manifest,
    k8s_name,
    settings_from,
)
from tests.backends.fake_kube_api import FakeKubeApi, validate_manifest

DIGEST = "sha256:" + "3f" * 32
LOCATION_PATH = Path("/data/pipelines")
VOLUMES = {str(LOCATION_PATH): {"persistentVolumeClaim": {"claimName": "ccat-pipelines"}}}


def context(*, gpu: int = 0, step: str = "calibrate", run_id: int = 42) -> RunContext:
    """A run at a kubernetes location, as `load_run_context` would return it."""
    return RunContext(
        run_id=run_id, status=m.RunStatus.STAGING_DATA, retry_count=0, max_retries=2,
        hpc_job_id=None, exit_code=None, pipeline="chai-ngc253", step=step, step_id=1,
        sub_group_key="executed_obs_unit=scan-000001", is_final=False,
        location=LocationInfo(7, "k8s-cologne", m.Backend.KUBERNETES, m.Runtime.APPTAINER, LOCATION_PATH,
                              {"k8s_volumes": VOLUMES}),
        software="chai-calibration", repository="ghcr.io/ccatobs/chai-calibration",
        version_tag="1.4.0", digest=DIGEST, parameters={"calibration_mode": "$(touch /x)"},
        environment={"OMP_NUM_THREADS": "4"},
        command_template=["chai-calibrate", "--mode", "{calibration_mode}"],
        resources={"cpu": 4, "memory_gb": 16, "time_hours": 2, "gpu": gpu},
        raw_inputs=(), product_inputs=(),
    )  # fmt: skip


def manifest_of(ctx: RunContext, **settings: Any) -> dict[str, Any]:
    spec = build_job(ctx, Settings(), attempt=0)
    return job_manifest(spec, settings_from({"k8s_volumes": VOLUMES} | settings))


@pytest.mark.parametrize("gpu", [0, 2], ids=["cpu-only", "gpu"])
def test_generated_job_manifests_pass_the_kubernetes_openapi_schema(gpu: int) -> None:
    manifest = manifest_of(
        context(gpu=gpu),
        k8s_namespace="ccat",
        k8s_service_account="ccat-runner",
        k8s_image_pull_secrets=["ghcr"],
        k8s_node_selector={"ccat/gpu": "true"} if gpu else {},
    )
    validate_manifest(manifest)  # raises on any schema violation (strict: unknown fields too)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    limits = container["resources"]["limits"]
    assert container["resources"]["requests"] == limits
    assert limits["cpu"] == "4" and limits["memory"] == "16384Mi"
    assert limits.get("nvidia.com/gpu") == ("2" if gpu else None)
    assert manifest["metadata"]["namespace"] == "ccat"
    assert manifest["spec"]["activeDeadlineSeconds"] == 7200
    assert manifest["spec"]["backoffLimit"] == 0


def test_the_pipelines_priority_picks_the_pods_priority_class_and_an_escalated_request_its_limits() -> (
    None
):
    """Thresholds `{0: ccat-normal, 10: ccat-high}`; priority below 0 gets no class."""
    classes = {"k8s_priority_classes": {0: "ccat-normal", 10: "ccat-high"}}
    picked = {}
    for priority in (-5, 0, 9, 10, 50):
        ctx = dataclasses.replace(context(), priority=priority)
        manifest = manifest_of(ctx, **classes)
        validate_manifest(manifest)
        picked[priority] = manifest["spec"]["template"]["spec"].get("priorityClassName")
    assert picked == {
        -5: None,
        0: "ccat-normal",
        9: "ccat-normal",
        10: "ccat-high",
        50: "ccat-high",
    }
    escalated = build_job(context(), Settings(), attempt=1, request=Resources(4, 32.0, 2.0, 0))
    container = job_manifest(escalated, settings_from({"k8s_volumes": VOLUMES}))["spec"][
        "template"
    ]["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "32768Mi"


def test_the_schema_check_rejects_what_a_real_api_server_would() -> None:
    """The validator is live: a misspelled field and a non-quantity memory fail it."""
    manifest = manifest_of(context())
    bad_field = copy.deepcopy(manifest)
    bad_field["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(bad_field)
    no_image = copy.deepcopy(manifest)
    del no_image["spec"]["template"]["spec"]["containers"][0]["image"]
    no_image["spec"]["template"]["spec"]["containers"][0]["name"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(no_image)


def test_the_pod_runs_the_image_by_digest_with_the_contract_mounted_by_subpath() -> None:
    ctx = context()
    manifest = manifest_of(ctx)
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == f"ghcr.io/ccatobs/chai-calibration@{DIGEST}"
    assert container["command"] == ["chai-calibrate", "--mode", "$(touch /x)"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["WORKFLOW_DIR"] == "/workflow"
    assert env["WORKFLOW_OUTPUT_DIR"] == "/workflow/workspace/calibrate"
    assert env["OMP_NUM_THREADS"] == "4"
    run_root = ctx.layout.root.relative_to(LOCATION_PATH)
    assert {
        (v["mountPath"], v["subPath"], v["readOnly"], v["name"]) for v in container["volumeMounts"]
    } == {
        ("/workflow/input", f"{run_root}/input", True, "data-0"),
        ("/workflow/config", f"{run_root}/config", True, "data-0"),
        ("/workflow/workspace", f"{run_root}/workspace", False, "data-0"),
        ("/workflow/output", f"{run_root}/output", False, "data-0"),
        ("/workflow/logs", f"{run_root}/logs", False, "data-0"),
    }
    assert pod["volumes"] == [
        {"name": "data-0", "persistentVolumeClaim": {"claimName": "ccat-pipelines"}}
    ]
    assert pod["restartPolicy"] == "Never"
    spec = build_job(ctx, Settings(), attempt=0)
    stored = display_command(spec)
    assert stored.startswith("OMP_NUM_THREADS=4 WORKFLOW_DIR=/workflow ")  # the pod's env
    assert f" ghcr.io/ccatobs/chai-calibration@{DIGEST} chai-calibrate --mode" in stored


def test_job_names_are_dns_labels_that_keep_run_and_attempt() -> None:
    assert k8s_name("ccat-run-42-a1-Calibrate_Hot") == "ccat-run-42-a1-calibrate-hot"
    long = k8s_name("ccat-run-123456-a3-" + "x" * 100)
    assert len(long) == 63 and long.startswith("ccat-run-123456-a3-")


def test_a_run_directory_outside_every_volume_is_refused_with_the_path_named() -> None:
    ctx = context()
    spec = build_job(ctx, Settings(), attempt=0)
    other = settings_from({"k8s_volumes": {"/elsewhere": {"emptyDir": {}}}})
    with pytest.raises(BackendError, match=r"/data/pipelines/.* is on no volume"):
        job_manifest(spec, other)


# -- the backend through the official client, against the fake API server ----------------


@pytest.fixture
def api() -> Any:
    with FakeKubeApi() as fake:
        yield fake


def backend(api: FakeKubeApi, state_dir: Path) -> KubernetesBackend:
    settings = KubernetesSettings.model_validate(
        {"k8s_api_url": api.url, "k8s_volumes": VOLUMES, "k8s_poll_interval_s": 0.01}
    )
    return KubernetesBackend(state_dir, settings)


def spec_for(run_id: int, tmp_path: Path) -> JobSpec:
    spec = build_job(context(run_id=run_id), Settings(), attempt=0)
    return JobSpec(
        spec.name, spec.argv, spec.env, spec.cwd, tmp_path / f"run-{run_id}.log",
        spec.resources, spec.image, spec.mounts,
    )  # fmt: skip


def wait_state(b: KubernetesBackend, job_id: str, state: JobState) -> Any:
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        info = b.status(job_id)
        if info.state is state:
            return info
        time.sleep(0.02)
    raise AssertionError(f"{job_id} never reached {state}: {b.status(job_id)}")


def test_fake_api_submit_run_complete_reads_wall_time_and_keeps_the_pod_log(
    api: FakeKubeApi, tmp_path: Path
) -> None:
    b = backend(api, tmp_path)
    spec = spec_for(1, tmp_path)
    job_id = b.submit(spec)
    assert job_id == k8s_name(spec.name)
    assert api.rejected == []
    assert b.status(job_id).state is JobState.PENDING
    api.start(job_id, started_s_ago=30)
    running = wait_state(b, job_id, JobState.RUNNING)
    assert running.wall_time_s is not None and running.wall_time_s >= 29
    api.finish(job_id, exit_code=0, wall_s=95, log="calibrated 12 spectra\n")
    done = wait_state(b, job_id, JobState.COMPLETED)
    assert done.exit_code == 0
    assert done.wall_time_s == pytest.approx(95, abs=1)
    assert done.cpu_hours is None and done.peak_memory_gb is None  # Kubernetes keeps neither
    assert spec.log_path.read_text() == "calibrated 12 spectra\n"
    assert b.logs(job_id) == "calibrated 12 spectra\n"


@pytest.mark.parametrize(
    ("container_reason", "job_reason", "exit_code", "expected"),
    [
        ("OOMKilled", "BackoffLimitExceeded", 137, "OUT_OF_MEMORY"),
        ("Error", "DeadlineExceeded", 137, "TIMEOUT"),
        ("Error", "BackoffLimitExceeded", 3, "exit code 3"),
    ],
)
def test_fake_api_failures_carry_the_reason_a_retry_needs(
    api: FakeKubeApi,
    tmp_path: Path,
    container_reason: str,
    job_reason: str,
    exit_code: int,
    expected: str,
) -> None:
    b = backend(api, tmp_path)
    job_id = b.submit(spec_for(2, tmp_path))
    api.start(job_id)
    api.finish(
        job_id, exit_code=exit_code, container_reason=container_reason, job_reason=job_reason
    )
    info = wait_state(b, job_id, JobState.FAILED)
    assert (info.reason, info.exit_code) == (expected, exit_code)


def test_fake_api_status_of_many_jobs_is_two_list_calls_per_cycle(
    api: FakeKubeApi, tmp_path: Path
) -> None:
    b = backend(api, tmp_path)
    ids = [b.submit(spec_for(100 + i, tmp_path)) for i in range(20)]
    for job_id in ids[:10]:
        api.start(job_id)
    api.requests.clear()
    states = b.status_many(ids)
    assert [states[j].state for j in ids] == [JobState.RUNNING] * 10 + [JobState.PENDING] * 10
    assert api.requests == {"GET jobs": 1, "GET pods": 1}


def test_fake_api_cancel_deletes_the_job_and_every_process_reads_cancelled(
    api: FakeKubeApi, tmp_path: Path
) -> None:
    b = backend(api, tmp_path)
    job_id = b.submit(spec_for(3, tmp_path))
    api.start(job_id)
    b.cancel(job_id)
    assert api.requests["DELETE job"] == 1 and ("default", job_id) not in api.jobs
    assert b.status(job_id).state is JobState.CANCELLED
    other_process = backend(api, tmp_path)  # e.g. the flow, while `ccat-wm cancel` ran
    assert other_process.status(job_id).state is JobState.CANCELLED
    b.cancel(job_id)  # cancelling a Job that is gone is not an error


def test_fake_api_find_and_resubmit_after_a_crash_create_no_second_job(
    api: FakeKubeApi, tmp_path: Path
) -> None:
    spec = spec_for(4, tmp_path)
    first = backend(api, tmp_path)
    job_id = first.submit(spec)
    restarted = backend(api, tmp_path)
    assert restarted.find(spec.name) == job_id
    assert restarted.find("ccat-run-999-a0-calibrate") is None
    assert restarted.submit(spec) == job_id  # 409 from the API: the same submission
    assert len(api.jobs) == 1
    lost = backend(api, tmp_path / "other")
    api.jobs.clear()
    assert lost.status(job_id).state is JobState.UNKNOWN


def test_registry_builds_the_kubernetes_backend_from_location_settings(tmp_path: Path) -> None:
    b = get_backend("kubernetes", tmp_path, {"k8s_namespace": "ccat", "k8s_volumes": VOLUMES})
    assert isinstance(b, KubernetesBackend) and b.settings.namespace == "ccat"
    with pytest.raises(BackendError, match="k8s_volumes"):
        get_backend("kubernetes", tmp_path, {"k8s_volumes": {"relative/dir": {"emptyDir": {}}}})


def test_an_unreachable_api_is_a_backend_error_naming_the_call(tmp_path: Path) -> None:
    settings = KubernetesSettings.model_validate(
        {"k8s_api_url": "http://127.0.0.1:9", "k8s_volumes": VOLUMES}
    )
    b = KubernetesBackend(tmp_path, settings)
    with pytest.raises(BackendError, match="create_job"):
        b.submit(spec_for(5, tmp_path))
