"""The gap rules of DESIGN 3.2: a pure function of a snapshot and `now`.

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

from ccat_ops_db.models import TriggerType, VersionPolicy
from ccat_wm.gaps.cron import tick_at_or_after
from ccat_wm.gaps.model import (
    CurrentRun,
    Gap,
    GapReason,
    PipelineSnapshot,
    StepInfo,
    StepRuns,
)


@dataclass(slots=True)
class _SubGroup:
    """Inputs of one (step, sub-group) being assembled (plain ints: this runs per scan)."""

    count: int = 0
    hash_sum: int = 0
    last_change: dt.datetime | None = None
    oldest_unprocessed: dt.datetime | None = None
    members: set[tuple[int, str]] = field(default_factory=set)
    """(upstream step index, upstream key) pairs inside this sub-group."""

    def add(
        self, count: int, hash_sum: int, changed: dt.datetime, unprocessed: dt.datetime | None
    ) -> None:
        self.count += count
        self.hash_sum += hash_sum
        if self.last_change is None or changed > self.last_change:
            self.last_change = changed
        if unprocessed is not None and (
            self.oldest_unprocessed is None or unprocessed < self.oldest_unprocessed
        ):
            self.oldest_unprocessed = unprocessed


def _root_inputs(snapshot: PipelineSnapshot, index: int) -> dict[str, _SubGroup]:
    out: dict[str, _SubGroup] = defaultdict(_SubGroup)
    for group in snapshot.groups:
        out[group.keys[index]].add(
            group.packages, group.hash_sum, group.last_change, group.unprocessed[index]
        )
    return out


def _downstream_inputs(
    snapshot: PipelineSnapshot, index: int, upstream: list[int]
) -> dict[str, _SubGroup]:
    out: dict[str, _SubGroup] = defaultdict(_SubGroup)
    for group in snapshot.groups:
        members = out[group.keys[index]].members
        for up in upstream:
            members.add((up, group.keys[up]))
    step = snapshot.steps[index]
    current = snapshot.runs[step.name].current
    upstream_runs = [snapshot.runs[s.name].current for s in snapshot.steps]
    for key, sub in out.items():
        seen_at = current[key].created_at if key in current else None
        for up, up_key in sub.members:
            run = upstream_runs[up].get(up_key)
            if run is not None:
                fresh = seen_at is None or run.finished_at > seen_at
                sub.add(
                    run.product_count,
                    run.product_hash_sum,
                    run.finished_at,
                    run.finished_at if fresh else None,
                )
    return out


def _fingerprint(count: int, hash_sum: int) -> str:
    return f"v1:{count}:{hash_sum}"  # = SetDigest(count, hash_sum).fingerprint, without the object


def _version_valid(step: StepInfo, run: CurrentRun) -> bool:
    if step.run_version is None:
        return True
    if step.version_policy is VersionPolicy.EXACT:
        return run.version_id == step.run_version.id
    return run.version_major == step.run_version.major


def _reason(
    step: StepInfo, run: CurrentRun | None, sub: _SubGroup, ready: bool
) -> GapReason | None:
    if run is None:
        return GapReason.NEW if sub.count or not ready else None
    if not ready:
        return GapReason.INPUTS_CHANGED
    if not _version_valid(step, run):
        return GapReason.VERSION_CHANGED
    if run.config_fingerprint != step.config_fingerprint:
        return GapReason.CONFIG_CHANGED
    if run.input_fingerprint != _fingerprint(sub.count, sub.hash_sum):
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
    names: list[str]
    unsettled: dict[str, set[str]]
    """Step -> keys with a gap or a run in flight: they hold back downstream readiness."""


def _gap(
    ctx: _Context, step: StepInfo, key: str, sub: _SubGroup, *, reason: GapReason, ready: bool
) -> Gap:
    fingerprint = _fingerprint(sub.count, sub.hash_sum)
    runs = ctx.snapshot.runs
    if ready and not ctx.force and _has_failed(step, runs[step.name], key, fingerprint):
        return Gap(
            ctx.snapshot.pipeline.name,
            step.name,
            key,
            GapReason.FAILED,
            True,
            None,
            False,
            sub.count,
            fingerprint,
        )
    ctx.unsettled[step.name].add(key)
    eligible_at = _eligible_at(ctx.snapshot, step, sub, ctx.now, ctx.manual) if ready else None
    upstream_runs = sorted(
        run.id for up, k in sub.members if (run := runs[ctx.names[up]].current.get(k)) is not None
    )
    return Gap(
        pipeline=ctx.snapshot.pipeline.name,
        step=step.name,
        sub_group_key=key,
        reason=reason,
        ready=ready,
        eligible_at=eligible_at,
        eligible=ready and eligible_at is not None and eligible_at <= ctx.now,
        inputs=sub.count,
        input_fingerprint=fingerprint,
        upstream_runs=tuple(upstream_runs),
    )


def _step_gaps(ctx: _Context, position: int, subs: dict[str, _SubGroup]) -> list[Gap]:
    step = ctx.snapshot.steps[position]
    runs = ctx.snapshot.runs[step.name]
    current, in_flight, unsettled, names = runs.current, runs.in_flight, ctx.unsettled, ctx.names
    ctx.unsettled[step.name] = set(in_flight)
    gaps = []
    for key in sorted(subs):
        if key in in_flight:
            continue
        sub = subs[key]
        ready = not sub.members or not any(k in unsettled[names[up]] for up, k in sub.members)
        reason = _reason(step, current.get(key), sub, ready)
        if reason is None and ctx.force and sub.count:
            reason = GapReason.FORCED
        if reason is not None:
            gaps.append(_gap(ctx, step, key, sub, reason=reason, ready=ready))
    return gaps


def evaluate(
    snapshot: PipelineSnapshot, now: dt.datetime, *, manual: bool = False, force: bool = False
) -> list[Gap]:
    """Return every gap (and every `failed` sub-group) of the pipeline at `now`.

    `manual`: a person asked, so ready gaps are due now. `force`: every sub-group with
    inputs is a gap (reason `forced` where no other applies), failed ones included.
    """
    if not snapshot.pipeline.enabled:
        return []
    names = [s.name for s in snapshot.steps]
    index = {name: i for i, name in enumerate(names)}
    ctx = _Context(snapshot, now, manual, force, names, {})
    gaps: list[Gap] = []
    for position, step in enumerate(snapshot.steps):
        subs = (
            _downstream_inputs(snapshot, position, [index[u] for u in step.upstream])
            if step.upstream
            else _root_inputs(snapshot, position)
        )
        gaps.extend(_step_gaps(ctx, position, subs))
    return gaps
