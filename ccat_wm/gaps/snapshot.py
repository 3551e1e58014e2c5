"""Load a pipeline's snapshot with a fixed, small number of set-based queries.

Per pipeline: a handful of queries for its settings, one for the runs in flight and
the failures of all steps, one statement for every step's inputs and current runs
(`pipeline_query.groups_statement`), and one per root step with a maximum wait.
Nothing here issues a query per sub-group or per package, and by default the settled
root sub-groups (the vast majority in steady state) are not even sent to Python.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, case, func, literal, or_, select, text
from sqlalchemy.orm import Session, aliased

from ccat_ops_db import models as m
from ccat_wm.gaps.model import (
    CurrentRun,
    FailureRecord,
    GroupRow,
    PipelineSnapshot,
    StepInfo,
    StepRuns,
)
from ccat_wm.gaps.pipeline_query import current_runs_cte, groups_statement
from ccat_wm.gaps.steps import load_steps, pipeline_info
from ccat_wm.selection.dimensions import DIMENSIONS
from ccat_wm.selection.query import Selection, key_expression, selection
from ccat_wm.selection.tables import FILTER_TABLES

RUN = m.ExecutedReductionStep
WHOLE_BUDGET = 2**30
"""Failed attempts a run counts for when it failed in a way no retry can mend
(`UNRETRYABLE_FAILURES`): more than any step's `max_retries + 1`."""
PACKAGE = m.RawDataPackage


@lru_cache(maxsize=1)
def _failures_query() -> Any:
    """Select runs in flight, and FAILED runs newer than the sub-group's current run.

    Failures before a person's latest `retry` or `forced` run of the sub-group do not
    count: that run starts a fresh retry budget.

    The latest COMPLETED run is found per failed run through the index on (step, key)
    (an invalidated run no longer current still ends the failures before it), and the
    rows through the index on runs that are not COMPLETED, so this stays cheap with a
    long history.
    """
    # long: one SQL statement whose parts refer to each other
    in_flight = [s.value for s in m.UNFINISHED_STATUSES]
    current = aliased(RUN)
    latest_completed = (  # the latest COMPLETED run, current or since invalidated
        select(func.max(current.id))
        .where(
            current.reduction_step_id == RUN.reduction_step_id,
            current.sub_group_key == RUN.sub_group_key,
            current.status == m.RunStatus.COMPLETED,
        )
        .scalar_subquery()
    )
    keys = (
        RUN.reduction_step_id,
        RUN.sub_group_key,
        RUN.status,
        RUN.input_fingerprint,
        RUN.config_fingerprint,
        RUN.reduction_software_version_id,
    )
    reset = aliased(RUN)
    latest_reset = (  # a person's retry or force starts a fresh retry budget
        select(func.max(reset.id))
        .where(
            reset.reduction_step_id == RUN.reduction_step_id,
            reset.sub_group_key == RUN.sub_group_key,
            reset.reason.in_([m.GapReason.RETRY, m.GapReason.FORCED]),
        )
        .scalar_subquery()
    )
    attempts = case(  # a failure no retry can mend uses up the whole budget
        (
            and_(RUN.status == m.RunStatus.FAILED,
                 RUN.failure_kind.in_(sorted(m.UNRETRYABLE_FAILURES))),
            literal(WHOLE_BUDGET),
        ),
        else_=RUN.retry_count + 1,
    )  # fmt: skip
    failed_since = and_(
        RUN.status == m.RunStatus.FAILED,
        RUN.id > func.coalesce(latest_completed, 0),
        RUN.id >= func.coalesce(latest_reset, 0),
    )
    return (
        select(*keys, func.sum(attempts).label("failures"))
        .where(
            RUN.reduction_step_id.in_(bindparam("step_ids", expanding=True)),
            RUN.status != m.RunStatus.COMPLETED,  # lets PostgreSQL use the partial index
            or_(RUN.status.in_(in_flight), failed_since),
        )
        .group_by(*keys)
    )


def load_run_states(session: Session, steps: list[StepInfo]) -> dict[str, StepRuns]:
    """Load the steps' runs in flight and failures since their current runs (one query)."""
    names = {s.id: s.name for s in steps}
    runs = {s.name: StepRuns() for s in steps}
    params = {"step_ids": list(names)}
    for fail in session.connection().execute(_failures_query(), params):
        state = runs[names[fail.reduction_step_id]]
        if fail.status is m.RunStatus.FAILED:
            record = FailureRecord(
                fail.input_fingerprint,
                fail.config_fingerprint,
                fail.reduction_software_version_id,
                int(fail.failures),
            )
            state.failures.setdefault(fail.sub_group_key, []).append(record)
        else:
            state.in_flight.add(fail.sub_group_key)
    for step_id, key in session.connection().execute(_invalidated_query(), params):
        runs[names[step_id]].invalidated.add(key)
    for step_id, key in session.connection().execute(_qa_changed_query(), params):
        runs[names[step_id]].qa_changed.add(key)
    return runs


