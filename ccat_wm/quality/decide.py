"""The gate's decision on a completed run, recorded with its products.

When a run of a step with a `qa_gate` completes, its QA files are read (the JSON files
it wrote under `qa/`), its metrics held to the gate, and the decision recorded in the
transaction that registers its products: a `qa_decision` row (the rules, the values
seen, the run's metrics) and the run's `qa_rejected`, which gap evaluation reads (a
rejected run's products feed no downstream sub-group).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Integer, any_, cast, insert, update
from sqlalchemy.dialects.postgresql import ARRAY

from ccat_ops_db import models as m
from ccat_wm.db import Db, connection_of
from ccat_wm.quality.gate import GateDecision, QaRule, evaluate_gate
from ccat_wm.quality.metrics import run_metrics


@dataclass(frozen=True, slots=True)
class Judgement:
    """A gate's decision on one run, with the metrics it was made from."""

    decision: GateDecision
    metrics: dict[str, float]


def judge(rules: Sequence[QaRule], files: Mapping[str, str | bytes]) -> Judgement:
    """Hold a run's QA files (`name -> content`) to a gate's rules.

    Raises `QaMetricsError` when the files cannot give the metrics (a contract
    violation: not a JSON object, or a metric reported twice).
    """
    metrics = run_metrics(files)
    return Judgement(evaluate_gate(rules, metrics), metrics)


def record_judgement(db: Db, run_id: int, judgement: Judgement) -> None:
    """Record the gate's decision on run `run_id` (a `qa_decision` row). No commit.

    The decision is put in force by the run's move to COMPLETED, which sets
    `qa_columns` in the same statement.
    """
    decision = judgement.decision
    connection_of(db).execute(
        _DECISION_INSERT,
        {
            "executed_reduction_step_id": run_id,
            "rejected": not decision.accepted,
            "source": m.QaSource.GATE,
            "message": decision.message(),
            "rules": rules_seen(decision),
            "metrics": judgement.metrics,
        },
    )


_DECISION_INSERT = insert(m.table_of(m.QaDecision))


def rules_seen(decision: GateDecision) -> list[dict[str, object]]:
    """Return each rule of a decision with the value seen and whether it passed (JSON)."""
    return [
        {**o.rule.model_dump(mode="json"), "seen": o.value, "passed": o.passed}
        for o in decision.outcomes
    ]


def qa_columns(metrics: dict[str, float] | None, judgement: Judgement | None) -> dict[str, object]:
    """Return the run's columns a completed run's QA sets: its metrics, the gate's decision."""
    columns: dict[str, object] = {}
    if metrics is not None:
        columns["qa_metrics"] = metrics
    if judgement is not None:
        columns["qa_rejected"] = not judgement.decision.accepted
    return columns


def put_in_force(db: Db, flips: Iterable[tuple[int, bool]]) -> None:
    """Set `qa_rejected` of each (run id, rejected) whose decision in force flipped. No commit.

    One UPDATE per direction, with the run ids as one array parameter.
    """
    ids: dict[bool, list[int]] = {True: [], False: []}
    for run_id, rejected in flips:
        ids[rejected].append(run_id)
    run = m.table_of(m.ExecutedReductionStep)
    for rejected, run_ids in ids.items():
        if run_ids:
            connection_of(db).execute(
                update(run)
                .where(run.c.id == any_(cast(run_ids, ARRAY(Integer))))
                .values(qa_rejected=rejected)
            )
