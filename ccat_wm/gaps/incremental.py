"""Incremental gap evaluation for trigger ticks: the cost of what changed, the full result.

`evaluate_incremental` returns exactly what `evaluate(load_snapshot(...), now)` returns
(a randomized test holds them equal after every kind of change), but reads only the
sub-groups that changed since the pipeline's previous tick:

1. The database logs every change that can move a gap (`evaluation_change`, written by
   triggers: a scan's packages, a (step, sub-group)'s runs, invalidations, renamed
   dimensions). The tick reads the changes since its watermark: the oldest transaction
   still running at the previous tick, so a change committed late by a transaction that
   started early is never skipped (one read twice is harmless).
2. Per pipeline the database keeps the selected packages aggregated per scan and module
   with every step's key (`evaluation_fine`), which upstream sub-group lies inside which
   downstream one (`evaluation_member`), each downstream sub-group's inputs
   (`evaluation_downstream`) and the last gaps (`evaluation_gap`, with what their timing
   is computed from).
3. The changed scans' aggregates are rebuilt; their keys, and the keys whose runs
   changed, are dirty; dirtiness flows downstream through the member table. Only dirty
   sub-groups are read and evaluated, by `evaluate` itself, on a snapshot holding just
   them; an unsettled upstream sub-group outside it blocks its downstream sub-groups as
   the full evaluation would. Every kept gap is re-timed at `now`.
4. A new pipeline, a changed definition (steps, configs, versions, trigger, selection)
   or a renamed dimension rebuilds everything with the full evaluation: such a change
   touches every sub-group anyway.

`ccat-wm plan`, manual and forced runs keep the full evaluation (`load_snapshot`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.gaps.evaluate import Timing, evaluate_timed, retime
from ccat_wm.gaps.kept import KeptEvaluation
from ccat_wm.gaps.model import Gap, GapReason, PipelineSnapshot, StepInfo
from ccat_wm.gaps.snapshot import load_run_states, load_snapshot
from ccat_wm.gaps.steps import load_steps, pipeline_info

CHANGE = m.EvaluationChange
STATE = m.EvaluationState
EVALUATION_LOCK_SPACE = 0x6363_6174 + 2
"""First key of the advisory lock that serializes one pipeline's incremental evaluations."""
STATE_TTL = dt.timedelta(days=1)
"""Kept evaluations not refreshed for this long are dropped (and rebuilt when needed),
so that a pipeline no tick evaluates any more does not hold the change log forever."""


@dataclass(slots=True)
class Changes:
    """What changed since a watermark."""

    scans: set[int] = field(default_factory=set)
    runs: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    """Per step id: keys whose runs changed."""
    everything: bool = False


@dataclass(frozen=True, slots=True)
class IncrementalResult:
    """An incremental evaluation: its gaps and what it had to read."""

    snapshot: PipelineSnapshot
    """Steps and settings (rows only of the sub-groups it re-evaluated)."""
    gaps: list[Gap]
    rebuilt: bool
    """True when it evaluated the whole history (first tick, definition changed, ...)."""
    dirty: int
    """Sub-groups re-evaluated (when rebuilt: the rows of the full snapshot)."""


def transaction_watermark(session: Session) -> int:
    """Return the oldest transaction id still running: every older one is visible now."""
    value = session.execute(
        text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
    ).scalar_one()
    return int(value)


def read_changes(session: Session, since: int) -> Changes:
    """Return the changes written by transactions from `since` on."""
    changes = Changes()
    query = select(
        CHANGE.executed_obs_unit_id, CHANGE.reduction_step_id, CHANGE.sub_group_key,
        CHANGE.everything,
    ).where(CHANGE.xid >= since)  # fmt: skip
    for scan, step_id, key, everything in session.execute(query):
        if everything:
            changes.everything = True
        if scan is not None:
            changes.scans.add(scan)
        if step_id is not None and key is not None:
            changes.runs[step_id].add(key)
    return changes


def definition_fingerprint(
    pipeline: m.Pipeline, grouping: m.DataGrouping, steps: Sequence[StepInfo]
) -> str:
    """Fingerprint of everything a pipeline's gaps depend on besides data and runs."""
    payload = repr(
        (
            pipeline_info(pipeline),
            tuple(steps),
            json.dumps(grouping.filter_rules, sort_keys=True),
            grouping.instrument_module_id,
        )
    )
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def _lock(session: Session, pipeline_id: int) -> None:
    session.execute(
        text("SELECT pg_advisory_xact_lock(:space, :id)"),
        {"space": EVALUATION_LOCK_SPACE, "id": pipeline_id},
    )


