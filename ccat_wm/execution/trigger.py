"""One trigger tick: the standing (CONTINUOUS) pipelines' new gaps become PENDING runs.

A tick evaluates every enabled CONTINUOUS pipeline (of one processing location, or all)
incrementally (`ccat_wm.gaps.incremental`: it reads what changed since the previous
tick, and gives what the full evaluation would), creates PENDING runs for its eligible
gaps, and says which pipelines need a flow run: those with PENDING runs nobody claimed
and those with runs left by a flow run whose process died (their claim is dead, see
`claims`). It also says when the next gap still in its cooldown becomes
eligible, so that the trigger flow can tick again at that moment instead of a whole
interval later.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.execution.claims import dead_claims
from ccat_wm.gaps.create import create_runs
from ccat_wm.gaps.incremental import evaluate_incremental, prune_change_log
from ccat_wm.gaps.plan import describe_evaluation_error

RUN = m.ExecutedReductionStep


@dataclass(frozen=True, slots=True)
class TickResult:
    """What one tick did and what it asks for."""

    created: dict[str, int] = field(default_factory=dict)
    """Runs created, by pipeline."""
    to_start: list[str] = field(default_factory=list)
    """Pipelines with runs waiting for a flow run (new, unclaimed, or a dead claim's)."""
    next_eligible_at: dt.datetime | None = None
    """Soonest moment a gap now in its cooldown becomes eligible (None: no such gap)."""
    dead_claims: dict[str, list[str]] = field(default_factory=dict)
    """Per pipeline to start: flow runs whose process is gone and whose runs it adopts."""
    errors: dict[str, str] = field(default_factory=dict)
    """Pipelines whose evaluation failed (nothing created for them), with why."""


def trigger_tick(
    session: Session,
    now: dt.datetime,
    *,
    location: str | None = None,
    include_cron: bool = False,
) -> TickResult:
    """Create the runs the CONTINUOUS pipelines are due; commit nothing (the caller does).

    `include_cron`: also the CRON pipelines' runs whose cron tick has come (their gaps
    are eligible from the first tick after they appeared), for a site without a Prefect
    server whose schedules would start them.
    """
    kinds = [m.TriggerType.CONTINUOUS, *([m.TriggerType.CRON] if include_cron else [])]
    query = (
        select(m.Pipeline)
        .join(m.Pipeline.processing_location)
        .where(m.Pipeline.enabled, m.Pipeline.trigger_type.in_(kinds))
        .order_by(m.Pipeline.priority.desc(), m.Pipeline.name)
    )
    if location is not None:
        query = query.where(m.DataLocation.name == location)
    continuous = list(session.scalars(query))
    created: dict[str, int] = {}
    upcoming: list[dt.datetime] = []
    errors: dict[str, str] = {}
    for pipeline in continuous:  # one evaluation per pipeline: a handful per site
        name = pipeline.name
        try:
            with session.begin_nested():  # a pipeline that fails creates nothing, alone
                evaluation = evaluate_incremental(session, pipeline, now)
                gaps = evaluation.gaps
                new = create_runs(session, evaluation.snapshot, [g for g in gaps if g.eligible])
        except Exception as exc:  # one pipeline's bad data must not stop the others
            errors[name] = describe_evaluation_error(exc)
            continue
        if new:
            created[name] = len(new)
        upcoming += [
            g.eligible_at for g in gaps if not g.eligible and g.eligible_at and g.eligible_at > now
        ]
    prune_change_log(session, now)
    adopting: dict[str, list[str]] = {}
    return TickResult(
        created=created,
        to_start=pipelines_waiting(session, location=location, adopting=adopting),
        next_eligible_at=min(upcoming, default=None),
        dead_claims=adopting,
        errors=errors,
    )


def pipelines_waiting(
    session: Session, *, location: str | None = None, adopting: dict[str, list[str]] | None = None
) -> list[str]:
    """Return enabled pipelines with unclaimed PENDING runs or runs of a dead flow run.

    `adopting` receives, per pipeline, the dead flow runs whose runs are waiting.
    """
    base = (
        select(m.Pipeline.name, RUN.prefect_flow_run_id, RUN.status)
        .join(m.ReductionStep, m.ReductionStep.pipeline_id == m.Pipeline.id)
        .join(RUN, RUN.reduction_step_id == m.ReductionStep.id)
        .join(m.Pipeline.processing_location)
        .where(m.Pipeline.enabled, RUN.status.in_(m.UNFINISHED_STATUSES))
        .distinct()
    )
    if location is not None:
        base = base.where(m.DataLocation.name == location)
    rows = session.execute(base).all()
    claims = sorted({r.prefect_flow_run_id for r in rows if r.prefect_flow_run_id})
    dead = dead_claims(session, claims)
    if adopting is not None:
        for row in rows:
            if row.prefect_flow_run_id in dead:
                found = adopting.setdefault(row.name, [])
                if row.prefect_flow_run_id not in found:
                    found.append(row.prefect_flow_run_id)
    return sorted(
        {
            r.name
            for r in rows
            if (r.prefect_flow_run_id is None and r.status is m.RunStatus.PENDING)
            or r.prefect_flow_run_id in dead
        }
    )
