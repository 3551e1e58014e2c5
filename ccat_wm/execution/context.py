"""Everything one run's execution needs, loaded from the ops DB as plain data.

Tasks pass run ids; the execution functions load a `RunContext` in one short read and
work from it, so no ORM object or session crosses a task boundary.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import BindParameter, Select, bindparam, exists, func, select
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import aliased

from ccat_ops_db import models as m
from ccat_wm.db import Db, connection_of
from ccat_wm.errors import CcatWmError, ConfigurationError
from ccat_wm.execution.layout import RunLayout
from ccat_wm.quality.gate import QaRule

EnumT = TypeVar("EnumT", bound=enum.Enum)


@dataclass(frozen=True, slots=True)
class RawInput:
    """A raw data package a run consumes."""

    package_id: int
    name: str
    checksum: str
    size: int
    metadata: dict[str, Any]
    location_copy: Path | None = None
    """Its recorded copy at the run's processing location, if there is one."""
    disk_copies: tuple[Path, ...] = ()
    """Its copies on disk at other locations (where staging takes it from), oldest first."""


@dataclass(frozen=True, slots=True)
class ProductInput:
    """An upstream product a run consumes."""

    product_id: int
    path: Path
    checksum: str
    data_product_type: str
    step: str
    run_id: int
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LocationInfo:
    """The processing location a pipeline runs at."""

    id: int
    name: str
    backend: m.Backend
    runtime: m.Runtime
    path: Path
    settings: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RunContext:
    """One run with its step, config, software version, location and inputs."""

    run_id: int
    status: m.RunStatus
    retry_count: int
    max_retries: int
    hpc_job_id: str | None
    exit_code: int | None
    """The job's exit code once it finished (set with COLLECTING_RESULTS)."""
    pipeline: str
    step: str
    step_id: int
    sub_group_key: str
    is_final: bool
    location: LocationInfo
    software: str
    repository: str
    version_tag: str
    digest: str | None
    parameters: dict[str, Any]
    environment: dict[str, str]
    command_template: list[str]
    resources: dict[str, Any]
    raw_inputs: tuple[RawInput, ...]
    product_inputs: tuple[ProductInput, ...]
    config_name: str = ""
    secret_env: tuple[str, ...] = ()
    """Names the config lists as secrets (`ccat_wm.execution.secrets`)."""
    snapshot_recorded: bool = False
    """The run has its snapshot: software, config and resources above are read from it."""
    execution_command: str | None = None
    """The command recorded when the run was first submitted (never changes after)."""
    image_kind: m.ImageKind = m.ImageKind.OCI
    """What the version's image is (never changes once a run used the version)."""
    sif_path: str | None = None
    priority: int = 0
    """The pipeline's priority (higher first), passed to the scheduler."""
    retry_memory_factor: float = 2.0
    retry_time_factor: float = 2.0
    requested_resources: dict[str, Any] | None = None
    """What the latest submitted attempt asked for (None before the first)."""
    failure_kind: m.FailureKind | None = None
    """How the latest attempt failed, if it did."""
    qa_gate: tuple[QaRule, ...] = ()
    """The step's quality gate now: the rules its QA metrics must pass when it completes."""

    @property
    def layout(self) -> RunLayout:
        """The run's host directories, under the processing location's path."""
        return RunLayout.for_run(
            self.location.path, self.pipeline, self.sub_group_key, self.run_id, self.step,
            is_final=self.is_final,
        )  # fmt: skip


def _required(value: EnumT | None, what: str, location: str) -> EnumT:
    """Return a processing location's backend or runtime; missing is a configuration error."""
    if value is None:
        raise ConfigurationError(
            f"processing location {location!r} has no {what}; set it in its spec and apply"
        )
    return value


class RunNotFoundError(CcatWmError):
    """No run has the given id."""


