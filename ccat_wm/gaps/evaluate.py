"""The gap rules of docs/concepts.md 3.2: a pure function of a snapshot and `now`.

Choices where the design is silent (also in the README):
- A `failed` (step, sub-group) does not block downstream readiness: the downstream
  step proceeds with the products that exist, so one bad scan cannot hold back a map.
- A not-ready downstream gap has no `eligible_at` yet: it depends on upstream runs.
- MANUAL pipelines are never due on their own; `manual=True` (a person asked) makes every
  ready gap due at once, ignoring cooldown, maximum wait and schedules.
- CRON pipelines' gaps are due at the first pipeline tick after their quiet period.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field

from ccat_ops_db.models import TriggerType
from ccat_wm.gaps.cron import tick_at_or_after
from ccat_wm.gaps.model import (
    CurrentRun,
    Gap,
    GapReason,
    GroupRow,
    PipelineSnapshot,
    StepInfo,
    StepRuns,
    fingerprint,
)


@dataclass(slots=True)
class _SubGroup:
    """Inputs of one (step, sub-group), summed over its rows."""

    count: int = 0
    hash_sum: int = 0
    last_change: dt.datetime | None = None
    oldest_unprocessed: dt.datetime | None = None
    rows: list[GroupRow] = field(default_factory=list)

    def add(self, row: GroupRow) -> None:
        self.count += row.inputs
        self.hash_sum += row.hash_sum
        self.rows.append(row)
        if row.last_change is not None and (
            self.last_change is None or row.last_change > self.last_change
        ):
            self.last_change = row.last_change
        unseen = row.oldest_unprocessed
        if unseen is not None and (
            self.oldest_unprocessed is None or unseen < self.oldest_unprocessed
        ):
            self.oldest_unprocessed = unseen


def _sub_groups(rows: list[GroupRow]) -> dict[str, _SubGroup]:
    out: dict[str, _SubGroup] = defaultdict(_SubGroup)
    for row in rows:
        out[row.key].add(row)
    return out


def _version_valid(step: StepInfo, run: CurrentRun) -> bool:
    """Tell whether the policy accepts the run's version (the rule the database prunes by)."""
    return step.run_version is None or run.version_id in step.valid_version_ids


def _reason(
    step: StepInfo,
    run: CurrentRun | None,
    sub: _SubGroup,
    ready: bool,
    *,
    invalidated: bool,
    qa_changed: bool,
) -> GapReason | None:
    if run is None:
        if not (sub.count or not ready):
            return None
        # Its result was made from data a person invalidated: re-made for that reason.
        if invalidated:
            return GapReason.INVALIDATED
        return GapReason.QA_CHANGED if qa_changed else GapReason.NEW
    if not ready:
        return GapReason.INPUTS_CHANGED
    # every input rejected: nothing to re-make it from (docs/gaps.md)
    reason = _stale(step, run, sub) if sub.count else None
    if reason is GapReason.INPUTS_CHANGED and qa_changed:  # a person's decision did it
        return GapReason.QA_CHANGED
    return reason


def _stale(step: StepInfo, run: CurrentRun, sub: _SubGroup) -> GapReason | None:
    """Say why a ready sub-group's current run no longer counts, if it does not."""
    if not _version_valid(step, run):
        return GapReason.VERSION_CHANGED
    if run.config_fingerprint != step.config_fingerprint:
        return GapReason.CONFIG_CHANGED
    if run.input_fingerprint != fingerprint(sub.count, sub.hash_sum):
        return GapReason.INPUTS_CHANGED
    return None


def _has_failed(step: StepInfo, runs: StepRuns, key: str, fingerprint: str) -> bool:
    version = step.run_version.id if step.run_version else None
    failures = sum(
        record.failures
        for record in runs.failures.get(key, ())
        if record.input_fingerprint == fingerprint
        and record.config_fingerprint == step.config_fingerprint
        and record.version_id == version
    )
    return failures >= step.max_retries + 1


def _eligible_at(
    snapshot: PipelineSnapshot, step: StepInfo, sub: _SubGroup, now: dt.datetime, manual: bool
) -> dt.datetime | None:
    pipeline = snapshot.pipeline
    if manual:
        return now
    if pipeline.trigger_type is TriggerType.MANUAL:
        return None
    base = (sub.last_change or now) + dt.timedelta(seconds=step.cooldown_seconds)
    if step.max_wait_seconds is not None and sub.oldest_unprocessed is not None:
        base = min(base, sub.oldest_unprocessed + dt.timedelta(seconds=step.max_wait_seconds))
    if step.schedule:
        base = tick_at_or_after(step.schedule, pipeline.timezone, base)
    if pipeline.trigger_type is TriggerType.CRON and pipeline.cron:
        base = tick_at_or_after(pipeline.cron, pipeline.timezone, base)
    return base


@dataclass(frozen=True, slots=True)
class _Context:
    """What every step's evaluation shares."""

    snapshot: PipelineSnapshot
    now: dt.datetime
    manual: bool
    force: bool
    blocked: list[set[str]]
    """Per step: keys with an unsettled upstream sub-group inside (not ready)."""
    downstream: list[list[int]]
    """Per step: indices of the steps that depend on it directly."""


