"""`ccat-wm resources` and `plan`'s cost: what steps asked for against what their runs used.

Read from the recorded attempts (`run_attempt`), aggregated in the database (one query
per question, whatever the history's size):

- used: median and 95th percentile of the peak memory and wall time of the step's
  COMPLETED attempts, and the CPU efficiency `CPU-hours / (CPUs x wall hours)` over them;
- requested: the step's configured resources (what its next run asks for first);
- suggested: the 95th percentiles times a headroom factor (memory rounded up to 0.1 GB,
  time to the minute), with at least one minute and 0.1 GB;
- badput: the allocation failed attempts held, `CPUs x wall hours`, per failure kind.

`plan` estimates a gap's cost from `measured_cpu_hours`, the median CPU-hours of the
step's current runs, so that the plan and this report read the same history.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy import BigInteger, Float, bindparam, func, select, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.errors import CcatWmError
from ccat_wm.execution.sizing import configured_resources
from infra.backends import Resources

DEFAULT_HEADROOM = 1.2
"""A suggested request is the 95th percentile of use times this."""
HISTORY_SAMPLE = 200
"""At most this many current runs per step are read for `plan`'s median CPU-hours."""
RUN, ATTEMPT = m.ExecutedReductionStep, m.RunAttempt


@dataclass(frozen=True, slots=True)
class StepUsage:
    """One step's requested against used resources, its suggestion and its badput."""

    pipeline: str
    step: str
    requested: Resources
    completed: int
    """COMPLETED attempts measured."""
    failed: int
    memory_gb_p50: float | None = None
    memory_gb_p95: float | None = None
    wall_s_p50: float | None = None
    wall_s_p95: float | None = None
    cpu_efficiency: float | None = None
    """CPU-hours used / (CPUs x wall hours) over the COMPLETED attempts (0..1 per CPU)."""
    suggested_memory_gb: float | None = None
    suggested_time_hours: float | None = None
    badput_cpu_hours: dict[str, float] = field(default_factory=dict)
    """CPUs x wall hours of failed attempts, per failure kind."""

    @property
    def badput_total(self) -> float:
        """All CPU-hours failed attempts held."""
        return sum(self.badput_cpu_hours.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "pipeline": self.pipeline,
            "step": self.step,
            "requested": {
                "cpu": self.requested.cpu,
                "memory_gb": self.requested.memory_gb,
                "time_hours": self.requested.time_hours,
                "gpu": self.requested.gpu,
            },
            "completed_attempts": self.completed,
            "failed_attempts": self.failed,
            "memory_gb": {"p50": self.memory_gb_p50, "p95": self.memory_gb_p95},
            "wall_s": {"p50": self.wall_s_p50, "p95": self.wall_s_p95},
            "cpu_efficiency": self.cpu_efficiency,
            "suggested": {
                "memory_gb": self.suggested_memory_gb,
                "time_hours": self.suggested_time_hours,
            },
            "badput_cpu_hours": dict(self.badput_cpu_hours),
            "badput_cpu_hours_total": self.badput_total,
        }


def _allocated_hours() -> Any:
    """CPUs x wall hours of an attempt (what the allocation held)."""
    cpus = func.coalesce(ATTEMPT.requested_resources["cpu"].astext.cast(Float), 1.0)
    return cpus * ATTEMPT.processing_time_s / 3600.0


@lru_cache(maxsize=1)
def _used_query() -> Any:
    done = ATTEMPT.status == m.RunStatus.COMPLETED
    allocated = _allocated_hours()
    return (
        select(
            m.ReductionStep.id,
            func.count().filter(done),
            func.count().filter(ATTEMPT.status == m.RunStatus.FAILED),
            func.percentile_cont(0.5).within_group(ATTEMPT.peak_memory_gb).filter(done),
            func.percentile_cont(0.95).within_group(ATTEMPT.peak_memory_gb).filter(done),
            func.percentile_cont(0.5).within_group(ATTEMPT.processing_time_s).filter(done),
            func.percentile_cont(0.95).within_group(ATTEMPT.processing_time_s).filter(done),
            func.sum(ATTEMPT.cpu_hours).filter(done, ATTEMPT.processing_time_s > 0),
            func.sum(allocated).filter(done, ATTEMPT.cpu_hours.is_not(None)),
        )
        .join(RUN, RUN.id == ATTEMPT.executed_reduction_step_id)
        .join(RUN.reduction_step)
        .where(m.ReductionStep.id.in_(bindparam("step_ids", expanding=True)))
        .group_by(m.ReductionStep.id)
    )


