"""A run whose every input is rejected is rejected too (derived), so nothing of it flows on.

When the decision in force on a run flips, the downstream runs made from its sub-group
take other inputs. One whose sub-groups of origin have no accepted current run left
keeps its run (there is nothing to re-make it from), but its products must not carry
the rejected data further: the run gets a derived decision (source `inputs`) and is
rejected. When an input is accepted again, a derived rejection is taken back the same
way. A person's decision in force on the run stays in force. The walk goes on from every
run it flips, so a rejected scan reaches no map through any chain of steps (calibrate,
baseline, grid).

The walk follows the inputs the runs recorded (indexed lookups, no pipeline snapshot):
the current runs that consumed products of a flipped run's sub-group or left one of its
runs out, and for each the sub-groups whose products it consumed. A sub-group that
gained members since its run was made has another input fingerprint and is re-made
anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, and_, any_, cast, exists, insert, select, union
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, aliased

from ccat_ops_db import models as m
from ccat_wm.quality.decide import put_in_force
from ccat_wm.quality.standing import source_in_force
from ccat_wm.selection.dimensions import display_key

RUN = m.ExecutedReductionStep
INPUT, PRODUCT = m.ExecutedReductionStepInput, m.DataProduct
NAMED = 3
"""Rejected inputs a derived decision's message names."""


@dataclass(frozen=True, slots=True)
class Derived:
    """A run whose decision in force followed its inputs'."""

    step: str
    sub_group_key: str
    run_id: int
    rejected: bool
    message: str
    downstream: tuple[tuple[str, str], ...] = ()
    """(step, key) of the current runs made from it, whose inputs this changed
    (reason `qa_changed`)."""


def _ids(ids: Sequence[int]) -> object:
    return any_(cast(list(ids), ARRAY(Integer)))


def _consumers(session: Session, run_ids: Sequence[int]) -> list[int]:
    """Return the current runs made from the sub-groups of `run_ids`.

    Those that consumed their products, and those that left a rejected run of them out
    (`qa_exclusion`).
    """
    flipped, source, consumer = aliased(RUN), aliased(RUN), aliased(RUN)
    same = and_(
        source.reduction_step_id == flipped.reduction_step_id,
        source.sub_group_key == flipped.sub_group_key,
    )
    consumed = (
        select(INPUT.executed_reduction_step_id.label("id"))
        .select_from(flipped)
        .join(source, same)
        .join(PRODUCT, PRODUCT.executed_reduction_step_id == source.id)
        .join(INPUT, INPUT.data_product_id == PRODUCT.id)
        .where(flipped.id == _ids(run_ids))
    )
    left_out = (
        select(m.QaExclusion.executed_reduction_step_id.label("id"))
        .select_from(flipped)
        .join(source, same)
        .join(m.QaExclusion, m.QaExclusion.excluded_run_id == source.id)
        .where(flipped.id == _ids(run_ids))
    )
    made = union(consumed, left_out).subquery()
    return list(
        session.scalars(
            select(consumer.id)
            .join(made, made.c.id == consumer.id)
            .where(consumer.is_current)
            .order_by(consumer.id)
        )
    )


def _origins(session: Session, run_ids: Sequence[int]) -> dict[int, list[tuple[str, str, bool]]]:
    """Return, per run, the sub-groups whose products it consumed: (step, key, accepted now)."""
    origin, current = aliased(RUN), aliased(RUN)
    accepted = exists().where(
        current.reduction_step_id == origin.reduction_step_id,
        current.sub_group_key == origin.sub_group_key,
        current.is_current,
        current.qa_rejected.is_(False),
    )
    rows = session.execute(
        select(INPUT.executed_reduction_step_id, m.ReductionStep.name, origin.sub_group_key,
               accepted)
        .distinct()
        .join(PRODUCT, PRODUCT.id == INPUT.data_product_id)
        .join(origin, origin.id == PRODUCT.executed_reduction_step_id)
        .join(m.ReductionStep, m.ReductionStep.id == origin.reduction_step_id)
        .where(INPUT.executed_reduction_step_id == _ids(run_ids))
        .order_by(INPUT.executed_reduction_step_id, m.ReductionStep.name, origin.sub_group_key)
    ).all()  # fmt: skip
    out: dict[int, list[tuple[str, str, bool]]] = {}
    for run_id, step, key, ok in rows:
        out.setdefault(run_id, []).append((step, key, bool(ok)))
    return out


