"""Runs of reduction steps (ExecutedReductionStep) and the exact inputs each consumed."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ccat_ops_db.models.base import Base, CreatedAt, IntPK, UpdatedAt
from ccat_ops_db.models.enums import (
    UNFINISHED_STATUSES,
    Backend,
    CleanupScope,
    FailureKind,
    GapReason,
    RunStatus,
    Runtime,
    SnapshotOrigin,
    pg_enum,
)

if TYPE_CHECKING:
    from ccat_ops_db.models.pipeline import ReductionStep

_UNFINISHED_SQL = ", ".join(f"'{s.value}'" for s in UNFINISHED_STATUSES)


class ExecutedReductionStep(Base):
    """One run of a reduction step for one sub-group, from PENDING to a final status."""

    __tablename__ = "executed_reduction_step"
    __table_args__ = (
        Index(
            "uq_executed_reduction_step_one_in_flight",
            "reduction_step_id",
            "sub_group_key",
            unique=True,
            postgresql_where=text(f"status IN ({_UNFINISHED_SQL})"),
        ),
        Index("ix_executed_reduction_step_step_key", "reduction_step_id", "sub_group_key"),
        Index(
            "uq_executed_reduction_step_one_current",
            "reduction_step_id",
            "sub_group_key",
            unique=True,
            postgresql_where=text("is_current"),
        ),
        Index(
            "ix_executed_reduction_step_not_completed",
            "reduction_step_id",
            "status",
            postgresql_where=text("status <> 'COMPLETED'"),
        ),
        CheckConstraint("retry_count >= 0", name="retry_count_non_negative"),
        CheckConstraint("reason::text <> 'failed'", name="reason_not_failed"),
        CheckConstraint("NOT is_current OR status = 'COMPLETED'", name="current_is_completed"),
        CheckConstraint(
            "status <> 'COMPLETED' OR product_count IS NOT NULL", name="completed_has_digest"
        ),
        CheckConstraint(
            "processing_time_s IS NULL OR processing_time_s >= 0",
            name="processing_time_non_negative",
        ),
        CheckConstraint(
            "peak_memory_gb IS NULL OR peak_memory_gb >= 0", name="peak_memory_non_negative"
        ),
        CheckConstraint("cpu_hours IS NULL OR cpu_hours >= 0", name="cpu_hours_non_negative"),
    )

    id: Mapped[IntPK]
    reduction_step_id: Mapped[int] = mapped_column(ForeignKey("reduction_step.id"))
    reduction_step: Mapped[ReductionStep] = relationship(lazy="raise", viewonly=True)
    """For joins (`.join(ExecutedReductionStep.reduction_step)`); never loaded by access."""
    reduction_software_version_id: Mapped[int] = mapped_column(
        ForeignKey("reduction_software_version.id"), index=True
    )
    status: Mapped[RunStatus] = mapped_column(
        pg_enum(RunStatus, "run_status"), default=RunStatus.PENDING, index=True
    )
    sub_group_key: Mapped[str] = mapped_column(String, default="")
    reason: Mapped[GapReason] = mapped_column(pg_enum(GapReason, "run_reason"))
    input_fingerprint: Mapped[str] = mapped_column(String(128))
    config_fingerprint: Mapped[str] = mapped_column(String(128))
    hpc_job_id: Mapped[str | None] = mapped_column(String(200))
    execution_command: Mapped[str | None] = mapped_column(String)
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    processing_time_s: Mapped[float | None] = mapped_column(Float)
    peak_memory_gb: Mapped[float | None] = mapped_column(Float)
    cpu_hours: Mapped[float | None] = mapped_column(Float)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    is_current: Mapped[bool] = mapped_column(default=False, server_default=false())
    """The sub-group's latest COMPLETED run; maintained by a trigger (migration 0002)."""
    qa_rejected: Mapped[bool] = mapped_column(server_default=false())
    """The quality decision in force rejects this run: its products are no inputs of
    downstream sub-groups; it stays COMPLETED and current for its step (migration 0011)."""
    qa_metrics: Mapped[dict[str, float] | None] = mapped_column(JSONB)
    """The metrics the run reported in its `qa/*.json` files (migration 0012): a changed
    gate re-decides the run from them, without re-running it."""
    product_count: Mapped[int | None] = mapped_column(Integer)
    """Products downstream steps consume (all but LOG), counted by the trigger at COMPLETED."""
    product_hash_sum: Mapped[Decimal | None] = mapped_column(Numeric)
    """Sum of those products' item hashes, set with `product_count`."""
    failure_reason: Mapped[str | None] = mapped_column(String)
    failure_kind: Mapped[FailureKind | None] = mapped_column(pg_enum(FailureKind, "failure_kind"))
    """The class of the latest failed attempt's `failure_reason` (kept while it is retried)."""
    requested_resources: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    """What the latest attempt asked for (cpu, memory_gb, time_hours, gpu): the step's
    resources, escalated after OUT_OF_MEMORY or TIMEOUT (migration 0008)."""
    prefect_flow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]


