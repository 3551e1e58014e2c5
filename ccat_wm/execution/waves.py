"""What one pipeline flow run executes: its wave of runs and the follow-ups they unlock.

`prepare_wave` evaluates the pipeline, creates PENDING runs for the eligible gaps, claims
the pipeline's unclaimed PENDING runs for the flow run (so two flow runs never execute
the same run), and lists the downstream sub-groups that become ready as these runs
finish, each with the wave items inside it. A follow-up waits only for those items, not
for its whole upstream step; when they are done, `claim_follow_up` evaluates that one
sub-group again and creates, claims and returns its run if it is now due.

`sub_groups` restricts a flow run to runs whose key is listed (any step).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.execution.backends import location_backend
from ccat_wm.execution.claims import dead_claims
from ccat_wm.gaps.create import create_runs
from ccat_wm.gaps.evaluate import evaluate
from ccat_wm.gaps.model import Gap, GapReason, PipelineSnapshot
from ccat_wm.gaps.snapshot import load_snapshot
from ccat_wm.lookup import pipeline_by_name
from infra.backends import BackendError

RUN = m.ExecutedReductionStep


@dataclass(frozen=True, slots=True)
class WaveItem:
    """One sub-group a flow run executes: a claimed run, or a follow-up created later."""

    step: str
    sub_group_key: str
    run_id: int | None
    """None for a follow-up: its run is created when its upstream items are done."""
    upstream: tuple[int, ...] = ()
    """Indices (in the wave) of the items it waits for."""


@dataclass(frozen=True, slots=True)
class Wave:
    """Items in an order where every item comes after those it waits for."""

    pipeline: str
    items: tuple[WaveItem, ...]
    step_limits: dict[str, int]
    """`max_concurrent_runs` per step."""
    step_retries: dict[str, int] = field(default_factory=dict)
    """`max_retries` per step (a run makes at most one more attempt than this)."""
    location: str = ""
    """The pipeline's processing location."""
    submit_ahead: bool = False
    """The location's backend submits in bulk (SLURM): the flow starts the wave's first runs
    together (`RunExecutor.start_many`) before their task runs follow them."""


def first_runs(items: Sequence[WaveItem]) -> dict[str, list[int]]:
    """Return, by step, the runs that wait for nothing in the wave (`start_many` may start)."""
    out: dict[str, list[int]] = {}
    for item in items:
        if item.run_id is not None and not item.upstream:
            out.setdefault(item.step, []).append(item.run_id)
    return out


def _evaluate(
    session: Session, name: str, now: dt.datetime, *, manual: bool, force: bool
) -> tuple[PipelineSnapshot, list[Gap]]:
    pipeline = pipeline_by_name(session, name)
    snapshot = load_snapshot(session, pipeline, prune=not force)
    return snapshot, evaluate(snapshot, now, manual=manual, force=force)


def _claim_wave(session: Session, step_ids: list[int], claim_as: str) -> list[Any]:
    """Claim the steps' unclaimed PENDING runs and the unfinished runs of dead claims.

    Returns (run id, step id, sub-group key) of each run now claimed as `claim_as`.
    """
    claims = session.scalars(
        select(RUN.prefect_flow_run_id)
        .where(
            RUN.reduction_step_id.in_(step_ids),
            RUN.status.in_(m.UNFINISHED_STATUSES),
            RUN.prefect_flow_run_id.is_not(None),
            RUN.prefect_flow_run_id != claim_as,
        )
        .distinct()
    ).all()
    dead = sorted(dead_claims(session, [c for c in claims if c]))
    claim = (
        update(RUN)
        .where(
            RUN.reduction_step_id.in_(step_ids),
            (RUN.status == m.RunStatus.PENDING) & RUN.prefect_flow_run_id.is_(None)
            | RUN.status.in_(m.UNFINISHED_STATUSES) & RUN.prefect_flow_run_id.in_(dead),
        )
        .values(prefect_flow_run_id=claim_as)
        .returning(RUN.id, RUN.reduction_step_id, RUN.sub_group_key)
    )
    return list(session.execute(claim, execution_options={"synchronize_session": False}).all())