@lru_cache(maxsize=1)
def _qa_changed_query() -> Any:
    """Select the keys a person's quality decision changed since their current run."""
    change, decision = m.QaChange, m.QaDecision
    current = (
        select(RUN.created_at)
        .where(
            RUN.reduction_step_id == change.reduction_step_id,
            RUN.sub_group_key == change.sub_group_key,
            RUN.is_current,
        )
        .scalar_subquery()
    )
    return (
        select(change.reduction_step_id, change.sub_group_key)
        .join(decision, decision.id == change.qa_decision_id)
        .where(
            change.reduction_step_id.in_(bindparam("step_ids", expanding=True)),
            or_(current.is_(None), current < decision.created_at),
        )
        .distinct()
    )


@lru_cache(maxsize=1)
def _invalidated_query() -> Any:
    """Select the keys of the steps' COMPLETED runs that active invalidations reached."""
    mark, reached = m.Invalidation, m.InvalidatedRun
    return (
        select(RUN.reduction_step_id, RUN.sub_group_key)
        .join(reached, reached.executed_reduction_step_id == RUN.id)
        .join(mark, mark.id == reached.invalidation_id)
        .where(
            mark.undone_at.is_(None),
            RUN.status == m.RunStatus.COMPLETED,
            RUN.reduction_step_id.in_(bindparam("step_ids", expanding=True)),
        )
        .distinct()
    )


def _unprocessed(
    session: Session, sel: Selection, steps: list[StepInfo], step: StepInfo
) -> dict[tuple[str, ...], dt.datetime | None]:
    """Per finest group: ingest time of the oldest package the step's current run has not seen."""
    dims = sorted({d for s in steps for d in s.group_by})
    ids: list[ColumnElement[Any]] = [FILTER_TABLES[DIMENSIONS[d].table].c.id for d in dims]
    keys = [key_expression(s.group_by) for s in steps]
    current = current_runs_cte(step)
    unseen = or_(current.c.created_at.is_(None), PACKAGE.created_at > current.c.created_at)
    query = (
        select(*keys, func.min(PACKAGE.created_at).filter(unseen))
        .select_from(
            sel.from_clause.outerjoin(
                current, current.c.sub_group_key == key_expression(step.group_by)
            )
        )
        .where(sel.where)
        .group_by(*ids)
    )
    out: dict[tuple[str, ...], dt.datetime | None] = {}
    for row in session.connection().execute(query):
        values: tuple[Any, ...] = tuple(row)
        out[values[:-1]] = values[-1]
    return out


def load_snapshot(
    session: Session, pipeline: m.Pipeline, *, prune: bool = True
) -> PipelineSnapshot:
    """Read everything `evaluate` needs about `pipeline`.

    `prune=False` also returns settled root sub-groups (needed to force reprocessing).
    """
    # PostgreSQL's JIT compiles this statement for ~2 s at 100k packages (its row
    # estimates through the CTEs are far too high) to save milliseconds: never worth it.
    session.execute(text("SET LOCAL jit = off"))
    grouping = session.get_one(m.DataGrouping, pipeline.data_grouping_id)
    steps = load_steps(session, pipeline.id)
    runs = load_run_states(session, steps)
    in_flight = {name: state.in_flight for name, state in runs.items()}
    sel = selection(
        grouping.filter_rules,
        grouping.instrument_module_id,
        sorted({d for s in steps for d in s.group_by}),
    )
    unprocessed = {
        i: _unprocessed(session, sel, steps, s)
        for i, s in enumerate(steps)
        if not s.upstream and s.max_wait_seconds is not None
    }
    rows: list[list[GroupRow]] = [[] for _ in steps]
    width = len(steps)
    statement, params = groups_statement(grouping, steps, in_flight, prune=prune)
    for row in session.connection().execute(statement, params):
        values: tuple[Any, ...] = tuple(row)
        index, key = values[0], values[1]
        keys = values[2 : 2 + width]
        count, hash_sum, last_change, oldest = values[2 + width : 6 + width]
        run_id, version_id, config_fp, input_fp, created, finished = values[6 + width :]
        if index in unprocessed:
            oldest = unprocessed[index].get(keys)
        if run_id is not None:
            runs[steps[index].name].current[key] = CurrentRun(
                run_id, version_id, config_fp, input_fp, created, finished
            )
        rows[index].append(
            GroupRow(index, key, keys, int(count), int(hash_sum), last_change, oldest)
        )
    return PipelineSnapshot(pipeline_info(pipeline), steps, rows, runs, pruned=prune)
