"""Which quality decision is in force on a run, and the runs it keeps out of downstream steps.

Every decision is kept (`qa_decision`); the one in force is a person's newest, unless
that is an undo, else the newest of the gate's and the derived ones (a changed gate
adds a newer gate decision, under a person's decision that stays in force). `plan`
lists the rejected sub-groups with it; `lineage` names the scans a downstream run left
out with the decision in force when that run was created.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import DateTime, SQLColumnExpression, and_, case, exists, func, literal, select
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.selectable import ScalarSelect

from ccat_ops_db import models as m

RUN = m.ExecutedReductionStep
T = TypeVar("T")
PERSON = m.QaSource.PERSON


@dataclass(frozen=True, slots=True)
class Rejection:
    """A sub-group whose run a quality decision in force rejects."""

    pipeline: str
    step: str
    sub_group_key: str
    run_id: int
    decision_id: int | None
    source: str | None
    """`gate` or `person` (None: no decision recorded, which the writers never leave)."""
    message: str
    decided_by: str | None
    decided_at: dt.datetime | None

    @property
    def who(self) -> str:
        """Who took the decision: a user name, the step's QA gate, or its inputs'."""
        return who_decided(self.source, self.decided_by)


GATE_WHO, INPUTS_WHO = "the step's QA gate", "its inputs' decisions"


def who_decided(source: str | None, decided_by: str | None) -> str:
    """Say who took a decision: the person, the step's QA gate, or its inputs' decisions."""
    if decided_by:
        return decided_by
    return INPUTS_WHO if source == m.QaSource.INPUTS.value else GATE_WHO


def _in_force(
    run_id: SQLColumnExpression[int],
    at: SQLColumnExpression[dt.datetime] | None,
    column: Callable[[type[m.QaDecision]], SQLColumnExpression[T]],
) -> ScalarSelect[T]:
    """Select `column` of the decision in force on run `run_id` (as of `at`, if given)."""
    d, later = aliased(m.QaDecision), aliased(m.QaDecision)
    newer_person = exists().where(
        later.executed_reduction_step_id == d.executed_reduction_step_id,
        later.source == PERSON,
        later.id > d.id,
        *([later.created_at <= at] if at is not None else []),
    )
    person_in_force = and_(d.source == PERSON, ~d.undo, ~newer_person)
    rank = case((person_in_force, 0), (d.source != PERSON, 1), else_=2)
    query = select(column(d)).where(d.executed_reduction_step_id == run_id)
    if at is not None:
        query = query.where(d.created_at <= at)
    return query.order_by(rank, d.id.desc()).limit(1).scalar_subquery()


def decision_in_force(
    run_id: SQLColumnExpression[int], at: SQLColumnExpression[dt.datetime] | None = None
) -> ScalarSelect[int]:
    """Select the id of the decision in force on run `run_id` (as of `at`, if given).

    Correlated to the query it is placed in directly (not to one further out).
    """
    return _in_force(run_id, at, lambda d: d.id)


def source_in_force(run_id: SQLColumnExpression[int]) -> ScalarSelect[m.QaSource]:
    """Select who took the decision in force on a run (None: no decision)."""
    return _in_force(run_id, None, lambda d: d.source)


def decision_line(run_id: SQLColumnExpression[int]) -> ScalarSelect[str]:
    """Select the decision in force on a run as one line: `message (who)`."""

    def line(d: type[m.QaDecision]) -> SQLColumnExpression[str]:
        system = case((d.source == m.QaSource.INPUTS, literal(INPUTS_WHO)), else_=literal(GATE_WHO))
        who = func.coalesce(d.decided_by, system)
        return d.message + literal(" (") + who + literal(")")

    return _in_force(run_id, None, line)


def rejected_sub_groups(session: Session, pipeline_ids: Sequence[int]) -> list[Rejection]:
    """Return the sub-groups whose current run is rejected, with the decision in force."""
    if not pipeline_ids:
        return []
    d = m.QaDecision
    rows = session.execute(
        select(
            m.Pipeline.name, m.ReductionStep.name, RUN.sub_group_key, RUN.id,
            d.id, d.source, d.message, d.decided_by, d.created_at,
        )
        .join(RUN.reduction_step)
        .join(m.ReductionStep.pipeline)
        .outerjoin(d, d.id == decision_in_force(RUN.id))
        .where(RUN.is_current, RUN.qa_rejected, m.Pipeline.id.in_(pipeline_ids))
        .order_by(m.Pipeline.name, m.ReductionStep.step_order, RUN.sub_group_key)
    ).all()  # fmt: skip
    return [_rejection(row) for row in rows]


def left_out(session: Session, run_ids: Sequence[int]) -> dict[int, list[Rejection]]:
    """Return, per downstream run, the rejected upstream runs its sub-group left out.

    Each with the decision in force when the downstream run was created.
    """
    if not run_ids:
        return {}
    excl, up, down, d = m.QaExclusion, aliased(RUN), aliased(RUN), m.QaDecision
    rows = session.execute(
        select(
            excl.executed_reduction_step_id, m.Pipeline.name, m.ReductionStep.name,
            up.sub_group_key, up.id, d.id, d.source, d.message, d.decided_by, d.created_at,
        )
        .join(down, down.id == excl.executed_reduction_step_id)
        .join(up, up.id == excl.excluded_run_id)
        .join(m.ReductionStep, m.ReductionStep.id == up.reduction_step_id)
        .join(m.Pipeline, m.Pipeline.id == m.ReductionStep.pipeline_id)
        .outerjoin(d, d.id == decision_in_force(up.id, down.created_at))
        .where(excl.executed_reduction_step_id.in_(run_ids))
        .order_by(excl.executed_reduction_step_id, m.ReductionStep.name, up.sub_group_key)
    ).all()  # fmt: skip
    out: dict[int, list[Rejection]] = {}
    for row in rows:
        out.setdefault(row[0], []).append(_rejection(row[1:]))
    return out


def _rejection(row: Sequence[Any]) -> Rejection:
    """Build a rejection from (pipeline, step, key, run, decision, source, message, who, when)."""
    pipeline, step, key, run_id, decision_id, source, message, decided_by, decided_at = row
    return Rejection(
        pipeline, step, key, run_id, decision_id, source.value if source else None,
        message or "rejected", decided_by, decided_at,
    )  # fmt: skip


def decisions_in_force(
    session: Session, run_ids: Sequence[int], at: dt.datetime
) -> dict[int, m.QaDecision]:
    """Return the decision in force on each run as of `at` (a run without one is left out)."""
    if not run_ids:
        return {}
    d = m.QaDecision
    when = literal(at, DateTime(timezone=True))
    found = session.scalars(
        select(d).where(
            d.executed_reduction_step_id.in_(run_ids),
            d.id == decision_in_force(d.executed_reduction_step_id, when),
        )
    ).all()
    return {decision.executed_reduction_step_id: decision for decision in found}
