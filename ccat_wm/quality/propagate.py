"""A run whose every input is rejected is rejected too (derived), so nothing of it flows on.

When the decision in force on a run flips, the downstream sub-groups holding it take
other inputs. One whose current run has no accepted input left keeps that run (there is
nothing to re-make it from), but its products must not carry the rejected data further:
the run gets a derived decision (source `inputs`) and is rejected. When an input is
accepted again, a derived rejection is taken back the same way. A person's decision in
force on the run stays in force. The walk goes on downstream from every run it flips,
so a rejected scan reaches no map through any chain of steps (calibrate, baseline, grid).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from sqlalchemy import Integer, any_, cast, insert, select, tuple_, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.quality.downstream import DownstreamChanges, SubGroup
from ccat_wm.quality.standing import source_in_force
from ccat_wm.selection.dimensions import display_key

RUN = m.ExecutedReductionStep
CHUNK = 10_000
"""Sub-groups looked up per statement (two parameters each; PostgreSQL takes 65,535)."""
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
    downstream: tuple[SubGroup, ...] = ()
    """Sub-groups directly downstream whose inputs this changed (reason `qa_changed`)."""


@dataclass(frozen=True, slots=True)
class _State:
    run_id: int
    rejected: bool
    source: m.QaSource | None


def propagate(
    session: Session, pipeline: m.Pipeline, changes: DownstreamChanges, flipped: Iterable[SubGroup]
) -> list[Derived]:
    """Follow flipped decisions downstream; return the runs whose decision followed.

    A run left without an accepted input is rejected, one given one back accepted
    again; each is recorded as a decision. No commit.
    """
    derived: list[Derived] = []
    frontier = sorted({down for step, key in flipped for down in changes.of(pipeline, step, key)})
    while frontier:
        upstream = {sg: changes.inside(pipeline, *sg) for sg in frontier}
        states = _current(
            session, pipeline, {*frontier, *(u for ups in upstream.values() for u in ups)}
        )
        decided = [
            d for sg in frontier
            if sg in states and (d := _follow(sg, states[sg], upstream[sg], states)) is not None
        ]  # fmt: skip
        if not decided:
            break
        ids = session.execute(
            insert(m.QaDecision).returning(m.QaDecision.id, sort_by_parameter_order=True),
            [
                {"executed_reduction_step_id": d.run_id, "rejected": d.rejected,
                 "source": m.QaSource.INPUTS, "message": d.message, "rules": [], "metrics": {}}
                for d in decided
            ],
        ).scalars().all()  # fmt: skip
        for rejected in (True, False):
            run_ids = [d.run_id for d in decided if d.rejected is rejected]
            if run_ids:
                session.execute(
                    update(RUN)
                    .where(RUN.id == any_(cast(run_ids, ARRAY(Integer))))
                    .values(qa_rejected=rejected)
                    .execution_options(synchronize_session=False)
                )
        reached = changes.record(
            pipeline, [(i, d.step, d.sub_group_key) for i, d in zip(ids, decided, strict=True)]
        )
        derived += [replace(d, downstream=reached[i]) for i, d in zip(ids, decided, strict=True)]
        frontier = sorted({down for subs in reached.values() for down in subs})
    return derived


def _follow(
    sg: SubGroup, state: _State, upstream: Sequence[SubGroup], states: dict[SubGroup, _State]
) -> Derived | None:
    """Return the derived decision a run needs now, if any (a person's stays in force)."""
    if state.source is m.QaSource.PERSON:
        return None
    accepted = [u for u in upstream if u in states and not states[u].rejected]
    if not accepted and not state.rejected:
        named = ", ".join(f"{s}[{display_key(k)}]" for s, k in upstream[:NAMED])
        more = f" and {len(upstream) - NAMED} more" if len(upstream) > NAMED else ""
        message = f"rejected: every input is rejected ({named}{more})"
        return Derived(sg[0], sg[1], state.run_id, True, message)
    if accepted and state.rejected and state.source is m.QaSource.INPUTS:
        step, key = accepted[0]
        message = f"accepted: an input is accepted again ({step}[{display_key(key)}])"
        return Derived(sg[0], sg[1], state.run_id, False, message)
    return None


def _current(
    session: Session, pipeline: m.Pipeline, wanted: set[SubGroup]
) -> dict[SubGroup, _State]:
    """Return the current run of each wanted sub-group that has one, with its decision."""
    found: dict[SubGroup, _State] = {}
    pairs = sorted(wanted)
    for start in range(0, len(pairs), CHUNK):
        rows = session.execute(
            select(m.ReductionStep.name, RUN.sub_group_key, RUN.id, RUN.qa_rejected,
                   source_in_force(RUN.id))
            .join(RUN.reduction_step)
            .where(
                m.ReductionStep.pipeline_id == pipeline.id, RUN.is_current,
                tuple_(m.ReductionStep.name, RUN.sub_group_key).in_(pairs[start : start + CHUNK]),
            )
        ).all()  # fmt: skip
        found.update({(s, k): _State(i, r, src) for s, k, i, r, src in rows})
    return found


def follow_rejection(session: Session, run_id: int) -> list[Derived]:
    """Follow a gate's rejection of run `run_id` at its completion downstream. No commit.

    Only a run that replaced an earlier completed run of its sub-group can have
    downstream runs made from that sub-group; for the others (a first reduction) this
    is one query.
    """
    run = session.get_one(RUN, run_id)
    earlier = session.scalar(
        select(RUN.id)
        .where(
            RUN.reduction_step_id == run.reduction_step_id,
            RUN.sub_group_key == run.sub_group_key,
            RUN.status == m.RunStatus.COMPLETED,
            RUN.id != run_id,
        )
        .limit(1)
    )
    if earlier is None:
        return []
    step = session.get_one(m.ReductionStep, run.reduction_step_id)
    pipeline = session.get_one(m.Pipeline, step.pipeline_id)
    return propagate(
        session, pipeline, DownstreamChanges(session), [(step.name, run.sub_group_key)]
    )
