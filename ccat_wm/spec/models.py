"""Pydantic models of the pipeline spec file (docs/concepts.md section 6).

These check everything one object can check on its own; references between objects
and against the ops DB are checked in `ccat_wm.spec.validate`. Unknown keys are errors.
"""

from __future__ import annotations

import datetime as dt
import re
import string
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from ccat_ops_db.models import (
    Backend,
    ImageKind,
    LocationType,
    Runtime,
    StorageType,
    VersionPolicy,
)
from ccat_wm.paths import normalized_location_path
from ccat_wm.selection.dimensions import DIMENSIONS
from ccat_wm.selection.tables import (
    FILTER_OPERATORS,
    FILTER_TABLES,
    LIST_OPERATORS,
    coerce_value,
    column_names,
    is_json_column,
)
from ccat_wm.spec.versions import DIGEST, parse_major
from infra.backends import BackendError, kubernetes_manifest

_JSON_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_0-9][A-Za-z0-9_-]*)*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


CRON_HORIZON_YEARS = 5
"""A cron expression must fire within this many years of any moment (checked from now)."""


def _check_cron(expr: str) -> str:
    expected = "expected five fields (minute hour day month weekday) like '0 4 * * *'"
    if len(expr.split()) != 5 or not croniter.is_valid(expr):
        raise ValueError(f"invalid cron expression {expr!r}; {expected}")
    start = dt.datetime.now(dt.UTC)
    try:
        first = croniter(expr, start).get_next(dt.datetime)
    except (CroniterBadDateError, ValueError, OverflowError):
        first = None
    if first is None or first - start > dt.timedelta(days=366 * CRON_HORIZON_YEARS):
        raise ValueError(
            f"cron expression {expr!r} never fires (no tick within {CRON_HORIZON_YEARS} years); "
            f"{expected}"
        )
    return expr


def _check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown timezone {name!r}; expected an IANA name like UTC or Europe/Berlin"
        ) from None
    return name


def _check_dimension(name: str) -> str:
    if name not in DIMENSIONS:
        raise ValueError(
            f"unknown group_by dimension {name!r}; expected one of {', '.join(DIMENSIONS)}"
        )
    return name


def _check_tag(tag: str) -> str:
    parse_major(tag)
    return tag


def _check_digest(digest: str) -> str:
    if not DIGEST.match(digest):
        raise ValueError(f"invalid image digest {digest!r}; expected sha256: and 64 hex digits")
    return digest


Identifier = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\s/%&<>]+$")]
"""A name of a site, location, software, grouping, instrument: no whitespace, and none of
the characters Prefect refuses in names (`/ % & < >`: a location names a work pool and
a trigger deployment)."""
RunName = Annotated[
    str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
]
"""A pipeline's or step's name: it names a Prefect flow, a deployment entrypoint
(`flows/pipelines.py:<pipeline>`), task runs, concurrency limits and run directories."""
CronExpr = Annotated[str, AfterValidator(_check_cron)]
Timezone = Annotated[str, AfterValidator(_check_timezone)]
DimensionName = Annotated[str, AfterValidator(_check_dimension)]
NonNegative = Annotated[int, Field(ge=0, le=2**31 - 1)]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=200)]
"""An environment variable's name (POSIX: letters, digits, underscore; no `=`)."""
MAX_FORMAT_WIDTH = 1000
"""Largest width or precision in a command placeholder's format (`{x:.3f}`): a width of
20,000,000 would make each run's command line 20 MB long."""


class SiteSpec(_Strict):
    """A site; locations may also name a site that is not declared here."""

    name: Identifier
    description: str = ""


class InstrumentSpec(_Strict):
    """An instrument with its modules."""

    name: Identifier
    description: str = ""
    modules: list[Identifier] = Field(default_factory=list)


class LocationSettingsSpec(_Strict):
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


class LocationSpec(_Strict):
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


class VersionSpec(_Strict):
    """A released version of a reduction software."""

    tag: Annotated[str, AfterValidator(_check_tag)]
    digest: Annotated[str, AfterValidator(_check_digest)] | None = None
    """The OCI manifest digest (an OCI image, or a SIF pushed with ORAS), or for `sif_path`
    the SHA-256 of the file."""
    is_latest: bool = False
    image_kind: ImageKind = ImageKind.OCI
    """`oci` (default): an OCI image; `sif`: an Apptainer SIF, in the software's OCI
    repository (pushed with ORAS) or the file `sif_path`."""
    sif_path: str | None = None
    """An absolute path to the SIF file where the runs execute, instead of a registry."""

    @model_validator(mode="after")
    def _image_pinned(self) -> VersionSpec:
        if self.sif_path is not None:
            if self.image_kind is not ImageKind.SIF:
                raise ValueError(
                    f"version {self.tag!r}: sif_path {self.sif_path!r} is a SIF file; expected "
                    "image_kind: sif with it"
                )
            if not self.sif_path.startswith("/"):
                raise ValueError(
                    f"version {self.tag!r}: sif_path {self.sif_path!r} is not absolute"
                )
        if self.image_kind is ImageKind.SIF and self.digest is None:
            raise ValueError(
                f"version {self.tag!r} is a SIF image without a digest; a SIF is always "
                "pinned: its ORAS manifest digest, or the SHA-256 of its file (sif_path)"
            )
        return self


