"""Everything one run's execution needs, loaded from the ops DB as plain data.

Tasks pass run ids; the execution functions load a `RunContext` in one short read and
work from it, so no ORM object or session crosses a task boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, aliased

from ccat_ops_db import models as m
from ccat_wm.errors import CcatWmError
from ccat_wm.execution.layout import RunLayout


@dataclass(frozen=True, slots=True)
class RawInput:
    """A raw data package a run consumes."""

    package_id: int
    name: str
    checksum: str
    size: int
    metadata: dict[str, Any]


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
    backend: str
    runtime: str
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

    @property
    def layout(self) -> RunLayout:
        """The run's host directories, under the processing location's path."""
        return RunLayout.for_run(
            self.location.path, self.pipeline, self.sub_group_key, self.run_id, self.step,
            is_final=self.is_final,
        )  # fmt: skip


class RunNotFoundError(CcatWmError):
    """No run has the given id."""


def load_run_context(session: Session, run_id: int) -> RunContext:
    """Load run `run_id` and everything its execution needs."""
    run, step, config, version, software, pipeline, location = _load_rows(session, run_id)
    downstream = aliased(m.reduction_step_dependency)
    has_downstream = session.scalar(
        select(exists().where(downstream.c.depends_on_step_id == step.id))
    )
    return RunContext(
        run_id=run.id,
        status=run.status,
        retry_count=run.retry_count,
        max_retries=step.max_retries,
        hpc_job_id=run.hpc_job_id,
        pipeline=pipeline.name,
        step=step.name,
        step_id=step.id,
        sub_group_key=run.sub_group_key,
        is_final=not has_downstream,
        location=LocationInfo(
            location.id,
            location.name,
            location.backend.value if location.backend else "",
            location.runtime.value if location.runtime else "",
            Path(location.path),
            dict(location.settings),
        ),
        software=software.name,
        repository=software.ghcr_url,
        version_tag=version.tag,
        digest=version.digest,
        parameters=dict(config.config_parameters),
        environment={str(k): str(v) for k, v in config.environment_variables.items()},
        command_template=[str(a) for a in config.command_template],
        resources=dict(config.resource_requirements),
        raw_inputs=_raw_inputs(session, run_id),
        product_inputs=_product_inputs(session, run_id),
    )


def _load_rows(session: Session, run_id: int) -> tuple[Any, ...]:
    row = session.execute(
        select(
            m.ExecutedReductionStep,
            m.ReductionStep,
            m.ReductionStepConfig,
            m.ReductionSoftwareVersion,
            m.ReductionSoftware,
            m.Pipeline,
            m.DataLocation,
        )
        .join(m.ReductionStep, m.ReductionStep.id == m.ExecutedReductionStep.reduction_step_id)
        .join(
            m.ReductionStepConfig,
            m.ReductionStepConfig.id == m.ReductionStep.reduction_step_config_id,
        )
        .join(
            m.ReductionSoftwareVersion,
            m.ReductionSoftwareVersion.id == m.ExecutedReductionStep.reduction_software_version_id,
        )
        .join(
            m.ReductionSoftware,
            m.ReductionSoftware.id == m.ReductionSoftwareVersion.reduction_software_id,
        )
        .join(m.Pipeline, m.Pipeline.id == m.ReductionStep.pipeline_id)
        .join(m.DataLocation, m.DataLocation.id == m.Pipeline.processing_location_id)
        .where(m.ExecutedReductionStep.id == run_id)
    ).first()
    if row is None:
        raise RunNotFoundError(f"no run with id {run_id}; see `ccat-wm status` for run ids")
    return tuple(row)


def _raw_inputs(session: Session, run_id: int) -> tuple[RawInput, ...]:
    inp, pkg = m.ExecutedReductionStepInput, m.RawDataPackage
    rows = session.execute(
        select(pkg.id, pkg.name, inp.checksum, pkg.size, pkg.metadata_)
        .join(inp, inp.raw_data_package_id == pkg.id)
        .where(inp.executed_reduction_step_id == run_id)
        .order_by(pkg.name)
    )
    return tuple(RawInput(*row) for row in rows)


def _product_inputs(session: Session, run_id: int) -> tuple[ProductInput, ...]:
    inp, product = m.ExecutedReductionStepInput, m.DataProduct
    rows = session.execute(
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
        .join(m.ReductionStep, m.ReductionStep.id == m.ExecutedReductionStep.reduction_step_id)
        .where(inp.executed_reduction_step_id == run_id)
        .order_by(product.file_path)
    )
    return tuple(
        ProductInput(pid, Path(path), checksum, kind.value, step, source_run, metadata)
        for pid, path, checksum, kind, step, source_run, metadata in rows
    )
