"""`ccat-wm plan`: every gap of the enabled pipelines, with blast radius and cost.

Side-effect free: the snapshot is read in a READ ONLY transaction. The cost of a wave
per step is the number of runs it would make (downstream sub-groups included, since
they appear as not-ready gaps) times the median CPU-hours of the step's measured
current runs (a sample of up to 200), or, without history, times its configured
`cpu x time_hours` (an upper bound: the resources a run may use).
"""

from __future__ import annotations

import datetime as dt
import shlex
from collections import Counter
from dataclasses import dataclass, field

from croniter import CroniterBadDateError
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.errors import CcatWmError
from ccat_wm.execution.usage import measured_cpu_hours
from ccat_wm.execution.waves import downstream_closure
from ccat_wm.gaps.evaluate import evaluate
from ccat_wm.gaps.model import Gap, GapReason, PipelineSnapshot
from ccat_wm.gaps.snapshot import load_snapshot
from ccat_wm.quality.standing import Rejection, rejected_sub_groups
from ccat_wm.selection.dimensions import display_key


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
    retry_costs: list[StepCost] = field(default_factory=list)
    """What retrying the failed sub-groups would run (downstream included), per step."""
    errors: dict[str, str] = field(default_factory=dict)
    """Pipelines whose evaluation failed, with why; the others are evaluated all the same."""
    rejected: list[Rejection] = field(default_factory=list)
    """Sub-groups whose current run a quality decision rejects: no input downstream."""

    @property
    def total_cpu_hours(self) -> float:
        """Estimated CPU-hours of the whole wave."""
        return sum(c.cpu_hours for c in self.costs)


def next_action(gap: Gap) -> str:
    """Say what runs the gap: `plan` and a manual `run` agree on it.

    A ready gap is exactly what `ccat-wm run PIPELINE` executes at once. A gap that is
    not ready runs in the same manual run as a follow-up once the upstream sub-groups
    inside it finish there. A failed sub-group (retries exhausted) runs only when a
    person retries it, with the command given.
    """
    if gap.reason is GapReason.FAILED:
        key = shlex.quote(display_key(gap.sub_group_key))
        pipeline, step = shlex.quote(gap.pipeline), shlex.quote(gap.step)
        return f"ccat-wm retry {pipeline} --step {step} --sub-group {key}"
    if not gap.ready:
        return "after its upstream sub-groups (follow-up of `ccat-wm run`)"
    return f"ccat-wm run {shlex.quote(gap.pipeline)}"


def _step_costs(
    session: Session, snapshot: PipelineSnapshot, gaps: list[Gap]
) -> tuple[list[StepCost], list[StepCost]]:
    """Return the cost of the due gaps, and of retrying the failed sub-groups, per step."""
    history = measured_cpu_hours(session, [s.id for s in snapshot.steps])
    counts = Counter(g.step for g in gaps if g.reason is not GapReason.FAILED)
    failed = {(g.step, g.sub_group_key) for g in gaps if g.reason is GapReason.FAILED}
    retried = Counter(step for step, _ in downstream_closure(snapshot, failed)) if failed else {}
    costs, retry_costs = [], []
    for step in snapshot.steps:
        if step.id in history:
            each, measured = history[step.id]
            basis = f"history (median of {measured} runs)"
        else:
            each, basis = step.configured_cpu_hours, "configured resources"
        runs = counts[step.name]
        costs.append(StepCost(snapshot.pipeline.name, step.name, runs, each, each * runs, basis))
        if retried.get(step.name):
            again = retried[step.name]
            retry_costs.append(
                StepCost(snapshot.pipeline.name, step.name, again, each, each * again, basis)
            )
    return costs, retry_costs


def make_plan(
    session: Session,
    now: dt.datetime,
    pipeline_name: str | None = None,
    *,
    manual: bool = False,
    read_only: bool = True,
) -> Plan:
    """Evaluate the enabled pipelines (or one) at `now` without writing anything.

    `manual`: as a person's run would (every ready gap due now). `read_only=False` for a
    transaction that already wrote and will be rolled back (`plan --with`).
    """
    if read_only:
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
    retry_costs: list[StepCost] = []
    errors: dict[str, str] = {}
    evaluated: list[int] = []
    for pipeline in pipelines:
        if not pipeline.enabled:
            continue
        name = pipeline.name
        try:
            with session.begin_nested():  # a failed query spoils only this pipeline's savepoint
                snapshot = load_snapshot(session, pipeline)
                pipeline_gaps = evaluate(snapshot, now, manual=manual)
                pipeline_costs, pipeline_retry = _step_costs(session, snapshot, pipeline_gaps)
        except Exception as exc:  # one pipeline's bad data must not hide the others' plans
            errors[name] = describe_evaluation_error(exc)
            continue
        gaps.extend(pipeline_gaps)
        costs.extend(pipeline_costs)
        retry_costs.extend(pipeline_retry)
        evaluated.append(pipeline.id)
    return Plan(now, gaps, costs, retry_costs, errors, rejected_sub_groups(session, evaluated))


def describe_evaluation_error(exc: Exception) -> str:
    """Say in one line why a pipeline could not be evaluated."""
    if isinstance(exc, CroniterBadDateError):
        return f"its cron expression never fires ({exc}); fix it with `ccat-wm apply`"
    return f"evaluation failed: {type(exc).__name__}: {exc}"[:1000]