class ExecutedReductionStepInput(Base):
    """One input of a run: a raw data package or an upstream product, with its checksum."""

    __tablename__ = "executed_reduction_step_input"
    __table_args__ = (
        UniqueConstraint("executed_reduction_step_id", "raw_data_package_id"),
        UniqueConstraint("executed_reduction_step_id", "data_product_id"),
        CheckConstraint(
            "(raw_data_package_id IS NULL) <> (data_product_id IS NULL)",
            name="exactly_one_input",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    executed_reduction_step_id: Mapped[int] = mapped_column(
        ForeignKey("executed_reduction_step.id", ondelete="CASCADE"), index=True
    )
    raw_data_package_id: Mapped[int | None] = mapped_column(
        ForeignKey("raw_data_package.id"), index=True
    )
    data_product_id: Mapped[int | None] = mapped_column(ForeignKey("data_product.id"), index=True)
    checksum: Mapped[str] = mapped_column(String(128))


class RunSnapshot(Base):
    """What a run used, recorded when it started; the database refuses to change it.

    Lineage, retries and `ccat-wm reproduce` read the run's own copy, so editing a
    config or a software row later never rewrites the history of runs already made.
    Values of environment variables named as secrets are not stored: their names are
    in `withheld_environment` (see `ccat_wm.execution.snapshot`).
    """

    __tablename__ = "run_snapshot"

    executed_reduction_step_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("executed_reduction_step.id"), primary_key=True
    )
    origin: Mapped[SnapshotOrigin] = mapped_column(pg_enum(SnapshotOrigin, "snapshot_origin"))
    unknown: Mapped[list[str]] = mapped_column(ARRAY(String), default=list)
    """Columns a backfilled snapshot could not recover (NULL for it); empty when recorded."""
    recorded_at: Mapped[dt.datetime]
    location: Mapped[str] = mapped_column(String(200))
    backend: Mapped[Backend | None] = mapped_column(pg_enum(Backend, "backend_type"))
    runtime: Mapped[Runtime | None] = mapped_column(pg_enum(Runtime, "runtime_type"))
    software: Mapped[str] = mapped_column(String(200))
    software_tag: Mapped[str] = mapped_column(String(100))
    image_repository: Mapped[str | None] = mapped_column(String)
    image_digest: Mapped[str | None] = mapped_column(String(100))
    config_name: Mapped[str] = mapped_column(String(200))
    parameters: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    environment: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    withheld_environment: Mapped[list[str]] = mapped_column(ARRAY(String), default=list)
    command_template: Mapped[list[Any] | None] = mapped_column(JSONB)
    resources: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class RunStatusChange(Base):
    """One status a run entered, and when; written by a trigger (migration 0003)."""

    __tablename__ = "run_status_change"

    id: Mapped[IntPK]
    executed_reduction_step_id: Mapped[int] = mapped_column(
        ForeignKey("executed_reduction_step.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[RunStatus] = mapped_column(pg_enum(RunStatus, "run_status"))
    retry_count: Mapped[int] = mapped_column(Integer)
    changed_at: Mapped[dt.datetime]


class RunAttempt(Base):
    """One attempt of a run: what it asked for, which job ran it and how it ended.

    Written by a trigger on the run's row (migration 0008) when an attempt is submitted
    and when it ends, so no code path can skip it; the run's own row holds only its
    latest attempt. `ccat-wm resources` reads requested against used, and the CPU-hours
    of failed attempts (badput), from here.
    """

    __tablename__ = "run_attempt"
    __table_args__ = (UniqueConstraint("executed_reduction_step_id", "attempt"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    executed_reduction_step_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("executed_reduction_step.id", ondelete="CASCADE")
    )
    attempt: Mapped[int] = mapped_column(Integer)
    """0 = the first (the run's `retry_count` during it)."""
    requested_resources: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    hpc_job_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[RunStatus | None] = mapped_column(pg_enum(RunStatus, "run_status"))
    """COMPLETED, FAILED or CANCELLED once the attempt ended; NULL while it runs."""
    failure_kind: Mapped[FailureKind | None] = mapped_column(pg_enum(FailureKind, "failure_kind"))
    failure_reason: Mapped[str | None] = mapped_column(String)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    processing_time_s: Mapped[float | None] = mapped_column(Float)
    peak_memory_gb: Mapped[float | None] = mapped_column(Float)
    cpu_hours: Mapped[float | None] = mapped_column(Float)
    submitted_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]


class RunCleanup(Base):
    """What `ccat-wm gc` removed of one finished run's directory, and when (one row per run).

    Registered products are never removed: a COMPLETED run keeps its products, manifest
    and logs; a failed or cancelled one its log products.
    """

    __tablename__ = "run_cleanup"

    executed_reduction_step_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("executed_reduction_step.id", ondelete="CASCADE"), primary_key=True
    )
    scope: Mapped[CleanupScope] = mapped_column(pg_enum(CleanupScope, "cleanup_scope"))
    removed_at: Mapped[dt.datetime]
    files_removed: Mapped[int] = mapped_column(Integer)
    bytes_freed: Mapped[int] = mapped_column(BigInteger)
    """Bytes whose last link was removed (a hard link to a staged copy frees nothing)."""
