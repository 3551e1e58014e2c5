"""`ccat-wm retry`: a fresh retry budget for failed sub-groups (docs/concepts.md 3.2).

A sub-group is `failed` when its runs failed `max_retries + 1` times on the same input
set, config and version; gap evaluation then leaves it alone. A person's retry creates
a new PENDING run for it with reason `retry`: the runner gives that run the step's
whole budget again (`retry_count` starts at 0), and if it fails again it is `failed`
at once. Nothing is deleted or rewritten: the failed runs stay in the history.

Only failed sub-groups are retried. Naming a sub-group or run that is not failed is an
error that says what it is and which command runs it instead.

Prefect's Retry on a pipeline flow run does the same for the sub-groups that flow run
failed (`retry_flow_run_failures`): those still failed get a fresh budget, the others
(retried or fixed since) are left alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.errors import CcatWmError
from ccat_wm.execution.waves import downstream_closure
from ccat_wm.gaps.create import CreatedRun, create_runs
from ccat_wm.gaps.evaluate import evaluate
from ccat_wm.gaps.model import Gap, GapReason, PipelineSnapshot
from ccat_wm.gaps.snapshot import load_snapshot
from ccat_wm.lookup import pipeline_by_name
from ccat_wm.selection.dimensions import display_key

RUN = m.ExecutedReductionStep


@dataclass(frozen=True, slots=True)
class RetryResult:
    """Runs a retry created, and the sub-group keys a flow run should execute for them."""

    pipeline: str
    created: list[CreatedRun]
    follow_keys: list[str]
    """The retried keys and those of the downstream sub-groups containing them."""


def _runs_sub_groups(
    session: Session, pipeline: str, run_ids: Sequence[int]
) -> set[tuple[str, str]]:
    """Map run ids to their (step, sub_group_key); unknown or foreign ids are an error."""
    if not run_ids:
        return set()
    rows = session.execute(
        select(RUN.id, m.ReductionStep.name, RUN.sub_group_key, m.Pipeline.name)
        .join(RUN.reduction_step)
        .join(m.ReductionStep.pipeline)
        .where(RUN.id.in_(list(run_ids)))
    ).all()
    found = {rid: (step, key, owner) for rid, step, key, owner in rows}
    missing = sorted(set(run_ids) - set(found))
    if missing:
        raise CcatWmError(f"no run with id {', '.join(map(str, missing))}; see `ccat-wm status`")
    foreign = sorted(rid for rid, (_, _, owner) in found.items() if owner != pipeline)
    if foreign:
        raise CcatWmError(
            f"run {', '.join(map(str, foreign))} is not a run of pipeline {pipeline!r}"
        )
    return {(step, key) for step, key, _ in found.values()}


def _not_failed_message(pipeline: str, step: str, key: str, gaps: list[Gap]) -> str:
    gap = next((g for g in gaps if g.step == step and g.sub_group_key == key), None)
    where = f"sub-group {display_key(key)!r} of step {step!r}"
    if gap is None:
        return (
            f"{where} is not failed: it is up to date or has a run in flight "
            f"(see `ccat-wm status {pipeline} --step {step}`); `ccat-wm run {pipeline} "
            "--force` re-runs it"
        )
    return (
        f"{where} is not failed: it is a gap with reason {gap.reason.value!r}; "
        f"`ccat-wm run {pipeline}` runs it"
    )


def _follow_keys(snapshot: PipelineSnapshot, retried: set[tuple[str, str]]) -> list[str]:
    """Return the retried keys and, transitively, the downstream keys containing them."""
    return sorted({key for _, key in downstream_closure(snapshot, retried)})


def retry_failed(
    session: Session,
    pipeline: str,
    now: dt.datetime,
    *,
    step: str | None = None,
    sub_groups: Sequence[str] = (),
    run_ids: Sequence[int] = (),
) -> RetryResult:
    """Create `retry` runs for the pipeline's failed sub-groups (optionally narrowed). No commit.

    `sub_groups` are keys (`""` for all data); `run_ids` name the sub-groups of those runs.
    Without either, every failed sub-group (of `step`, if given) is retried.
    """
    record = pipeline_by_name(session, pipeline)
    snapshot = load_snapshot(session, record)
    names = [s.name for s in snapshot.steps]
    if step is not None and step not in names:
        raise CcatWmError(
            f"pipeline {pipeline!r} has no step {step!r}; its steps: {', '.join(names)}"
        )
    gaps = evaluate(snapshot, now, manual=True)
    failed = {
        (g.step, g.sub_group_key): g
        for g in gaps
        if g.reason is GapReason.FAILED and (step is None or g.step == step)
    }
    named = _runs_sub_groups(session, pipeline, run_ids)
    problems = [
        _not_failed_message(pipeline, s, key, gaps) for s, key in sorted(named - set(failed))
    ]
    for key in sub_groups:
        matches = {(s, k) for s, k in failed if k == key}
        if matches:
            named |= matches
        elif step is not None:
            problems.append(_not_failed_message(pipeline, step, key, gaps))
        else:
            problems.append(
                f"no step of pipeline {pipeline!r} has a failed sub-group {display_key(key)!r}; "
                f"see `ccat-wm plan {pipeline}`"
            )
    if problems:
        raise CcatWmError("; ".join(problems))
    chosen = [failed[k] for k in sorted(named)] if named else list(failed.values())
    return _retry(session, snapshot, pipeline, chosen)


def _retry(
    session: Session, snapshot: PipelineSnapshot, pipeline: str, chosen: list[Gap]
) -> RetryResult:
    """Create a `retry` run (a fresh budget) for each chosen failed sub-group."""
    retries = [dataclasses.replace(g, reason=GapReason.RETRY, eligible=True) for g in chosen]
    created = create_runs(session, snapshot, retries)
    retried = {(c.step, c.sub_group_key) for c in created}
    return RetryResult(pipeline, created, _follow_keys(snapshot, retried) if retried else [])


def retry_flow_run_failures(engine: Engine, pipeline: str, flow_run_id: str) -> RetryResult:
    """Give the sub-groups a flow run failed, and that are still failed, a fresh budget.

    What Prefect's Retry of a pipeline flow run means: the flow run then executes the
    returned keys (downstream included). Committed; an empty result when nothing it
    failed is still failed.
    """
    with Session(engine) as session, session.begin():
        owned = set(
            session.execute(
                select(m.ReductionStep.name, RUN.sub_group_key)
                .join(RUN.reduction_step)
                .where(RUN.prefect_flow_run_id == flow_run_id, RUN.status == m.RunStatus.FAILED)
            ).tuples()
        )
        record = pipeline_by_name(session, pipeline)
        snapshot = load_snapshot(session, record)
        gaps = evaluate(snapshot, dt.datetime.now(dt.UTC), manual=True)
        chosen = [
            g for g in gaps
            if g.reason is GapReason.FAILED and (g.step, g.sub_group_key) in owned
        ]  # fmt: skip
        if not chosen:
            return RetryResult(pipeline, [], [])
        return _retry(
            session, snapshot, pipeline, sorted(chosen, key=lambda g: (g.step, g.sub_group_key))
        )
