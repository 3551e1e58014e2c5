"""Work pools = processing locations: one Prefect work pool per PROCESSING DataLocation.

The pool has the location's name. Its type follows the backend: `process` for slurm and
local locations (the worker runs on a host that can reach the cluster or the data; jobs
go to SLURM from the flow process), `kubernetes` (prefect-kubernetes) for kubernetes
locations (each flow run is a pod in the location's namespace). The base job template is
the worker type's own default with the location's settings as defaults of its
variables: the environment names the location (`CCAT_WM_LOCATION`) and carries the
backend defaults the CCAT deployment already uses (`SLURM_PARTITION`, `SLURM_ACCOUNT`,
`K8S_NAMESPACE`, `SIF_CACHE_DIR`); a kubernetes pool also gets the namespace, the
service account, the flow image and the location's volumes, mounted at the paths they
stand for, so that the flow pod reads run directories where the ops DB says they are.
Secrets never go into a template: a kubernetes pool names a Secret (`k8s_flow_secret`)
whose keys become the flow pod's environment (CCAT_OPS_DB_URL, PREFECT_API_KEY).

`pool_spec` is pure (tested on its own); `sync_work_pools` applies specs through the
Prefect API: create a missing pool, update a pool whose template changed, refuse a pool
of the same name but another type (Prefect cannot change a pool's type). Pools of
locations that disappeared are left alone: other deployments may use them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccat_ops_db.models import Backend, Runtime
from ccat_wm.errors import ConfigurationError, DeployError
from deployments.render import TRIGGER_QUEUE, queue_name

PROCESS = "process"
KUBERNETES = "kubernetes"
POOL_TYPES = {Backend.LOCAL: PROCESS, Backend.SLURM: PROCESS, Backend.KUBERNETES: KUBERNETES}
"""Work pool type by backend."""
ENV_FROM_SETTINGS = {
    "slurm_partition": "SLURM_PARTITION",
    "slurm_account": "SLURM_ACCOUNT",
    "k8s_namespace": "K8S_NAMESPACE",
    "sif_cache_dir": "SIF_CACHE_DIR",
}
"""Location settings passed to the flow's environment, under the CCAT deployment's names."""


class WorkPoolConflictError(DeployError):
    """A work pool of the location's name exists with another type."""


@dataclass(frozen=True, slots=True)
class ProcessingLocation:
    """What a work pool needs to know about a processing location (plain data)."""

    name: str
    backend: Backend
    runtime: Runtime
    path: Path
    settings: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """A work pool as `ccat-wm deploy` wants it on the server."""

    name: str
    type: str
    base_job_template: dict[str, Any]
    description: str
    queues: tuple[tuple[str, int], ...] = ()
    """Work queues (name, Prefect priority: 1 is served first) of the pool's pipelines."""


def location_env(location: ProcessingLocation) -> dict[str, str]:
    """Return the flow environment a location's pool sets by default (never a secret)."""
    env = {"CCAT_WM_LOCATION": location.name, "PREFECT_RUNNER_HEARTBEAT_FREQUENCY": "30"}
    for key, name in ENV_FROM_SETTINGS.items():
        value = location.settings.get(key)
        if value:
            env[name] = str(value)
    return env


def default_template(pool_type: str) -> dict[str, Any]:
    """Return the worker type's own default base job template (a fresh copy)."""
    if pool_type == KUBERNETES:
        from prefect_kubernetes.worker import KubernetesWorker  # noqa: PLC0415 - heavy

        return copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    from prefect.workers.process import ProcessWorker  # noqa: PLC0415 - heavy

    return copy.deepcopy(ProcessWorker.get_default_base_job_template())


def queue_priorities(priorities: Iterable[int]) -> tuple[tuple[str, int], ...]:
    """Return the pool's queues: `trigger` first (Prefect's 1), then pipeline priorities."""
    ordered = sorted(set(priorities), reverse=True)
    ranked = [(queue_name(p), rank) for rank, p in enumerate(ordered, start=2)]
    return ((TRIGGER_QUEUE, 1), *ranked)


def pool_spec(location: ProcessingLocation, priorities: Iterable[int] = ()) -> PoolSpec:
    """Return the work pool of a processing location and the priorities of its pipelines."""
    try:
        pool_type = POOL_TYPES[location.backend]
    except KeyError:
        raise ConfigurationError(
            f"location {location.name!r} has backend {location.backend!r}; "
            f"expected one of {', '.join(sorted(POOL_TYPES))}"
        ) from None
    template = default_template(pool_type)
    properties = template["variables"]["properties"]
    properties["env"]["default"] = location_env(location)
    if pool_type == KUBERNETES:
        _kubernetes_defaults(template, location)
    return PoolSpec(
        name=location.name,
        type=pool_type,
        base_job_template=template,
        description=(
            f"CCAT processing location {location.name} "
            f"({location.backend} backend, {location.runtime} runtime, {location.path})"
        ),
        queues=queue_priorities(priorities),
    )