def _gap(
    ctx: _Context, step: StepInfo, key: str, sub: _SubGroup, *, reason: GapReason, ready: bool
) -> Gap:
    input_fp = fingerprint(sub.count, sub.hash_sum)
    runs = ctx.snapshot.runs[step.name]
    if ready and not ctx.force and _has_failed(step, runs, key, input_fp):
        # Not ready: no run (manual or not) executes it until a person retries it.
        return Gap(
            ctx.snapshot.pipeline.name, step.name, key, GapReason.FAILED,
            False, None, False, sub.count, input_fp,
        )  # fmt: skip
    eligible_at = _eligible_at(ctx.snapshot, step, sub, ctx.now, ctx.manual) if ready else None
    return Gap(
        pipeline=ctx.snapshot.pipeline.name,
        step=step.name,
        sub_group_key=key,
        reason=reason,
        ready=ready,
        eligible_at=eligible_at,
        eligible=ready and eligible_at is not None and eligible_at <= ctx.now,
        inputs=sub.count,
        input_fingerprint=input_fp,
    )


def _hold_back(ctx: _Context, position: int, sub: _SubGroup) -> None:
    """Mark the downstream sub-groups containing this unsettled one as not ready."""
    for row in sub.rows:
        for down in ctx.downstream[position]:
            key = row.keys[down]
            if key is not None:
                ctx.blocked[down].add(key)


@dataclass(frozen=True, slots=True)
class Timing:
    """What a gap's `eligible_at` is computed from, besides the step and `now`."""

    last_change: dt.datetime | None
    oldest_unprocessed: dt.datetime | None


def _step_gaps(ctx: _Context, position: int) -> list[tuple[Gap, Timing]]:
    step = ctx.snapshot.steps[position]
    runs = ctx.snapshot.runs[step.name]
    blocked = ctx.blocked[position]
    subs = _sub_groups(ctx.snapshot.rows[position])
    gaps: list[tuple[Gap, Timing]] = []
    for key in sorted(subs):
        sub = subs[key]
        if key in runs.in_flight:
            _hold_back(ctx, position, sub)
            continue
        ready = key not in blocked
        reason = _reason(
            step, runs.current.get(key), sub, ready,
            invalidated=key in runs.invalidated, qa_changed=key in runs.qa_changed,
        )  # fmt: skip
        if ready and ctx.force and sub.count:
            reason = GapReason.FORCED  # a person's force is the cause, whatever else applies
        if reason is None:
            continue
        gap = _gap(ctx, step, key, sub, reason=reason, ready=ready)
        gaps.append((gap, Timing(sub.last_change, sub.oldest_unprocessed)))
        if gap.reason is not GapReason.FAILED:
            _hold_back(ctx, position, sub)
    return gaps


def evaluate(
    snapshot: PipelineSnapshot, now: dt.datetime, *, manual: bool = False, force: bool = False
) -> list[Gap]:
    """Return every gap (and every `failed` sub-group) of the pipeline at `now`.

    `manual`: a person asked, so ready gaps are due now. `force`: every ready sub-group
    with inputs is a gap with reason `forced` (the run records that a person forced it,
    whatever else applies), failed ones included; it needs a snapshot loaded with
    `prune=False`.
    """
    return [gap for gap, _ in evaluate_timed(snapshot, now, manual=manual, force=force)]


def evaluate_timed(
    snapshot: PipelineSnapshot,
    now: dt.datetime,
    *,
    manual: bool = False,
    force: bool = False,
    blocked: dict[int, set[str]] | None = None,
) -> list[tuple[Gap, Timing]]:
    """`evaluate`, with each gap's timing inputs (to re-time a kept gap at a later `now`).

    `blocked`: per step index, keys already known not to be ready (an unsettled upstream
    sub-group inside that is not in the snapshot: incremental evaluation reads only
    what changed).
    """
    if not snapshot.pipeline.enabled:
        return []
    if force and snapshot.pruned:
        raise ValueError("force needs a full snapshot: load_snapshot(..., prune=False)")
    names = [s.name for s in snapshot.steps]
    downstream = [[i for i, s in enumerate(snapshot.steps) if name in s.upstream] for name in names]
    seeds = blocked or {}
    ctx = _Context(
        snapshot, now, manual, force, [set(seeds.get(i, ())) for i in range(len(names))], downstream
    )
    gaps: list[tuple[Gap, Timing]] = []
    for position in range(len(names)):
        gaps.extend(_step_gaps(ctx, position))
    return gaps


def retime(
    snapshot: PipelineSnapshot, step: StepInfo, gap: Gap, timing: Timing, now: dt.datetime
) -> Gap:
    """Return a kept gap as a trigger's evaluation at `now` reports it (manual=False)."""
    if gap.reason is GapReason.FAILED or not gap.ready:
        return gap
    sub = _SubGroup(last_change=timing.last_change, oldest_unprocessed=timing.oldest_unprocessed)
    eligible_at = _eligible_at(snapshot, step, sub, now, False)
    return Gap(
        pipeline=gap.pipeline,
        step=gap.step,
        sub_group_key=gap.sub_group_key,
        reason=gap.reason,
        ready=True,
        eligible_at=eligible_at,
        eligible=eligible_at is not None and eligible_at <= now,
        inputs=gap.inputs,
        input_fingerprint=gap.input_fingerprint,
    )