def load_run_context(session: Db, run_id: int) -> RunContext:
    """Load run `run_id` and everything its execution needs (three queries, columns only)."""
    # long: one record filled field by field from one row
    row = connection_of(session).execute(_context_query(), {"run_id": run_id}).first()
    if row is None:
        raise RunNotFoundError(f"no run with id {run_id}; see `ccat-wm status` for run ids")
    live_env = {str(k): str(v) for k, v in (row.environment_variables or {}).items()}
    environment = live_env
    if row.s_environment is not None:  # the run's own copy; secrets from the current config
        environment = {str(k): str(v) for k, v in row.s_environment.items()}
        environment |= {k: live_env[k] for k in row.s_withheld or () if k in live_env}
    return RunContext(
        run_id=row.run_id,
        status=m.RunStatus(row.status),
        retry_count=row.retry_count,
        max_retries=row.max_retries,
        hpc_job_id=row.hpc_job_id,
        exit_code=row.exit_code,
        pipeline=row.pipeline,
        step=row.step,
        step_id=row.step_id,
        sub_group_key=row.sub_group_key,
        is_final=not row.has_downstream,
        location=LocationInfo(
            row.location_id,
            row.location,
            _required(row.backend, "backend", row.location),
            _required(row.runtime, "runtime", row.location),
            Path(row.location_path),
            dict(row.location_settings or {}),
        ),
        # A snapshot's value where the run has one (a backfilled snapshot may lack some).
        software=_recorded(row.s_software, row.software),
        repository=_recorded(row.s_repository, row.ghcr_url),
        version_tag=_recorded(row.s_tag, row.tag),
        digest=row.s_digest if row.s_origin is not None else row.digest,
        parameters=dict(_recorded(row.s_parameters, row.config_parameters) or {}),
        environment=environment,
        command_template=[str(a) for a in _recorded(row.s_template, row.command_template) or []],
        resources=dict(_recorded(row.s_resources, row.resource_requirements) or {}),
        raw_inputs=() if row.has_upstream else _raw_inputs(session, run_id, row.location_id),
        product_inputs=_product_inputs(session, run_id) if row.has_upstream else (),
        config_name=_recorded(row.s_config, row.config_name),
        secret_env=tuple(row.secret_env or ()),
        snapshot_recorded=row.s_origin is not None,
        execution_command=row.execution_command,
        image_kind=row.image_kind,
        sif_path=row.sif_path,
        priority=row.priority,
        retry_memory_factor=row.retry_memory_factor,
        retry_time_factor=row.retry_time_factor,
        requested_resources=row.requested_resources,
        failure_kind=row.failure_kind,
        qa_gate=tuple(QaRule.model_validate(rule) for rule in row.qa_gate or ()),
    )


T = TypeVar("T")


def _recorded(snapshot: T | None, live: T) -> T:
    """Return the snapshot's value when there is one, else the current row's."""
    return live if snapshot is None else snapshot


@lru_cache(maxsize=1)
def _context_query() -> Select[*tuple[Any, ...]]:
    """Select the run with its step, config, version, software, pipeline and location."""
    # long: one SELECT of a run's whole context, a column per line
    run, step, config = m.ExecutedReductionStep, m.ReductionStep, m.ReductionStepConfig
    version, software = m.ReductionSoftwareVersion, m.ReductionSoftware
    pipeline, location, snap = m.Pipeline, m.DataLocation, m.RunSnapshot
    downstream = aliased(m.reduction_step_dependency)
    upstream = aliased(m.reduction_step_dependency)
    return (
        select(
            run.id.label("run_id"),
            run.status,
            run.retry_count,
            run.hpc_job_id,
            run.exit_code,
            run.execution_command,
            run.sub_group_key,
            run.requested_resources,
            run.failure_kind,
            step.max_retries,
            step.retry_memory_factor,
            step.retry_time_factor,
            step.qa_gate,
            pipeline.priority,
            step.name.label("step"),
            step.id.label("step_id"),
            pipeline.name.label("pipeline"),
            exists().where(downstream.c.depends_on_step_id == step.id).label("has_downstream"),
            exists().where(upstream.c.reduction_step_id == step.id).label("has_upstream"),
            location.id.label("location_id"),
            location.name.label("location"),
            location.backend,
            location.runtime,
            location.path.label("location_path"),
            location.settings.label("location_settings"),
            software.name.label("software"),
            software.ghcr_url,
            version.tag,
            version.digest,
            version.image_kind,
            version.sif_path,
            config.config_parameters,
            config.environment_variables,
            config.secret_env,
            config.command_template,
            config.resource_requirements,
            config.name.label("config_name"),
            snap.origin.label("s_origin"),
            snap.software.label("s_software"),
            snap.image_repository.label("s_repository"),
            snap.software_tag.label("s_tag"),
            snap.image_digest.label("s_digest"),
            snap.parameters.label("s_parameters"),
            snap.environment.label("s_environment"),
            snap.withheld_environment.label("s_withheld"),
            snap.command_template.label("s_template"),
            snap.resources.label("s_resources"),
            snap.config_name.label("s_config"),
        )
        .join(run.reduction_step)
        .join(config, config.id == step.reduction_step_config_id)
        .join(version, version.id == run.reduction_software_version_id)
        .join(software, software.id == version.reduction_software_id)
        .join(step.pipeline)
        .join(pipeline.processing_location)
        .outerjoin(snap, snap.executed_reduction_step_id == run.id)
        .where(run.id == bindparam("run_id"))
    )


