"""A person's quality decision on a run: recorded, in force over the gate, and undoable.

`ccat-wm qa accept|reject` records who, when and why, never deleting anything: each
decision is a new `qa_decision` row (source `person`). The newest decision of a person
overrides the gate's; `--undo` records that the person takes their decision back, and the
gate's latest decision (or, without a gate, acceptance) is in force again. When the
decision in force changes, the sub-groups of the steps directly downstream that hold the
run's sub-group are recorded (`qa_change`): their gaps say `qa_changed` until they are
re-made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.errors import CcatWmError
from ccat_wm.quality.decide import put_in_force
from ccat_wm.quality.downstream import DownstreamChanges
from ccat_wm.quality.propagate import Derived, propagate

RUN = m.ExecutedReductionStep


class QaDecisionError(CcatWmError):
    """A quality decision that cannot be taken (unknown or unfinished run, no reason)."""


@dataclass(frozen=True, slots=True)
class PersonDecision:
    """What a person's decision did to one run."""

    run_id: int
    step: str
    sub_group_key: str
    rejected_before: bool
    rejected: bool
    """The decision in force after this one."""
    downstream: tuple[tuple[str, str], ...]
    """(step, key) of the downstream sub-groups whose inputs changed (qa_changed)."""
    derived: tuple[Derived, ...] = ()
    """Downstream runs whose decision followed (every input rejected, or one again accepted)."""

    def gaps(self) -> list[tuple[str, str]]:
        """Return the sub-groups that become gaps of reason `qa_changed`, in order."""
        followed = {(d.step, d.sub_group_key) for d in self.derived}
        reached = [*self.downstream, *(sg for d in self.derived for sg in d.downstream)]
        return [sg for sg in dict.fromkeys(reached) if sg not in followed]


def current_run(session: Session, pipeline: str | None, step: str, key: str) -> int:
    """Return the id of the current run of (`step`, `key`), of `pipeline` if given."""
    query = (
        select(RUN.id, m.Pipeline.name)
        .join(RUN.reduction_step)
        .join(m.ReductionStep.pipeline)
        .where(m.ReductionStep.name == step, RUN.sub_group_key == key, RUN.is_current)
    )
    if pipeline is not None:
        query = query.where(m.Pipeline.name == pipeline)
    found = session.execute(query).all()
    if not found:
        raise QaDecisionError(
            f"no current run of step {step!r} for sub-group {key!r}; see `ccat-wm status`"
        )
    if len(found) > 1:
        pipelines = ", ".join(sorted(p for _, p in found))
        raise QaDecisionError(f"step {step!r} is in pipelines {pipelines}; give --pipeline")
    return int(found[0][0])


def decide(
    session: Session,
    run_ids: Sequence[int],
    *,
    rejected: bool,
    reason: str,
    user: str,
    undo: bool = False,
) -> list[PersonDecision]:
    """Record a person's decision on each run (`undo`: take their decision back). No commit.

    Every run must be COMPLETED; `reason` says why and is required.
    """
    if not reason.strip():
        raise QaDecisionError("--reason is required: say why (it is kept with the decision)")
    changes = DownstreamChanges(session)  # holds each pipeline's containment, read once
    return [
        _decide_one(session, run_id, changes, rejected=rejected, reason=reason, user=user,
                    undo=undo)
        for run_id in dict.fromkeys(run_ids)
    ]  # fmt: skip


def _decide_one(
    session: Session,
    run_id: int,
    changes: DownstreamChanges,
    *,
    rejected: bool,
    reason: str,
    user: str,
    undo: bool,
) -> PersonDecision:
    row = session.execute(
        select(RUN.status, RUN.qa_rejected, RUN.sub_group_key, m.ReductionStep.name, m.Pipeline)
        .join(RUN.reduction_step)
        .join(m.ReductionStep.pipeline)
        .where(RUN.id == run_id)
        .with_for_update(of=RUN)
    ).first()
    if row is None:
        raise QaDecisionError(f"no run with id {run_id}; see `ccat-wm status` for run ids")
    status, before, key, step, pipeline = row
    if status is not m.RunStatus.COMPLETED:
        raise QaDecisionError(f"run {run_id} is {status.value}: only a COMPLETED run is judged")
    now_rejected = _system_decision(session, run_id) if undo else rejected
    verb = "undo" if undo else ("reject" if rejected else "accept")
    decision_id: int = session.execute(
        insert(m.table_of(m.QaDecision))
        .values(
            executed_reduction_step_id=run_id, rejected=now_rejected, source=m.QaSource.PERSON,
            message=f"{verb}: {reason}", rules=[], metrics={}, undo=undo, decided_by=user,
        )
        .returning(m.QaDecision.id)
    ).scalar_one()  # fmt: skip
    if now_rejected == before:
        return PersonDecision(run_id, step, key, before, now_rejected, ())
    put_in_force(session, [(run_id, now_rejected)])
    downstream = changes.record(pipeline, [(decision_id, step, key)])[decision_id]
    derived = propagate(session, [run_id])
    return PersonDecision(run_id, step, key, before, now_rejected, downstream, tuple(derived))


def _system_decision(session: Session, run_id: int) -> bool:
    """Return whether the latest decision not a person's (the gate's, or derived) rejects it."""
    decision = m.QaDecision
    latest = session.scalar(
        select(decision.rejected)
        .where(decision.executed_reduction_step_id == run_id, decision.source != m.QaSource.PERSON)
        .order_by(decision.id.desc())
        .limit(1)
    )
    return bool(latest)