def propagate(session: Session, run_ids: Sequence[int]) -> list[Derived]:
    """Follow the flipped decisions on `run_ids` downstream; return the runs that followed.

    A run left without an accepted input is rejected, one given one back accepted
    again; each is recorded as a decision. No commit.
    """
    derived: list[Derived] = []
    frontier = _consumers(session, run_ids)
    while frontier:
        states = session.execute(
            select(RUN.id, m.ReductionStep.name, RUN.sub_group_key, RUN.qa_rejected,
                   source_in_force(RUN.id))
            .join(RUN.reduction_step)
            .where(RUN.id == _ids(frontier))
            .order_by(RUN.id)
        ).all()  # fmt: skip
        origins = _origins(session, frontier)
        decided = [d for state in states if (d := _follow(state, origins.get(state[0], [])))]
        if not decided:
            break
        derived += _record(session, decided)
        frontier = _consumers(session, [d.run_id for d in decided])
    return derived


def _follow(state: Sequence[Any], origins: list[tuple[str, str, bool]]) -> Derived | None:
    """Return the derived decision a run (id, step, key, rejected, source) needs now, if any.

    A person's decision in force stays in force.
    """
    run_id, step, key, rejected, source = state
    if source is m.QaSource.PERSON or not origins:
        return None
    accepted = [(s, k) for s, k, ok in origins if ok]
    if not accepted and not rejected:
        named = ", ".join(f"{s}[{display_key(k)}]" for s, k, _ in origins[:NAMED])
        more = f" and {len(origins) - NAMED} more" if len(origins) > NAMED else ""
        message = f"rejected: every input is rejected ({named}{more})"
        return Derived(step, key, run_id, True, message)
    if accepted and rejected and source is m.QaSource.INPUTS:
        s, k = accepted[0]
        message = f"accepted: an input is accepted again ({s}[{display_key(k)}])"
        return Derived(step, key, run_id, False, message)
    return None


def _record(session: Session, decided: list[Derived]) -> list[Derived]:
    """Record the derived decisions, put them in force, mark their consumers `qa_changed`."""
    ids = session.execute(
        insert(m.QaDecision).returning(m.QaDecision.id, sort_by_parameter_order=True),
        [
            {"executed_reduction_step_id": d.run_id, "rejected": d.rejected,
             "source": m.QaSource.INPUTS, "message": d.message, "rules": [], "metrics": {}}
            for d in decided
        ],
    ).scalars().all()  # fmt: skip
    put_in_force(session, [(d.run_id, d.rejected) for d in decided])
    recorded = []
    for decision_id, d in zip(ids, decided, strict=True):
        consumers = session.execute(
            select(RUN.reduction_step_id, m.ReductionStep.name, RUN.sub_group_key)
            .join(RUN.reduction_step)
            .where(RUN.id == _ids(_consumers(session, [d.run_id])))
            .order_by(m.ReductionStep.name, RUN.sub_group_key)
        ).all()
        if consumers:
            session.execute(
                insert(m.table_of(m.QaChange)),
                [{"qa_decision_id": decision_id, "reduction_step_id": sid, "sub_group_key": k}
                 for sid, _, k in consumers],
            )  # fmt: skip
        recorded.append(
            Derived(d.step, d.sub_group_key, d.run_id, d.rejected, d.message,
                    tuple((s, k) for _, s, k in consumers))
        )  # fmt: skip
    return recorded


def follow_rejection(session: Session, run_id: int) -> list[Derived]:
    """Follow a gate's rejection of run `run_id` at its completion downstream. No commit.

    Only runs made from an earlier run of its sub-group can follow; for a first
    reduction this is one indexed query.
    """
    return propagate(session, [run_id])