def _raw_inputs(session: Db, run_id: int, location_id: int) -> tuple[RawInput, ...]:
    params = {"run_id": run_id, "location_id": location_id}
    rows = connection_of(session).execute(_raw_inputs_query(), params)
    return tuple(
        RawInput(
            pid,
            name,
            checksum,
            size,
            metadata,
            Path(path) if path else None,
            tuple(Path(p) for p in others or ()),
        )
        for pid, name, checksum, size, metadata, path, others in rows
    )


@lru_cache(maxsize=1)
def _raw_inputs_query() -> Select[*tuple[Any, ...]]:
    """Select a run's raw data packages, their copy at the location and other disk copies."""
    inp, pkg, copy = m.ExecutedReductionStepInput, m.RawDataPackage, m.RawDataPackageCopy
    other, place = aliased(m.RawDataPackageCopy), m.DataLocation
    location_id: BindParameter[int] = bindparam("location_id")
    disk_copies = (
        select(func.array_agg(aggregate_order_by(other.path, other.id)))
        .join(place, place.id == other.data_location_id)
        .where(
            other.raw_data_package_id == pkg.id,
            place.storage_type == m.StorageType.DISK,
            place.id != location_id,
        )
        .scalar_subquery()
    )
    return (
        select(pkg.id, pkg.name, inp.checksum, pkg.size, pkg.metadata_, copy.path, disk_copies)
        .join(inp, inp.raw_data_package_id == pkg.id)
        .outerjoin(
            copy,
            (copy.raw_data_package_id == pkg.id) & (copy.data_location_id == location_id),
        )
        .where(inp.executed_reduction_step_id == bindparam("run_id"))
        .order_by(pkg.name)
    )


def _product_inputs(session: Db, run_id: int) -> tuple[ProductInput, ...]:
    rows = connection_of(session).execute(_product_inputs_query(), {"run_id": run_id})
    return tuple(
        ProductInput(
            pid, Path(path), checksum, m.DataProductType(kind).value, step, source_run, metadata
        )
        for pid, path, checksum, kind, step, source_run, metadata in rows
    )


@lru_cache(maxsize=1)
def _product_inputs_query() -> Select[*tuple[Any, ...]]:
    """Select a run's upstream products with the step and run that made them."""
    inp, product = m.ExecutedReductionStepInput, m.DataProduct
    return (
        select(
            product.id,
            product.file_path,
            inp.checksum,
            product.data_product_type,
            m.ReductionStep.name,
            product.executed_reduction_step_id,
            product.metadata_,
        )
        .join(inp, inp.data_product_id == product.id)
        .join(
            m.ExecutedReductionStep,
            m.ExecutedReductionStep.id == product.executed_reduction_step_id,
        )
        .join(m.ExecutedReductionStep.reduction_step)
        .where(inp.executed_reduction_step_id == bindparam("run_id"))
        .order_by(product.file_path)
    )
