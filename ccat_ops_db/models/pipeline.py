"""Pipelines: data groupings, reduction steps, their configs and dependencies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Integer,
    String,
    Table,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ccat_ops_db.models.base import Base, CreatedAt, IntPK, Name, UpdatedAt
from ccat_ops_db.models.enums import TriggerType, VersionPolicy, pg_enum

if TYPE_CHECKING:
    from ccat_ops_db.models.locations import DataLocation

RESOURCE_KEYS = ("cpu", "memory_gb", "time_hours", "gpu")


class DataGrouping(Base):
    """A selection of raw data: filter rules ANDed over the join graph (docs/concepts.md 3.1)."""

    __tablename__ = "data_grouping"

    id: Mapped[IntPK]
    name: Mapped[Name] = mapped_column(unique=True)
    filter_rules: Mapped[list[Any]] = mapped_column(JSONB, default=list)
    instrument_module_id: Mapped[int | None] = mapped_column(ForeignKey("instrument_module.id"))
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class ReductionStepConfig(Base):
    """Parameters, environment, command template and resources of a step."""

    __tablename__ = "reduction_step_config"
    __table_args__ = tuple(
        CheckConstraint(
            f"coalesce((resource_requirements->>'{key}')::numeric, 0) >= 0",
            name=f"{key}_non_negative",
        )
        for key in RESOURCE_KEYS
    )

    id: Mapped[IntPK]
    name: Mapped[Name] = mapped_column(unique=True)
    config_parameters: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    environment_variables: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    command_template: Mapped[list[Any]] = mapped_column(JSONB, default=list)
    secret_env: Mapped[list[str]] = mapped_column(ARRAY(String), default=list, server_default="{}")
    """Names in `environment_variables` whose values no record may hold (besides the
    names that look secret; see `ccat_wm.execution.secrets`)."""
    resource_requirements: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class Pipeline(Base):
    """A DAG of reduction steps sharing one grouping and one processing location."""

    __tablename__ = "pipeline"

    id: Mapped[IntPK]
    name: Mapped[Name] = mapped_column(unique=True)
    data_grouping_id: Mapped[int] = mapped_column(ForeignKey("data_grouping.id"), index=True)
    processing_location_id: Mapped[int] = mapped_column(ForeignKey("data_location.id"), index=True)
    trigger_type: Mapped[TriggerType] = mapped_column(pg_enum(TriggerType, "trigger_type"))
    trigger_config: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    enabled: Mapped[bool] = mapped_column(default=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    created_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("ccat_user.id"))
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]

    processing_location: Mapped[DataLocation] = relationship(lazy="raise", viewonly=True)
    """For joins (`.join(Pipeline.processing_location)`); never loaded by attribute access."""


reduction_step_dependency = Table(
    "reduction_step_dependency",
    Base.metadata,
    Column(
        "reduction_step_id",
        ForeignKey("reduction_step.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "depends_on_step_id",
        ForeignKey("reduction_step.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
    CheckConstraint("reduction_step_id <> depends_on_step_id", name="no_self_dependency"),
)
"""Edges of a pipeline's DAG: `reduction_step_id` consumes `depends_on_step_id`'s products."""


class ReductionStep(Base):
    """One step of a pipeline: software, config, grouping, versions, cooldown, retries."""

    __tablename__ = "reduction_step"
    __table_args__ = (
        UniqueConstraint("pipeline_id", "name"),
        CheckConstraint("cooldown_seconds >= 0", name="cooldown_non_negative"),
        CheckConstraint(
            "max_wait_seconds IS NULL OR max_wait_seconds >= 0", name="max_wait_non_negative"
        ),
        CheckConstraint("max_concurrent_runs >= 1", name="max_concurrent_runs_positive"),
        CheckConstraint("max_retries >= 0", name="max_retries_non_negative"),
        CheckConstraint("retry_memory_factor >= 1", name="retry_memory_factor_at_least_one"),
        CheckConstraint("retry_time_factor >= 1", name="retry_time_factor_at_least_one"),
        CheckConstraint("step_order >= 0", name="step_order_non_negative"),
        CheckConstraint(
            "version_policy <> 'exact' OR pinned_version_id IS NOT NULL",
            name="exact_needs_pin",
        ),
    )

    id: Mapped[IntPK]
    pipeline_id: Mapped[int] = mapped_column(
        ForeignKey("pipeline.id", ondelete="CASCADE"), index=True
    )
    pipeline: Mapped[Pipeline] = relationship(lazy="raise", viewonly=True)
    """For joins (`.join(ReductionStep.pipeline)`); never loaded by attribute access."""
    name: Mapped[Name]
    step_order: Mapped[int] = mapped_column(Integer)
    reduction_software_id: Mapped[int] = mapped_column(ForeignKey("reduction_software.id"))
    reduction_step_config_id: Mapped[int] = mapped_column(ForeignKey("reduction_step_config.id"))
    group_by: Mapped[list[Any]] = mapped_column(JSONB, default=list)
    cooldown_seconds: Mapped[int] = mapped_column(Integer, default=0)
    max_wait_seconds: Mapped[int | None] = mapped_column(Integer)
    schedule: Mapped[str | None] = mapped_column(String(200))
    max_concurrent_runs: Mapped[int] = mapped_column(Integer, default=1)
    pinned_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("reduction_software_version.id")
    )
    version_policy: Mapped[VersionPolicy] = mapped_column(
        pg_enum(VersionPolicy, "version_policy"), default=VersionPolicy.COMPATIBLE
    )
    qa_gate: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    """The step's quality gate: rules `{metric, operator, value}` a completed run's QA
    metrics must pass, else its products feed no downstream step (migration 0011)."""
    max_retries: Mapped[int] = mapped_column(Integer, default=0)
    retry_memory_factor: Mapped[float] = mapped_column(Float, default=2.0, server_default="2")
    """A retry after OUT_OF_MEMORY asks for this times the failed attempt's memory."""
    retry_time_factor: Mapped[float] = mapped_column(Float, default=2.0, server_default="2")
    """A retry after TIMEOUT asks for this times the failed attempt's time limit."""
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
