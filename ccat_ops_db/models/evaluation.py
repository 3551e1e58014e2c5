"""What incremental gap evaluation keeps between trigger ticks (migration 0009).

A trigger tick re-evaluates only what changed since the previous one. The database
records every change that can move a gap (`EvaluationChange`, written by triggers, so no
code path can forget it); per pipeline it keeps the selected packages aggregated per
scan (`EvaluationFine`), which upstream sub-group lies inside which downstream one
(`EvaluationMember`), the inputs' digest of every downstream sub-group
(`EvaluationDownstream`) and the gaps of the last evaluation (`EvaluationGap`). All of it
is derived data: deleting a pipeline's `EvaluationState` makes the next tick rebuild it
from the history, and `ccat-wm plan` never reads it.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, Numeric, String, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from ccat_ops_db.models.base import Base
from ccat_ops_db.models.enums import GapReason, pg_enum


class EvaluationChange(Base):
    """One change that may move a gap: a scan's packages, a run's state, or everything.

    `xid` is the writing transaction's id: a reader that remembers the oldest
    transaction still running when it read (`EvaluationState.watermark`) never misses
    a change committed later by a transaction that started earlier.
    """

    __tablename__ = "evaluation_change"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    xid: Mapped[int] = mapped_column(
        BigInteger, server_default=text("(pg_current_xact_id()::text)::bigint"), index=True
    )
    executed_obs_unit_id: Mapped[int | None] = mapped_column(BigInteger)
    """A scan whose packages were added, changed, removed or (un)invalidated."""
    reduction_step_id: Mapped[int | None] = mapped_column(BigInteger)
    sub_group_key: Mapped[str | None] = mapped_column(String)
    """With `reduction_step_id`: a (step, sub-group) whose runs changed."""
    everything: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    """A name or relation every key depends on changed (a scan renamed, say): rebuild."""


class EvaluationState(Base):
    """Per pipeline: what the kept evaluation was made from, and up to which change."""

    __tablename__ = "evaluation_state"

    pipeline_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("pipeline.id", ondelete="CASCADE"), primary_key=True
    )
    definition: Mapped[str] = mapped_column(String)
    """Fingerprint of the pipeline's steps, versions, configs, trigger and selection."""
    watermark: Mapped[int] = mapped_column(BigInteger)
    """Oldest transaction running at the last evaluation: later changes are unread."""
    evaluated_at: Mapped[dt.datetime]


class EvaluationFine(Base):
    """A pipeline's selected packages of one scan and module, with every step's key.

    `tags[i]` is `<pipeline id>:<i>:<key of step i>` (one GIN index finds the rows of
    any step's sub-group).
    """

    __tablename__ = "evaluation_fine"
    __table_args__ = (Index("ix_evaluation_fine_tags", "tags", postgresql_using="gin"),)

    pipeline_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("pipeline.id", ondelete="CASCADE"), primary_key=True
    )
    executed_obs_unit_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    instrument_module_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    """0 when no step's key depends on the module (one row per scan)."""
    inputs: Mapped[int] = mapped_column(BigInteger)
    hash_sum: Mapped[Decimal] = mapped_column(Numeric)
    last_change: Mapped[dt.datetime]
    tags: Mapped[list[str]] = mapped_column(ARRAY(String))


class EvaluationMember(Base):
    """An upstream step's sub-group inside a downstream step's sub-group, per pipeline."""

    __tablename__ = "evaluation_member"
    __table_args__ = (
        Index("ix_evaluation_member_upstream", "pipeline_id", "upstream_index", "upstream_key"),
    )

    pipeline_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("pipeline.id", ondelete="CASCADE"), primary_key=True
    )
    step_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    sub_group_key: Mapped[str] = mapped_column(String, primary_key=True)
    upstream_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    upstream_key: Mapped[str] = mapped_column(String, primary_key=True)


class EvaluationDownstream(Base):
    """A downstream step's sub-group as the last evaluation read it (its inputs' digest).

    Re-read only when a member's current run or the membership changed; a sub-group
    that is dirty only because an upstream sub-group's gap changed reuses it.
    """

    __tablename__ = "evaluation_downstream"

    pipeline_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("pipeline.id", ondelete="CASCADE"), primary_key=True
    )
    step_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    sub_group_key: Mapped[str] = mapped_column(String, primary_key=True)
    inputs: Mapped[int] = mapped_column(BigInteger)
    hash_sum: Mapped[Decimal] = mapped_column(Numeric)
    last_change: Mapped[dt.datetime | None]
    oldest_unprocessed: Mapped[dt.datetime | None]


class EvaluationGap(Base):
    """A gap (or `failed` sub-group) of the last evaluation, with what its timing needs."""

    __tablename__ = "evaluation_gap"

    pipeline_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("pipeline.id", ondelete="CASCADE"), primary_key=True
    )
    step_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    sub_group_key: Mapped[str] = mapped_column(String, primary_key=True)
    reason: Mapped[GapReason] = mapped_column(pg_enum(GapReason, "run_reason"))
    ready: Mapped[bool]
    inputs: Mapped[int] = mapped_column(BigInteger)
    input_fingerprint: Mapped[str] = mapped_column(String)
    last_change: Mapped[dt.datetime | None]
    oldest_unprocessed: Mapped[dt.datetime | None]