def _follow_ups(
    snapshot: PipelineSnapshot, gaps: Sequence[Gap], items: Sequence[WaveItem]
) -> list[WaveItem]:
    """Return the follow-ups of the claimed `items`: the waiting gaps downstream of them.

    Each waits for the indices (into `items`, then the follow-ups before it) upstream.
    """
    steps = {s.name: s for s in snapshot.steps}
    order = {s.name: i for i, s in enumerate(snapshot.steps)}
    index = {(i.step, i.sub_group_key): n for n, i in enumerate(items)}
    waiting = sorted(
        (g for g in gaps if not g.ready and g.reason is not GapReason.FAILED),
        key=lambda g: (order[g.step], g.sub_group_key),
    )
    inside = containment(snapshot)
    follow: list[WaveItem] = []
    for gap in waiting:
        if (gap.step, gap.sub_group_key) in index:
            continue
        upstream = sorted(
            {
                index[(up, up_key)]
                for up in steps[gap.step].upstream
                for up_key in inside.get((up, gap.step, gap.sub_group_key), ())
                if (up, up_key) in index
            }
        )
        if upstream:
            index[(gap.step, gap.sub_group_key)] = len(items) + len(follow)
            follow.append(WaveItem(gap.step, gap.sub_group_key, None, tuple(upstream)))
    return follow


def prepare_wave(
    session: Session,
    pipeline: str,
    now: dt.datetime,
    *,
    claim_as: str,
    sub_groups: Sequence[str] | None = None,
    manual: bool = False,
    force: bool = False,
) -> Wave:
    """Create runs for due gaps, claim the pending ones and plan their follow-ups. No commit."""
    wanted = set(sub_groups) if sub_groups is not None else None
    snapshot, gaps = _evaluate(session, pipeline, now, manual=manual, force=force)
    gaps = [g for g in gaps if wanted is None or g.sub_group_key in wanted]
    create_runs(session, snapshot, [g for g in gaps if g.eligible])
    step_ids = {s.id: s.name for s in snapshot.steps}
    claimed = _claim_wave(session, list(step_ids), claim_as)
    order = {s.name: i for i, s in enumerate(snapshot.steps)}
    items: list[WaveItem] = [
        WaveItem(step_ids[step_id], key, run_id)
        for run_id, step_id, key in sorted(
            claimed, key=lambda r: (order[step_ids[r[1]]], r[2], r[0])
        )
    ]
    items += _follow_ups(snapshot, gaps, items)
    step = m.ReductionStep
    rows = session.execute(
        select(step.name, step.max_concurrent_runs, step.max_retries).where(
            step.id.in_(list(step_ids))
        )
    ).all()
    location = session.scalars(
        select(m.DataLocation)
        .select_from(m.Pipeline)
        .join(m.Pipeline.processing_location)
        .where(m.Pipeline.name == pipeline)
    ).first()
    return Wave(
        pipeline,
        tuple(items),
        {r.name: max(1, r.max_concurrent_runs or 1) for r in rows},
        {r.name: max(0, r.max_retries or 0) for r in rows},
        location.name if location else "",
        submit_ahead=location is not None and _submits_in_bulk(location),
    )


def _submits_in_bulk(location: m.DataLocation) -> bool:
    """Whether the location's backend hands many jobs to its scheduler in one call.

    A location whose backend cannot be set up says so in each run's failure instead.
    """
    if location.backend is None:
        return False
    try:
        backend = location_backend(location.backend, Path(location.path), location.settings)
    except (BackendError, ValueError):
        return False
    return backend.submits_in_bulk


