"""`ccat-wm plan`: every gap of the enabled pipelines, with blast radius and cost.

Side-effect free: the snapshot is read in a READ ONLY transaction. The cost of a wave
per step is the number of runs it would make (downstream sub-groups included, since
they appear as not-ready gaps) times the median CPU-hours of the step's measured
COMPLETED runs, or, without history, times its configured `cpu x time_hours` (an upper
bound: the resources a run may use).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.errors import CcatWmError
from ccat_wm.gaps.evaluate import evaluate
from ccat_wm.gaps.model import Gap, GapReason
from ccat_wm.gaps.snapshot import load_snapshot


@dataclass(frozen=True, slots=True)
class StepCost:
    """Blast radius and estimated cost of one step's gaps."""

    pipeline: str
    step: str
    runs: int
    """Runs the wave would make (failed sub-groups excluded)."""
    cpu_hours_per_run: float
    cpu_hours: float
    """Estimated CPU-hours of those runs."""
    basis: str
    """`history (median of N runs)` or `configured resources`."""


@dataclass(frozen=True, slots=True)
class Plan:
    """The result of a plan."""

    evaluated_at: dt.datetime
    gaps: list[Gap]
    costs: list[StepCost]

    @property
    def total_cpu_hours(self) -> float:
        """Estimated CPU-hours of the whole wave."""
        return sum(c.cpu_hours for c in self.costs)


def _step_costs(session: Session, pipeline: m.Pipeline, gaps: list[Gap]) -> list[StepCost]:
    run = m.ExecutedReductionStep
    history = {
        step_id: (float(median), int(n))
        for step_id, median, n in session.execute(
            select(
                run.reduction_step_id,
                func.percentile_cont(0.5).within_group(run.cpu_hours),
                func.count(),
            )
            .join(m.ReductionStep, m.ReductionStep.id == run.reduction_step_id)
            .where(
                m.ReductionStep.pipeline_id == pipeline.id,
                run.status == m.RunStatus.COMPLETED,
                run.cpu_hours.is_not(None),
            )
            .group_by(run.reduction_step_id)
        )
    }
    counts = Counter(g.step for g in gaps if g.reason is not GapReason.FAILED)
    steps = session.execute(
        select(
            m.ReductionStep.id, m.ReductionStep.name, m.ReductionStepConfig.resource_requirements
        )
        .join(m.ReductionStepConfig)
        .where(m.ReductionStep.pipeline_id == pipeline.id)
        .order_by(m.ReductionStep.step_order)
    ).all()
    costs = []
    for step_id, name, resources in steps:
        if step_id in history:
            each, basis = history[step_id][0], f"history (median of {history[step_id][1]} runs)"
        else:
            each = float(resources.get("cpu", 1)) * float(resources.get("time_hours", 1))
            basis = "configured resources"
        costs.append(StepCost(pipeline.name, name, counts[name], each, each * counts[name], basis))
    return costs


def make_plan(session: Session, now: dt.datetime, pipeline_name: str | None = None) -> Plan:
    """Evaluate the enabled pipelines (or one) at `now` without writing anything."""
    session.execute(text("SET TRANSACTION READ ONLY"))
    query = select(m.Pipeline).order_by(m.Pipeline.priority.desc(), m.Pipeline.name)
    if pipeline_name is not None:
        query = query.where(m.Pipeline.name == pipeline_name)
    pipelines = session.scalars(query).all()
    if pipeline_name is not None and not pipelines:
        known = session.scalars(select(m.Pipeline.name).order_by(m.Pipeline.name)).all()
        raise CcatWmError(
            f"unknown pipeline {pipeline_name!r}; known: {', '.join(known) or 'none'}"
        )
    gaps: list[Gap] = []
    costs: list[StepCost] = []
    for pipeline in pipelines:
        if not pipeline.enabled:
            continue
        pipeline_gaps = evaluate(load_snapshot(session, pipeline), now)
        gaps.extend(pipeline_gaps)
        costs.extend(_step_costs(session, pipeline, pipeline_gaps))
    return Plan(now, gaps, costs)