def _kubernetes_defaults(template: dict[str, Any], location: ProcessingLocation) -> None:
    """Namespace, service account, flow image, volumes and secret of a kubernetes pool."""
    settings = location.settings
    properties = template["variables"]["properties"]
    if settings.get("k8s_namespace"):
        properties["namespace"]["default"] = settings["k8s_namespace"]
    if settings.get("k8s_service_account"):
        properties["service_account_name"]["default"] = settings["k8s_service_account"]
    if settings.get("k8s_flow_image"):
        properties["image"]["default"] = settings["k8s_flow_image"]
    job = template["job_configuration"]["job_manifest"]["spec"]
    pod = job["template"]["spec"]
    # prefect-kubernetes's default puts these Job fields into the pod spec, where the
    # Kubernetes schema has no such fields (strict validation rejects the Job).
    for misplaced in ("completions", "parallelism"):
        if misplaced in pod:
            job[misplaced] = pod.pop(misplaced)
    container = pod["containers"][0]
    volumes = settings.get("k8s_volumes") or {}
    if volumes:
        pod["volumes"] = [
            {"name": f"data-{i}", **source} for i, source in enumerate(volumes.values())
        ]
        container["volumeMounts"] = [
            {"name": f"data-{i}", "mountPath": directory} for i, directory in enumerate(volumes)
        ]
    if settings.get("k8s_flow_secret"):
        container["envFrom"] = [{"secretRef": {"name": settings["k8s_flow_secret"]}}]
    if settings.get("k8s_image_pull_secrets"):
        pod["imagePullSecrets"] = [{"name": s} for s in settings["k8s_image_pull_secrets"]]
    if settings.get("k8s_node_selector"):
        pod["nodeSelector"] = dict(settings["k8s_node_selector"])


@dataclass(frozen=True, slots=True)
class PoolChange:
    """What the sync did to one pool: created, updated or unchanged."""

    action: str
    name: str
    type: str


def sync_work_pools(specs: list[PoolSpec], *, dry_run: bool = False) -> list[PoolChange]:
    """Create or update the work pools and their queues on the Prefect server.

    Every pool is checked before any is changed: a type conflict changes nothing.
    `dry_run`: only read, and report what would be done.
    """
    # long: every pool is checked before any is changed; the two passes share one client
    from prefect.client.orchestration import get_client  # noqa: PLC0415 - heavy
    from prefect.client.schemas.actions import (  # noqa: PLC0415
        WorkPoolCreate,
        WorkPoolUpdate,
    )
    from prefect.exceptions import ObjectNotFound  # noqa: PLC0415

    changes = []
    with get_client(sync_client=True) as client:
        current = {}
        for spec in specs:
            try:
                current[spec.name] = client.read_work_pool(spec.name)
            except ObjectNotFound:
                continue
            if current[spec.name].type != spec.type:
                raise WorkPoolConflictError(
                    f"work pool {spec.name!r} exists with type {current[spec.name].type!r}; the "
                    f"location needs type {spec.type!r} (delete it with `prefect work-pool "
                    f"delete {spec.name}` and deploy again); nothing was changed"
                )
        for spec in specs:
            pool = current.get(spec.name)
            if dry_run:
                action = _pool_action(pool, spec)
            elif pool is None:
                client.create_work_pool(
                    WorkPoolCreate(
                        name=spec.name,
                        type=spec.type,
                        base_job_template=spec.base_job_template,
                        description=spec.description,
                    )
                )
                action = "create"
            elif (
                pool.base_job_template != spec.base_job_template
                or pool.description != spec.description
            ):
                client.update_work_pool(
                    spec.name,
                    WorkPoolUpdate(
                        base_job_template=spec.base_job_template, description=spec.description
                    ),
                )
                action = "update"
            else:
                action = "unchanged"
            if not dry_run:
                _sync_queues(client, spec)
            changes.append(PoolChange(action, spec.name, spec.type))
    return changes


def _pool_action(pool: Any, spec: PoolSpec) -> str:
    """Return what `sync_work_pools` would do to `pool` (None: missing) to make it `spec`."""
    if pool is None:
        return "create"
    if pool.base_job_template != spec.base_job_template or pool.description != spec.description:
        return "update"
    return "unchanged"


def _sync_queues(client: Any, spec: PoolSpec) -> None:
    """Create the pool's priority queues and set their priorities (others left alone)."""
    existing = {q.name: q for q in client.read_work_queues(work_pool_name=spec.name)}
    for name, priority in spec.queues:
        queue = existing.get(name)
        if queue is None:
            client.create_work_queue(
                name=name,
                work_pool_name=spec.name,
                priority=priority,
                description="pipelines of this priority (ccat-wm deploy)",
            )
        elif queue.priority != priority:
            client.update_work_queue(queue.id, priority=priority)
