"""Quality decisions on completed runs: recorded, never deleted (docs/concepts.md)."""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, false
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from ccat_ops_db.models.base import Base, CreatedAt, IntPK
from ccat_ops_db.models.enums import pg_enum


class QaSource(enum.StrEnum):
    """Who decided on a run's quality."""

    GATE = "gate"
    """The step's `qa_gate` rules, held against the run's metrics when it completed."""
    PERSON = "person"
    """A person, who decides last (overrides the gate)."""
    INPUTS = "inputs"
    """Derived: every input of the run is rejected, so its products feed nothing either
    (migration 0012); taken back when an input is accepted again."""


class QaDecision(Base):
    """One decision on a completed run's quality: accepted or rejected, by what, and why.

    The run's `qa_rejected` holds the decision in force (the newest); this table keeps
    every decision, so that `status`, `lineage` and the PROV export say who or what left
    a scan out of a map, when, and with which values.
    """

    __tablename__ = "qa_decision"

    id: Mapped[IntPK]
    executed_reduction_step_id: Mapped[int] = mapped_column(
        ForeignKey("executed_reduction_step.id"), index=True
    )
    rejected: Mapped[bool]
    source: Mapped[QaSource] = mapped_column(pg_enum(QaSource, "qa_source"))
    message: Mapped[str] = mapped_column(String)
    """One line: `rejected: tsys_k = 2000 (needs tsys_k < 400)`, or a person's reason."""
    rules: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    """Each rule of the gate with the value seen and whether it passed (gate decisions)."""
    metrics: Mapped[dict[str, float]] = mapped_column(JSONB, default=dict)
    """The run's metrics when it was decided."""
    undo: Mapped[bool] = mapped_column(server_default=false())
    """A person took their earlier decision back: the gate's decides again."""
    decided_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[CreatedAt]


class QaChange(Base):
    """A downstream sub-group whose inputs a person's decision changed (reason `qa_changed`).

    Written with the decision: every sub-group of a downstream step that holds the
    decided run's sub-group. Its gap says `qa_changed` while its current run predates
    the decision.
    """

    __tablename__ = "qa_change"
    __table_args__ = (
        Index("ix_qa_change_reduction_step_id", "reduction_step_id", "sub_group_key"),
    )

    qa_decision_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("qa_decision.id"), primary_key=True
    )
    reduction_step_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("reduction_step.id", ondelete="CASCADE"), primary_key=True
    )
    sub_group_key: Mapped[str] = mapped_column(String, primary_key=True)


class QaExclusion(Base):
    """A rejected upstream run inside a downstream run's sub-group, whose products it left out.

    Written when the downstream run is created, so that `lineage` names the scans a map
    did not take and the decision in force then.
    """

    __tablename__ = "qa_exclusion"

    executed_reduction_step_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("executed_reduction_step.id", ondelete="CASCADE"), primary_key=True
    )
    excluded_run_id: Mapped[int] = mapped_column(
        BigInteger,
        ForeignKey("executed_reduction_step.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    )