def containment(snapshot: PipelineSnapshot) -> dict[tuple[str, str, str], set[str]]:
    """(upstream step, downstream step, downstream key) -> upstream keys inside it."""
    names = [s.name for s in snapshot.steps]
    out: dict[tuple[str, str, str], set[str]] = {}
    for d, step in enumerate(snapshot.steps):
        for up in step.upstream:
            u = names.index(up)
            for rows in snapshot.rows:
                for row in rows:
                    down_key, up_key = row.keys[d], row.keys[u]
                    if down_key is not None and up_key is not None:
                        out.setdefault((up, step.name, down_key), set()).add(up_key)
    return out


def downstream_closure(
    snapshot: PipelineSnapshot, start: set[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Return `(step, key)`s of `start` and, transitively, the downstream ones containing them."""
    inside = containment(snapshot)
    reached, frontier = set(start), set(start)
    while frontier:
        found = {
            (down, down_key)
            for (up, down, down_key), up_keys in inside.items()
            for step, key in frontier
            if up == step and key in up_keys
        }
        frontier = found - reached
        reached |= found
    return reached


@dataclass(frozen=True, slots=True)
class FollowUp:
    """What became of a follow-up once the items it waited for were done."""

    run_id: int | None
    """Its claimed run; None when it is not due."""
    failed_upstream: tuple[tuple[str, str], ...] = ()
    """`(step, key)`s upstream of it (at any depth) that are failed: why it is not due."""


def upstream_closure(snapshot: PipelineSnapshot, step: str, key: str) -> set[tuple[str, str]]:
    """Return the `(step, key)`s inside the sub-group `(step, key)`, transitively upstream."""
    inside = containment(snapshot)
    reached: set[tuple[str, str]] = set()
    frontier = {(step, key)}
    while frontier:
        found = {
            (up, up_key)
            for (up, down, down_key), up_keys in inside.items()
            for f_step, f_key in frontier
            if down == f_step and down_key == f_key
            for up_key in up_keys
        }
        frontier = found - reached
        reached |= found
    return reached


def claim_follow_up(
    session: Session,
    pipeline: str,
    step: str,
    key: str,
    now: dt.datetime,
    *,
    claim_as: str,
    manual: bool = False,
    force: bool = False,
) -> FollowUp:
    """Create (if due) and claim the run of one sub-group. No commit.

    When it is not due, say which failed sub-groups upstream of it keep it from running
    (an operator sees "not run: calibrate[scan-1] failed", not a run that did nothing).
    """
    run_id = _claim(session, pipeline, step, key, claim_as)
    if run_id is not None:
        return FollowUp(run_id)
    snapshot, gaps = _evaluate(session, pipeline, now, manual=manual, force=force)
    due = [g for g in gaps if g.step == step and g.sub_group_key == key and g.eligible]
    if not due:
        failed = {(g.step, g.sub_group_key) for g in gaps if g.reason is GapReason.FAILED}
        blocking = sorted(failed & upstream_closure(snapshot, step, key)) if failed else []
        return FollowUp(None, tuple(blocking))
    create_runs(session, snapshot, due)
    return FollowUp(_claim(session, pipeline, step, key, claim_as))


def _claim(session: Session, pipeline: str, step: str, key: str, claim_as: str) -> int | None:
    step_id = (
        select(m.ReductionStep.id)
        .join(m.ReductionStep.pipeline)
        .where(m.Pipeline.name == pipeline, m.ReductionStep.name == step)
        .scalar_subquery()
    )
    return session.scalar(
        update(RUN)
        .where(
            RUN.reduction_step_id == step_id,
            RUN.sub_group_key == key,
            RUN.status == m.RunStatus.PENDING,
            (RUN.prefect_flow_run_id.is_(None)) | (RUN.prefect_flow_run_id == claim_as),
        )
        .values(prefect_flow_run_id=claim_as)
        .returning(RUN.id),
        execution_options={"synchronize_session": False},
    )