def evaluate_incremental(
    session: Session, pipeline: m.Pipeline, now: dt.datetime
) -> IncrementalResult:
    """Return the pipeline's gaps at `now` as a trigger sees them (module docstring).

    Writes what it keeps; does not commit. Equal to `evaluate(load_snapshot(session,
    pipeline), now)`; costs what changed since the pipeline's previous evaluation.
    """
    _lock(session, pipeline.id)
    watermark = transaction_watermark(session)
    grouping = session.get_one(m.DataGrouping, pipeline.data_grouping_id)
    steps = load_steps(session, pipeline.id)
    kept = KeptEvaluation(session, pipeline.id, grouping, steps)
    definition = definition_fingerprint(pipeline, grouping, steps)
    state = session.get(STATE, pipeline.id)
    changes = read_changes(session, state.watermark) if state is not None else None
    if state is None or state.definition != definition or changes is None or changes.everything:
        kept.rebuild()
        snapshot = load_snapshot(session, pipeline, prune=True)
        kept.keep_downstream(snapshot.rows)
        fresh = evaluate_timed(snapshot, now)
        kept.store(None, fresh)
        result = IncrementalResult(
            snapshot, [gap for gap, _ in fresh], True, sum(len(r) for r in snapshot.rows)
        )
    else:
        result = _update(kept, pipeline, changes, now)
    if state is None:
        state = STATE(pipeline_id=pipeline.id)
        session.add(state)
    state.definition = definition
    state.watermark = watermark
    state.evaluated_at = now
    session.flush()
    return result if pipeline.enabled else replace(result, gaps=[])


def _update(
    kept: KeptEvaluation, pipeline: m.Pipeline, changes: Changes, now: dt.datetime
) -> IncrementalResult:
    """Re-evaluate the sub-groups `changes` touch; keep (and re-time) the others' gaps."""
    steps = kept.steps
    dirty: list[set[str]] = [set() for _ in steps]
    reread: list[set[str]] = [set() for _ in steps]  # downstream: inputs may have changed
    if changes.scans:
        reread = kept.refresh_scans(changes.scans, dirty)
    changed_runs = [set(changes.runs.get(step.id, ())) for step in steps]
    for index in range(len(steps)):
        dirty[index] |= changed_runs[index]
        reread[index] |= changed_runs[index]
    kept.propagate(dirty)
    kept.reread_inputs(changed_runs, reread)
    runs = load_run_states(kept.session, list(steps))
    info = pipeline_info(pipeline)
    snapshot = PipelineSnapshot(info, list(steps), [[] for _ in steps], runs, pruned=True)
    before = kept.gaps(info.name)
    fresh: list[tuple[Gap, Timing]] = []
    if any(dirty):
        unsettled: list[set[str]] = [set(runs[s.name].in_flight) for s in steps]
        for index, gap, _ in before:
            if gap.reason is not GapReason.FAILED:
                unsettled[index].add(gap.sub_group_key)
        for index, step in enumerate(steps):
            if not dirty[index]:
                continue
            current = runs[step.name].current = kept.current_runs(index, dirty[index])
            snapshot.rows[index] = (
                kept.downstream_rows(index, dirty[index], reread[index] & dirty[index])
                if step.upstream
                else kept.root_rows(index, dirty[index], current)
            )
        blocked = kept.blocked_from_outside(dirty, unsettled)
        fresh = evaluate_timed(snapshot, now, blocked=blocked)
        kept.store(dirty, fresh)
    position = {s.name: i for i, s in enumerate(steps)}
    gaps = [
        (index, retime(snapshot, steps[index], gap, timing, now))
        for index, gap, timing in before
        if gap.sub_group_key not in dirty[index]
    ] + [(position[gap.step], gap) for gap, _ in fresh]
    gaps.sort(key=lambda item: (item[0], item[1].sub_group_key))
    dirty_count = sum(len(keys) for keys in dirty)
    return IncrementalResult(snapshot, [gap for _, gap in gaps], False, dirty_count)


def prune_change_log(session: Session, now: dt.datetime) -> int:
    """Forget kept evaluations unused for `STATE_TTL`, then changes every one has read."""
    session.execute(delete(STATE).where(STATE.evaluated_at < now - STATE_TTL))
    oldest = session.scalar(select(func.min(STATE.watermark)))
    if oldest is None:
        oldest = transaction_watermark(session)
    result = session.execute(delete(CHANGE).where(CHANGE.xid < oldest))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