@lru_cache(maxsize=1)
def _badput_query() -> Any:
    return (
        select(
            RUN.reduction_step_id,
            ATTEMPT.failure_kind,
            func.sum(func.coalesce(_allocated_hours(), 0.0)),
        )
        .join(RUN, RUN.id == ATTEMPT.executed_reduction_step_id)
        .where(
            RUN.reduction_step_id.in_(bindparam("step_ids", expanding=True)),
            ATTEMPT.status == m.RunStatus.FAILED,
        )
        .group_by(RUN.reduction_step_id, ATTEMPT.failure_kind)
    )


def _suggest(p95: float | None, headroom: float, unit: float, least: float) -> float | None:
    if p95 is None:
        return None
    return max(least, math.ceil(p95 * headroom / unit) * unit)


def _steps(session: Session, pipeline: str | None, step: str | None) -> list[Any]:
    """Return the steps asked for, with their configured resources; raise if there is none."""
    query = (
        select(m.Pipeline.name, m.ReductionStep.name, m.ReductionStep.id,
               m.ReductionStepConfig.resource_requirements)
        .join(m.ReductionStep.pipeline)
        .join(m.ReductionStepConfig,
              m.ReductionStepConfig.id == m.ReductionStep.reduction_step_config_id)
        .order_by(m.Pipeline.name, m.ReductionStep.step_order, m.ReductionStep.name)
    )  # fmt: skip
    if pipeline is not None:
        query = query.where(m.Pipeline.name == pipeline)
    if step is not None:
        query = query.where(m.ReductionStep.name == step)
    steps = list(session.execute(query).all())
    if not steps:
        what = f"step {step!r} of " if step else ""
        raise CcatWmError(
            f"no {what}pipeline {pipeline!r}; see `ccat-wm status`"
            if pipeline
            else f"no step {step!r} in any pipeline"
            if step
            else "no pipelines; apply a spec first"
        )
    return steps


def step_usage(
    session: Session,
    pipeline: str | None = None,
    step: str | None = None,
    *,
    headroom: float = DEFAULT_HEADROOM,
) -> list[StepUsage]:
    """Return requested against used resources per step (of one pipeline, or all)."""
    steps = _steps(session, pipeline, step)
    params = {"step_ids": [s.id for s in steps]}
    used = {row[0]: row[1:] for row in session.execute(_used_query(), params)}
    badput: dict[int, dict[str, float]] = defaultdict(dict)
    for step_id, kind, hours in session.execute(_badput_query(), params):
        badput[step_id][kind.value if kind else "UNKNOWN"] = float(hours)
    report = []
    for name, step_name, step_id, requirements in steps:
        done, failed, m50, m95, w50, w95, cpu, allocated = used.get(step_id, (0, 0, *[None] * 6))
        report.append(
            StepUsage(
                pipeline=name,
                step=step_name,
                requested=configured_resources(requirements or {}),
                completed=done,
                failed=failed,
                memory_gb_p50=m50,
                memory_gb_p95=m95,
                wall_s_p50=w50,
                wall_s_p95=w95,
                cpu_efficiency=cpu / allocated if cpu is not None and allocated else None,
                suggested_memory_gb=_suggest(m95, headroom, 0.1, 0.1),
                suggested_time_hours=_suggest(
                    w95 / 3600 if w95 is not None else None, headroom, 1 / 60, 1 / 60
                ),
                badput_cpu_hours=badput.get(step_id, {}),
            )
        )
    return report


@lru_cache(maxsize=1)
def _measured_query() -> Any:
    step_ids = (
        func.unnest(bindparam("step_ids", type_=ARRAY(BigInteger)))
        .table_valued("id")
        .render_derived(name="steps")
    )
    sample = (
        select(RUN.cpu_hours)
        .where(RUN.reduction_step_id == step_ids.c.id, RUN.is_current, RUN.cpu_hours.is_not(None))
        .limit(HISTORY_SAMPLE)
        .subquery()
        .lateral("sample")
    )
    return (
        select(
            step_ids.c.id,
            func.percentile_cont(0.5).within_group(sample.c.cpu_hours),
            func.count(sample.c.cpu_hours),
        )
        .select_from(step_ids.join(sample, true()))
        .group_by(step_ids.c.id)
    )


def measured_cpu_hours(session: Session, step_ids: Sequence[int]) -> dict[int, tuple[float, int]]:
    """Median CPU-hours of up to HISTORY_SAMPLE measured current runs per step (one query).

    Returns step id -> (median, runs measured), for steps with at least one.
    """
    rows = session.connection().execute(_measured_query(), {"step_ids": list(step_ids)})
    return {int(step_id): (float(median), int(count)) for step_id, median, count in rows if count}
