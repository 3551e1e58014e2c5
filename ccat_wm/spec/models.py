"""Pydantic models of the pipeline spec file (docs/concepts.md section 6).

These check everything one object can check on its own; references between objects
and against the ops DB are checked in `ccat_wm.spec.validate`. Unknown keys are errors.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from ccat_ops_db.models import (
    ImageKind,
    VersionPolicy,
)
from ccat_wm.quality.gate import QaRule
from ccat_wm.selection.tables import (
    FILTER_OPERATORS,
    FILTER_TABLES,
    LIST_OPERATORS,
    coerce_value,
    column_names,
    is_json_column,
)
from ccat_wm.spec.fields import (
    JSON_PATH,
    MAX_FORMAT_WIDTH,
    CronExpr,
    DimensionName,
    EnvName,
    Identifier,
    NonNegative,
    RunName,
    StrictSpec,
    Timezone,
    check_digest,
    check_tag,
)
from ccat_wm.spec.location_models import LocationSpec


class SiteSpec(StrictSpec):
    """A site; locations may also name a site that is not declared here."""

    name: Identifier
    description: str = ""


class InstrumentSpec(StrictSpec):
    """An instrument with its modules."""

    name: Identifier
    description: str = ""
    modules: list[Identifier] = Field(default_factory=list)


class VersionSpec(StrictSpec):
    """A released version of a reduction software."""

    tag: Annotated[str, AfterValidator(check_tag)]
    digest: Annotated[str, AfterValidator(check_digest)] | None = None
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


class SoftwareSpec(StrictSpec):
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


class FilterRuleSpec(StrictSpec):
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
        if self.json_path is not None and not JSON_PATH.match(self.json_path):
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


class DataGroupingSpec(StrictSpec):
    """A named selection of raw data."""

    name: Identifier
    filter_rules: list[FilterRuleSpec] = Field(default_factory=list)
    instrument_module: str | None = Field(
        default=None, pattern=r"^[^/\s]+/[^/\s]+$", description="INSTRUMENT/MODULE"
    )


class ResourcesSpec(StrictSpec):
    """Resources one run of a step needs."""

    cpu: float = Field(default=1, ge=0, le=4096)
    memory_gb: float = Field(default=1, ge=0, le=65536)
    time_hours: float = Field(default=1, ge=0, le=8784)
    """At most a (leap) year."""
    gpu: int = Field(default=0, ge=0, le=64)


class ConfigSpec(StrictSpec):
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


class ContinuousTrigger(StrictSpec):
    """Evaluate on every trigger tick."""

    type: Literal["CONTINUOUS"]


class CronTrigger(StrictSpec):
    """Evaluate at cron ticks in a timezone."""

    type: Literal["CRON"]
    cron: CronExpr
    timezone: Timezone = "UTC"


class ManualTrigger(StrictSpec):
    """Evaluate only when a person asks."""

    type: Literal["MANUAL"]


Trigger = Annotated[ContinuousTrigger | CronTrigger | ManualTrigger, Field(discriminator="type")]


class StepSpec(StrictSpec):
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
    qa_gate: list[QaRule] = Field(default_factory=list)
    """Rules a completed run's QA metrics must pass (`ccat_wm.quality.gate`); a run that
    fails one is rejected: its products feed no downstream step."""

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


class PipelineSpec(StrictSpec):
    """A pipeline: steps over one grouping at one processing location."""

    name: RunName
    data_grouping: Identifier
    processing_location: Identifier
    trigger: Trigger = Field(default_factory=lambda: ContinuousTrigger(type="CONTINUOUS"))
    priority: int = Field(default=0, ge=-(2**31), le=2**31 - 1)
    enabled: bool = True
    steps: list[StepSpec] = Field(min_length=1)


class SpecFile(StrictSpec):
    """One YAML spec file."""

    sites: list[SiteSpec] = Field(default_factory=list)
    instruments: list[InstrumentSpec] = Field(default_factory=list)
    locations: list[LocationSpec] = Field(default_factory=list)
    software: list[SoftwareSpec] = Field(default_factory=list)
    data_groupings: list[DataGroupingSpec] = Field(default_factory=list)
    pipelines: list[PipelineSpec] = Field(default_factory=list)
