"""What the Kubernetes backend sends: a location's settings and a run's `batch/v1` Job.

Plain functions over data (no API call), so a manifest is validated against the
Kubernetes schema in the tests. Requests equal limits (cpu, memory, `nvidia.com/gpu`),
`activeDeadlineSeconds` is the step's time limit and `backoffLimit` is 0; the contract's
directories are mounted at `/workflow/...` by `subPath` of the location's volumes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from infra.backends.base import BackendError, JobSpec, Resources, by_threshold
from infra.backends.location_settings import validated_settings
from infra.runtimes import CONTAINER_ROOT

MANAGED_BY = "ccat-wm"
"""Value of the `app.kubernetes.io/managed-by` label on every Job and pod we create."""
CONTAINER = "job"
"""Name of the pod's one container."""
NAME_ANNOTATION = "ccat-wm/job-name"
LOG_ANNOTATION = "ccat-wm/log-path"


class KubernetesSettings(BaseModel):
    """A kubernetes location's settings (location settings `k8s_*`, env defaults applied)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    namespace: str = Field(default="default", alias="k8s_namespace")
    volumes: dict[str, dict[str, Any]] = Field(default_factory=dict, alias="k8s_volumes")
    """Processing-host directory -> Kubernetes volume source holding the same files."""
    service_account: str | None = Field(default=None, alias="k8s_service_account")
    image_pull_secrets: tuple[str, ...] = Field(default=(), alias="k8s_image_pull_secrets")
    node_selector: dict[str, str] = Field(default_factory=dict, alias="k8s_node_selector")
    priority_classes: dict[int, str] = Field(default_factory=dict, alias="k8s_priority_classes")
    """Lowest pipeline priority -> PriorityClass of its pods (the highest threshold at or
    below the priority wins; none below the lowest)."""
    ttl_seconds_after_finished: int = Field(
        default=7 * 86400, ge=0, alias="k8s_ttl_seconds_after_finished"
    )
    """How long the cluster keeps a finished Job (longer than any flow outage)."""
    poll_interval_s: float = Field(default=5.0, gt=0, alias="k8s_poll_interval_s")
    api_url: str | None = Field(default=None, alias="k8s_api_url")
    """Talk to this API URL without credentials (`kubectl proxy`); unset: kubeconfig or
    the in-cluster service account."""
    context: str | None = Field(default=None, alias="k8s_context")
    """kubeconfig context (unset: the current one)."""

    @field_validator("volumes")
    @classmethod
    def _one_source_each(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for directory, source in value.items():
            if not Path(directory).is_absolute():
                raise ValueError(f"k8s_volumes key {directory!r} is not an absolute path")
            if len(source) != 1:
                raise ValueError(
                    f"k8s_volumes[{directory!r}] must be one volume source such as "
                    f"{{persistentVolumeClaim: {{claimName: NAME}}}}, got keys {sorted(source)}"
                )
        return value


def settings_from(values: Mapping[str, Any]) -> KubernetesSettings:
    """Validate a location's settings for Kubernetes; the error names the setting."""
    return validated_settings(KubernetesSettings, values, "Kubernetes")


def k8s_name(name: str) -> str:
    """Return a DNS-1123 label for a job name (lower case, `[a-z0-9-]`, at most 63 characters)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return cleaned[:63].rstrip("-") or "job"


def resource_quantities(resources: Resources) -> dict[str, str]:
    """Return a job's requests (= limits): cpu, memory in Mi, `nvidia.com/gpu` if asked."""
    quantities = {"cpu": str(resources.cpu), "memory": f"{round(resources.memory_gb * 1024)}Mi"}
    if resources.gpu > 0:
        quantities["nvidia.com/gpu"] = str(resources.gpu)
    return quantities


def job_manifest(spec: JobSpec, settings: KubernetesSettings) -> dict[str, Any]:
    """Return the `batch/v1` Job of one run, as the API takes it (a pure function of its inputs)."""
    # long: one literal Job manifest, shaped like the Kubernetes API's schema
    if spec.image is None:
        raise BackendError(f"job {spec.name}: the kubernetes backend needs the step's image")
    volumes: dict[str, dict[str, Any]] = {}
    mounts = []
    for mount in spec.mounts:
        volume_name, sub_path = _volume_for(mount.host_path, settings, volumes)
        mounts.append(
            {
                "name": volume_name,
                "mountPath": mount.container_path,
                "subPath": sub_path,
                "readOnly": mount.read_only,
            }
        )
    name = k8s_name(spec.name)
    labels = {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/name": "ccat-run"}
    quantities = resource_quantities(spec.resources)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "command": list(spec.argv),
        "env": [{"name": k, "value": v} for k, v in sorted(spec.env.items())],
        "workingDir": str(CONTAINER_ROOT),
        "resources": {"requests": quantities, "limits": dict(quantities)},
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": n, **source} for n, source in volumes.items()],
    }
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in settings.image_pull_secrets]
    if settings.node_selector:
        pod_spec["nodeSelector"] = dict(settings.node_selector)
    priority_class = by_threshold(settings.priority_classes, spec.priority)
    if priority_class:
        pod_spec["priorityClassName"] = priority_class
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": {NAME_ANNOTATION: spec.name, LOG_ANNOTATION: str(spec.log_path)},
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, round(spec.resources.time_hours * 3600)),
            "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def _volume_for(
    host_path: Path, settings: KubernetesSettings, volumes: dict[str, dict[str, Any]]
) -> tuple[str, str]:
    """Return the volume (added to `volumes`) and sub-path where the cluster sees `host_path`."""
    best: Path | None = None
    for directory in settings.volumes:
        root = Path(directory)
        if host_path.is_relative_to(root) and (best is None or len(root.parts) > len(best.parts)):
            best = root
    if best is None:
        known = ", ".join(sorted(settings.volumes)) or "none"
        raise BackendError(
            f"{host_path} is on no volume of the location's k8s_volumes (known: {known}); "
            "map the location's path to the volume that holds it in the cluster"
        )
    index = list(settings.volumes).index(str(best))
    volume_name = f"data-{index}"
    volumes[volume_name] = settings.volumes[str(best)]
    return volume_name, str(host_path.relative_to(best))
