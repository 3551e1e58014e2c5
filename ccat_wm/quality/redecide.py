"""A changed gate re-decides its step's current runs, from their recorded metrics.

When `apply` changes a step's `qa_gate` (thresholds, rules, or the gate added or
removed), every current run of the step is held to the new rules with the metrics it
recorded when it completed (`qa_metrics`): nothing is re-run. Each run gets a new gate
decision (a `qa_decision` row, like every decision kept for good); where a person's
decision is in force it stays in force (people decide last). Where the decision in
force flips, the run's downstream sub-groups become gaps of reason `qa_changed`. A run
rejected because it has no accepted input stays rejected whatever its own gate says.

A run that recorded no metrics (it wrote no QA file) fails every rule of a gate, each
naming its metric as missing, as at completion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.quality.decide import put_in_force, rules_seen
from ccat_wm.quality.downstream import DownstreamChanges, SubGroup
from ccat_wm.quality.gate import QaRule, evaluate_gate
from ccat_wm.quality.propagate import Derived, propagate
from ccat_wm.quality.standing import source_in_force

RUN = m.ExecutedReductionStep
DECISION = m.QaDecision


@dataclass(frozen=True, slots=True)
class Redecision:
    """What a changed gate decided about its step's current runs."""

    pipeline: str
    step: str
    decided: int
    """Current runs held to the new rules."""
    rejected: tuple[str, ...]
    """Sub-group keys the decision in force now rejects (accepted before)."""
    accepted: tuple[str, ...]
    """Sub-group keys the decision in force now accepts (rejected before)."""
    kept: tuple[str, ...]
    """Sub-group keys whose gate decision flipped under a decision that stays in force (a
    person's, or the derived rejection of a run without an accepted input)."""
    downstream: tuple[SubGroup, ...]
    """Downstream sub-groups whose inputs changed (gaps of reason `qa_changed`)."""
    derived: tuple[Derived, ...] = ()
    """Downstream runs whose decision followed (every input rejected, or one accepted again)."""

    def describe(self) -> str:
        """Return one line: how many runs were re-decided and which flipped."""
        parts = [f"re-decided {self.decided} current run(s) without re-running them"]
        if self.rejected:
            parts.append(f"now rejected: {', '.join(self.rejected)}")
        if self.accepted:
            parts.append(f"now accepted: {', '.join(self.accepted)}")
        if self.derived:
            followed = ", ".join(
                f"{d.step}[{d.sub_group_key}] {'rejected' if d.rejected else 'accepted'}"
                for d in self.derived
            )
            parts.append(f"followed by their downstream runs: {followed}")
        if self.kept:
            parts.append(f"another decision stays in force: {', '.join(self.kept)}")
        if not (self.rejected or self.accepted):
            parts.append("no decision in force changed")
        return "; ".join(parts)


def redecide_step(
    session: Session,
    pipeline: m.Pipeline,
    step: m.ReductionStep,
    rules: Sequence[QaRule],
    changes: DownstreamChanges,
) -> Redecision:
    """Hold the current runs of `step` to `rules`; record each decision. No commit."""
    runs = session.execute(
        select(RUN.id, RUN.sub_group_key, RUN.qa_rejected, RUN.qa_metrics, source_in_force(RUN.id))
        .where(RUN.reduction_step_id == step.id, RUN.is_current)
        .order_by(RUN.sub_group_key)
    ).all()
    if not runs:
        return Redecision(pipeline.name, step.name, 0, (), (), (), ())
    decisions = [evaluate_gate(rules, metrics or {}) for _, _, _, metrics, _ in runs]
    ids = session.execute(
        insert(DECISION).returning(DECISION.id, sort_by_parameter_order=True),
        [
            {
                "executed_reduction_step_id": run_id, "rejected": not d.accepted,
                "source": m.QaSource.GATE, "message": d.message(), "rules": rules_seen(d),
                "metrics": metrics or {},
            }
            for (run_id, _, _, metrics, _), d in zip(runs, decisions, strict=True)
        ],
    ).scalars().all()  # fmt: skip
    flipped: list[tuple[int, int, str, bool]] = []  # decision id, run id, key, rejected now
    kept: list[str] = []
    for decision_id, (run_id, key, before, _, source), d in zip(ids, runs, decisions, strict=True):
        if (not d.accepted) == before:
            continue
        if source is m.QaSource.PERSON or (before and source is m.QaSource.INPUTS):
            kept.append(key)  # a person's decision, or no accepted input, stays in force
        else:
            flipped.append((decision_id, run_id, key, not d.accepted))
    put_in_force(session, [(run_id, now) for _, run_id, _, now in flipped])
    reached = changes.record(pipeline, [(d, step.name, key) for d, _, key, _ in flipped])
    derived = propagate(session, [run_id for _, run_id, _, _ in flipped])
    return Redecision(
        pipeline.name, step.name, len(runs),
        tuple(key for _, _, key, now in flipped if now),
        tuple(key for _, _, key, now in flipped if not now),
        tuple(kept),
        tuple(sorted({sub for subs in reached.values() for sub in subs})),
        tuple(derived),
    )  # fmt: skip
