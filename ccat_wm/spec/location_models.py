"""Spec models of data locations: where data lives, and how a processing one runs jobs.

A PROCESSING location names its backend (local, slurm, kubernetes) and runtime, with
the backend's settings; those of a kubernetes location are checked as its backend
reads them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from ccat_ops_db.models import Backend, LocationType, Runtime, StorageType
from ccat_wm.paths import normalized_location_path
from ccat_wm.spec.fields import Identifier, StrictSpec
from infra.backends import BackendError, kubernetes_manifest


class LocationSettingsSpec(StrictSpec):
    """Backend settings of a processing location; unset ones fall back to the environment."""

    slurm_partition: str | None = None
    slurm_account: str | None = None
    slurm_extra_args: list[str] = Field(default_factory=list)
    """More sbatch options, each `--name=value` (e.g. `--qos=high`)."""
    slurm_poll_interval_s: float | None = Field(default=None, gt=0, le=3600)
    """Seconds between two squeue/sacct refreshes (default 5)."""
    slurm_array_window_s: float | None = Field(default=None, ge=0, le=60)
    """How long a submission waits for others to join its job array (default 0.25)."""
    slurm_max_array_size: int | None = Field(default=None, ge=1, le=4_000_000)
    """Largest job array (default 1000; at most the cluster's MaxArraySize)."""
    trigger_interval_s: int | None = Field(default=None, ge=10, le=86_400)
    """Seconds between two trigger ticks of the location's CONTINUOUS pipelines (default 60)."""
    staging_timeout_s: float | None = Field(default=None, gt=0, le=7 * 86_400)
    """How long a run waits for an external staging job (default 3600)."""
    k8s_namespace: str | None = None
    k8s_volumes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Processing-host directory -> the Kubernetes volume source holding the same files, e.g.
    `{/data/pipelines: {persistentVolumeClaim: {claimName: pipelines}}}`."""
    k8s_service_account: str | None = None
    k8s_image_pull_secrets: list[str] = Field(default_factory=list)
    k8s_node_selector: dict[str, str] = Field(default_factory=dict)
    k8s_ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=2**31 - 1)
    """How long the cluster keeps a finished Job (default 7 days)."""
    k8s_poll_interval_s: float | None = Field(default=None, gt=0, le=3600)
    k8s_api_url: str | None = None
    """API URL used without credentials (e.g. `kubectl proxy`); unset: kubeconfig."""
    k8s_context: str | None = None
    k8s_flow_image: str | None = None
    """Image of the flow pods of the location's work pool (holds ccat-wm and its flows)."""
    k8s_flow_secret: str | None = None
    """Secret whose keys become the flow pods' environment (CCAT_OPS_DB_URL, PREFECT_API_KEY)."""
    sif_cache_dir: str | None = None
    max_cpu: int | None = Field(default=None, ge=1, le=4096)
    """Most CPUs one job may ask for here (a larger request fails at once); SLURM: also
    read from the partition, the smaller limit wins."""
    max_memory_gb: float | None = Field(default=None, gt=0, le=65536)
    """Most memory (GiB) one job may ask for here (see max_cpu)."""
    max_time_hours: float | None = Field(default=None, gt=0, le=8784)
    """Longest time limit (hours) one job may ask for here (see max_cpu)."""
    max_gpu: int | None = Field(default=None, ge=0, le=64)
    """Most GPUs one job may ask for here (see max_cpu)."""
    pending_grace_s: float | None = Field(default=None, ge=0, le=7 * 86_400)
    """How long a job may wait for a reason that cannot clear by itself (a partition
    limit, down or drained nodes, an invalid account or QOS) before it is cancelled and
    its run failed (default 600)."""
    slurm_priority: Literal["nice", "qos", "none"] | None = None
    """How a pipeline's priority reaches SLURM: `nice` (default: `--nice=<base - priority>`,
    never below 0), `qos` (`--qos` from slurm_qos_by_priority) or `none`."""
    slurm_nice_base: int | None = Field(default=None, ge=0, le=2_147_483_645)
    """The nice value of a priority-0 pipeline (default 100)."""
    slurm_qos_by_priority: dict[int, str] = Field(default_factory=dict)
    """Lowest pipeline priority -> QOS, e.g. `{0: normal, 10: high}`: a pipeline gets the
    QOS of the highest threshold at or below its priority."""
    k8s_priority_classes: dict[int, str] = Field(default_factory=dict)
    """Lowest pipeline priority -> PriorityClass name of its pods (as slurm_qos_by_priority)."""
    failed_run_retention_days: float | None = Field(default=None, ge=0, le=36_500)
    """`ccat-wm gc` removes a failed or cancelled run's directory (all but its registered
    log products) this many days after it ended (default 14, at most 100 years)."""
    podman_executable: str | None = None
    """The podman program (default `podman` on PATH)."""
    podman_oci_runtime: str | None = None
    """`podman --runtime` (default runc; `""`: podman's own default)."""
    podman_cgroup_manager: Literal["cgroupfs", "systemd", ""] | None = None
    """`podman --cgroup-manager` (default cgroupfs; `""`: podman's own default)."""
    podman_ulimits: dict[Annotated[str, Field(pattern=r"^[a-z]+$")], str] | None = None
    """`--ulimit name=soft:hard` per limit (default nofile=1024:1024, nproc=4096:4096;
    `{}`: none)."""
    podman_pull: Literal["missing", "never", "always", "newer"] | None = None
    """When podman pulls the image (default missing: by digest, unless it is there)."""
    podman_gpu_device: str | None = None
    """The CDI device of a GPU step (default nvidia.com/gpu=all)."""
    podman_extra_args: list[str] = Field(default_factory=list)
    """More `podman run` options, each `--name=value`."""

    @model_validator(mode="after")
    def _qos_needs_a_map(self) -> LocationSettingsSpec:
        if self.slurm_priority == "qos" and not self.slurm_qos_by_priority:
            raise ValueError(
                "slurm_priority is qos but slurm_qos_by_priority is empty; expected e.g. "
                "{0: normal, 10: high}"
            )
        return self

    @field_validator("podman_extra_args")
    @classmethod
    def _options_only(cls, value: list[str]) -> list[str]:
        for arg in value:
            if not arg.startswith("--") or "=" not in arg:
                raise ValueError(
                    f"extra option {arg!r} is not of the form --name=value; an option and its "
                    "value are one argument, so nothing else can be slipped into the command"
                )
        return value


class LocationSpec(StrictSpec):
    """A DataLocation; a PROCESSING one names its backend and runtime."""

    name: Identifier
    site: Identifier
    location_type: LocationType
    storage_type: StorageType = StorageType.DISK
    path: Annotated[str, AfterValidator(normalized_location_path)] = Field(min_length=1)
    """Absolute; stored normalized (`/data/x/../y` is `/data/y`)."""
    backend: Backend | None = None
    runtime: Runtime | None = None
    settings: LocationSettingsSpec = Field(default_factory=LocationSettingsSpec)

    @model_validator(mode="after")
    def _backend_matches_type(self) -> LocationSpec:
        if self.location_type is LocationType.PROCESSING and self.backend is None:
            raise ValueError(
                f"processing location {self.name!r} has no backend; "
                f"expected backend: one of {', '.join(b.value for b in Backend)}"
            )
        if self.location_type is not LocationType.PROCESSING and (
            self.backend is not None or self.runtime is not None
        ):
            raise ValueError(
                f"location {self.name!r} is {self.location_type.value}; "
                "only PROCESSING locations take a backend or runtime"
            )
        if self.backend is Backend.KUBERNETES:
            if self.runtime in (Runtime.HOST, Runtime.PODMAN):
                raise ValueError(
                    f"location {self.name!r}: a kubernetes location runs each step's image in "
                    "its pods; expected runtime apptainer (the image by digest) or none, not "
                    f"{self.runtime.value}"
                )
            if not self.settings.k8s_volumes:
                raise ValueError(
                    f"location {self.name!r}: a kubernetes location needs settings.k8s_volumes, "
                    f"mapping its path {self.path!r} to the volume that holds it in the cluster"
                )
            try:
                kubernetes_manifest.settings_from(self.settings.model_dump(exclude_none=True))
            except BackendError as exc:
                raise ValueError(f"location {self.name!r}: {exc}") from None
        return self

    @property
    def effective_runtime(self) -> Runtime | None:
        """The runtime, defaulting to `host` for local and `apptainer` for cluster backends."""
        if self.runtime is not None or self.backend is None:
            return self.runtime
        return Runtime.HOST if self.backend is Backend.LOCAL else Runtime.APPTAINER