class SoftwareSpec(_Strict):
    """A reduction software and its versions; exactly one listed version is the latest."""

    name: Identifier
    ghcr_url: str = ""
    github_repo_url: str = ""
    description: str = ""
    versions: list[VersionSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _versions_consistent(self) -> SoftwareSpec:
        tags = [v.tag for v in self.versions]
        duplicates = sorted({t for t in tags if tags.count(t) > 1})
        if duplicates:
            raise ValueError(f"duplicate version tag(s) {', '.join(duplicates)}")
        latest = [v.tag for v in self.versions if v.is_latest]
        if self.versions and len(latest) != 1:
            raise ValueError(
                f"software {self.name!r} must mark exactly one version is_latest: true "
                f"(found {len(latest)}); it is the version new runs use"
            )
        return self


class FilterRuleSpec(_Strict):
    """One rule of a data grouping; all rules are ANDed."""

    table: str
    column: str
    operator: str
    value: Any
    json_path: str | None = None

    @model_validator(mode="after")
    def _known_table_column_operator(self) -> FilterRuleSpec:
        if self.table not in FILTER_TABLES:
            raise ValueError(
                f"unknown table {self.table!r}; expected one of {', '.join(FILTER_TABLES)}"
            )
        columns = column_names(self.table)
        if self.column not in columns:
            raise ValueError(
                f"unknown column {self.column!r} of table {self.table}; "
                f"expected one of {', '.join(columns)}"
            )
        if self.operator not in FILTER_OPERATORS:
            raise ValueError(
                f"unknown operator {self.operator!r}; expected one of {', '.join(FILTER_OPERATORS)}"
            )
        self._check_json_path()
        self._check_value()
        return self

    def _check_json_path(self) -> None:
        json_column = is_json_column(self.table, self.column)
        if self.json_path is not None and not json_column:
            raise ValueError(
                f"json_path given for {self.table}.{self.column}, which is not a JSON column"
            )
        if json_column and self.json_path is None:
            raise ValueError(
                f"{self.table}.{self.column} is a JSON column; expected a json_path "
                "such as observation.frequency_ghz"
            )
        if self.json_path is not None and not _JSON_PATH.match(self.json_path):
            raise ValueError(
                f"bad json_path {self.json_path!r}; expected dotted keys like "
                "observation.frequency_ghz"
            )

    def _check_value(self) -> None:
        is_list = isinstance(self.value, list)
        if self.json_path is None and self.operator != "like":
            for item in self.value if is_list else [self.value]:
                coerce_value(self.table, self.column, item)
        if self.operator in LIST_OPERATORS and not is_list:
            raise ValueError(f"operator {self.operator!r} expects a list value")
        if self.operator not in LIST_OPERATORS and (is_list or isinstance(self.value, dict)):
            raise ValueError(f"operator {self.operator!r} expects a single value, not a list")
        if self.operator == "like" and not isinstance(self.value, str):
            raise ValueError("operator 'like' expects a string pattern")


class DataGroupingSpec(_Strict):
    """A named selection of raw data."""

    name: Identifier
    filter_rules: list[FilterRuleSpec] = Field(default_factory=list)
    instrument_module: str | None = Field(
        default=None, pattern=r"^[^/\s]+/[^/\s]+$", description="INSTRUMENT/MODULE"
    )


class ResourcesSpec(_Strict):
    """Resources one run of a step needs."""

    cpu: float = Field(default=1, ge=0, le=4096)
    memory_gb: float = Field(default=1, ge=0, le=65536)
    time_hours: float = Field(default=1, ge=0, le=8784)
    """At most a (leap) year."""
    gpu: int = Field(default=0, ge=0, le=64)


class ConfigSpec(_Strict):
    """A step config: parameters, environment, command template and resources."""

    name: Identifier
    parameters: dict[str, Any] = Field(default_factory=dict)
    environment: dict[EnvName, str] = Field(default_factory=dict)
    secret_env: list[EnvName] = Field(default_factory=list)
    """Names in `environment` whose values are secrets although their names do not say so:
    no record (snapshot, execution command, provenance) holds their values."""
    command: list[str] = Field(min_length=1)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @model_validator(mode="after")
    def _placeholders_have_parameters(self) -> ConfigSpec:
        problems = [
            f"secret_env names {name!r}, which environment does not set; expected one of: "
            f"{', '.join(self.environment) or 'none'}"
            for name in self.secret_env
            if name not in self.environment
        ]
        for index, arg in enumerate(self.command):
            try:
                parsed = [
                    (f, spec) for _, f, spec, _ in string.Formatter().parse(arg) if f is not None
                ]
            except ValueError as exc:
                problems.append(f"command[{index}] {arg[:80]!r} is not a valid template: {exc}")
                continue
            fields = [f for f, _ in parsed]
            problems.extend(
                f"command[{index}] placeholder {{{field}:{(spec or '')[:30]}}} asks for a width or "
                f"precision of {width}; expected at most {MAX_FORMAT_WIDTH} (like {{{field}:.3f}})"
                for field, spec in parsed
                for width in [max((int(d) for d in re.findall(r"\d+", spec or "")), default=0)]
                if width > MAX_FORMAT_WIDTH
            )
            problems.extend(
                f"command[{index}] placeholder {{{field}}} has no parameter {field!r} in "
                f"config {self.name!r}; expected one of: {', '.join(self.parameters) or 'none'}"
                for field in fields
                if field not in self.parameters
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ContinuousTrigger(_Strict):
    """Evaluate on every trigger tick."""

    type: Literal["CONTINUOUS"]


class CronTrigger(_Strict):
    """Evaluate at cron ticks in a timezone."""

    type: Literal["CRON"]
    cron: CronExpr
    timezone: Timezone = "UTC"


class ManualTrigger(_Strict):
    """Evaluate only when a person asks."""

    type: Literal["MANUAL"]


Trigger = Annotated[ContinuousTrigger | CronTrigger | ManualTrigger, Field(discriminator="type")]


class StepSpec(_Strict):
    """A reduction step."""

    name: RunName
    software: Identifier
    depends_on: list[Identifier] = Field(default_factory=list)
    group_by: list[DimensionName] = Field(default_factory=list)
    cooldown_seconds: NonNegative = 0
    max_wait_seconds: NonNegative | None = None
    schedule: CronExpr | None = None
    max_concurrent_runs: int = Field(default=1, ge=1, le=100_000)
    max_retries: int = Field(default=0, ge=0, le=100)
    retry_memory_factor: float = Field(default=2.0, ge=1, le=64)
    """A retry after OUT_OF_MEMORY asks for this times the failed attempt's memory."""
    retry_time_factor: float = Field(default=2.0, ge=1, le=64)
    """A retry after TIMEOUT asks for this times the failed attempt's time limit."""
    version_policy: VersionPolicy = VersionPolicy.COMPATIBLE
    pinned_version: str | None = None
    config: ConfigSpec

    @model_validator(mode="after")
    def _pin_matches_policy(self) -> StepSpec:
        if self.version_policy is VersionPolicy.EXACT and self.pinned_version is None:
            raise ValueError(
                f"step {self.name!r} has version_policy exact but no pinned_version; "
                "expected pinned_version: <tag>"
            )
        if self.version_policy is VersionPolicy.COMPATIBLE and self.pinned_version is not None:
            raise ValueError(
                f"step {self.name!r} pins {self.pinned_version!r} under version_policy "
                "compatible; a pin only applies with version_policy: exact"
            )
        duplicates = sorted({d for d in self.group_by if self.group_by.count(d) > 1})
        if duplicates:
            raise ValueError(f"group_by repeats {', '.join(duplicates)}")
        return self


class PipelineSpec(_Strict):
    """A pipeline: steps over one grouping at one processing location."""

    name: RunName
    data_grouping: Identifier
    processing_location: Identifier
    trigger: Trigger = Field(default_factory=lambda: ContinuousTrigger(type="CONTINUOUS"))
    priority: int = Field(default=0, ge=-(2**31), le=2**31 - 1)
    enabled: bool = True
    steps: list[StepSpec] = Field(min_length=1)


class SpecFile(_Strict):
    """One YAML spec file."""

    sites: list[SiteSpec] = Field(default_factory=list)
    instruments: list[InstrumentSpec] = Field(default_factory=list)
    locations: list[LocationSpec] = Field(default_factory=list)
    software: list[SoftwareSpec] = Field(default_factory=list)
    data_groupings: list[DataGroupingSpec] = Field(default_factory=list)
    pipelines: list[PipelineSpec] = Field(default_factory=list)
