"""Work pools of processing locations: types, templates carrying the location's settings,
and the flow pods of a kubernetes pool validated against the Kubernetes OpenAPI schema."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

from ccat_ops_db.models import Backend, Runtime
from deployments.work_pools import POOL_TYPES, ProcessingLocation, pool_spec
from tests.backends.fake_kube_api import validate_manifest

FLOW_IMAGE = "ghcr.io/ccatobs/ccat-wm@sha256:" + "a" * 64
K8S = ProcessingLocation(
    "k8s-cologne", Backend.KUBERNETES, Runtime.APPTAINER, Path("/data/k8s-pipelines"),
    {
        "k8s_namespace": "ccat",
        "k8s_volumes": {"/data/k8s-pipelines": {"persistentVolumeClaim": {"claimName": "pipes"}}},
        "k8s_flow_image": FLOW_IMAGE,
        "k8s_flow_secret": "ccat-ops-db",
        "k8s_service_account": "ccat-runner",
    },
)  # fmt: skip
RAMSES = ProcessingLocation(
    "ramses", Backend.SLURM, Runtime.APPTAINER, Path("/data/pipelines"),
    {"slurm_partition": "astro", "slurm_account": "ccat", "sif_cache_dir": "/data/sif"},
)  # fmt: skip


def flow_pod_job(template: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The Job prefect-kubernetes's worker would create for a flow run of this pool."""

    class NoBlocks:
        """The template references no blocks, so no API client is needed to resolve it."""

    config = asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(
            template, values, client=NoBlocks()
        )
    )
    config.prepare_for_flow_run(flow_run=FlowRun(flow_id=uuid.uuid4(), name="chai-ngc253"))
    manifest: dict[str, Any] = config.job_manifest
    return manifest


def test_slurm_and_local_locations_get_process_pools_whose_env_carries_their_settings() -> None:
    spec = pool_spec(RAMSES, [10, 0])
    assert (spec.name, spec.type) == ("ramses", "process")
    env = spec.base_job_template["variables"]["properties"]["env"]["default"]
    assert env == {
        "CCAT_WM_LOCATION": "ramses", "SLURM_PARTITION": "astro", "SLURM_ACCOUNT": "ccat",
        "SIF_CACHE_DIR": "/data/sif", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY": "30",
    }  # fmt: skip
    assert spec.queues == (("trigger", 1), ("priority-10", 2), ("priority-0", 3))
    local = pool_spec(
        ProcessingLocation("laptop", Backend.LOCAL, Runtime.HOST, Path("/scratch"), {})
    )
    assert local.type == "process"


@pytest.mark.parametrize("gpu_node", [False, True], ids=["cpu-nodes", "gpu-node-selector"])
def test_kubernetes_pool_flow_pods_pass_the_openapi_schema(gpu_node: bool) -> None:
    location = K8S
    if gpu_node:
        location = ProcessingLocation(
            K8S.name, K8S.backend, K8S.runtime, K8S.path,
            {**K8S.settings, "k8s_node_selector": {"nvidia.com/gpu.present": "true"}},
        )  # fmt: skip
    spec = pool_spec(location)
    assert spec.type == "kubernetes"
    job = flow_pod_job(spec.base_job_template, {})
    validate_manifest(job)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert job["metadata"]["namespace"] == "ccat"
    assert container["image"] == FLOW_IMAGE
    assert pod["serviceAccountName"] == "ccat-runner"
    assert container["volumeMounts"] == [{"name": "data-0", "mountPath": "/data/k8s-pipelines"}]
    assert pod["volumes"] == [{"name": "data-0", "persistentVolumeClaim": {"claimName": "pipes"}}]
    assert container["envFrom"] == [{"secretRef": {"name": "ccat-ops-db"}}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CCAT_WM_LOCATION"] == "k8s-cologne" and env["K8S_NAMESPACE"] == "ccat"
    assert "CCAT_OPS_DB_URL" not in env  # secrets come from the Secret, never the template
    assert ("nodeSelector" in pod) is gpu_node


def test_prefect_kubernetes_default_template_alone_fails_strict_validation() -> None:
    """Why the pool moves completions/parallelism: the stock template's Job is rejected."""
    from deployments.work_pools import default_template

    stock = default_template("kubernetes")
    with pytest.raises(Exception, match="completions"):
        validate_manifest(flow_pod_job(stock, {"image": FLOW_IMAGE}))


def test_every_backend_has_a_work_pool_type() -> None:
    """Backends are an enum: a new member without a pool type fails here, not at deploy."""
    for backend in Backend:
        spec = pool_spec(ProcessingLocation("x", backend, Runtime.HOST, Path("/x"), {}))
        assert spec.type == POOL_TYPES[backend]
