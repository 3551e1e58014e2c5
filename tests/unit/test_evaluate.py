"""`evaluate` is a pure function of a snapshot and `now`: tested here without any database."""

from __future__ import annotations

import datetime as dt

from ccat_ops_db.models import TriggerType, VersionPolicy
from ccat_wm.gaps.cron import tick_at_or_after
from ccat_wm.gaps.evaluate import evaluate
from ccat_wm.gaps.model import (
    CurrentRun,
    GroupRow,
    PipelineInfo,
    PipelineSnapshot,
    SetDigest,
    StepInfo,
    StepRuns,
    VersionRef,
)

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
V1 = VersionRef(1, "1.0.0")


def _step(
    step_id: int, name: str, group_by: tuple[str, ...], upstream: tuple[str, ...], **kw: object
) -> StepInfo:
    return StepInfo(
        id=step_id, name=name, group_by=group_by, upstream=upstream,
        cooldown_seconds=int(kw.get("cooldown", 0)), max_wait_seconds=None, schedule=None,
        max_retries=0, version_policy=VersionPolicy.COMPATIBLE, run_version=V1,
        config_fingerprint="cfg", valid_version_ids=(1,),
    )  # fmt: skip


def _snapshot(**kw: object) -> PipelineSnapshot:
    steps = [
        _step(1, "calibrate", ("executed_obs_unit",), (), **kw),
        _step(2, "grid", ("line", "source"), ("calibrate",)),
    ]
    grid_key = "line=CO43|source=NGC253"
    rows = [
        [
            GroupRow(
                0, "executed_obs_unit=s1", ("executed_obs_unit=s1", grid_key), 2, 10, T0, None
            ),
            GroupRow(
                0, "executed_obs_unit=s2", ("executed_obs_unit=s2", grid_key), 2, 20, T0, None
            ),
        ],
        [GroupRow(1, grid_key, (None, grid_key), 1, 5, T0, None)],
    ]
    done = CurrentRun(7, 1, "cfg", SetDigest(2, 10).fingerprint, T0, T0)
    runs = {"calibrate": StepRuns(current={"executed_obs_unit=s1": done}), "grid": StepRuns()}
    info = PipelineInfo(1, "p", True, TriggerType.CONTINUOUS)
    return PipelineSnapshot(info, steps, rows, runs, pruned=False)


def test_only_the_new_scan_is_a_ready_gap_and_the_map_waits_for_it() -> None:
    gaps = evaluate(_snapshot(), T0)
    assert [(g.step, g.sub_group_key, g.reason.value, g.ready, g.eligible) for g in gaps] == [
        ("calibrate", "executed_obs_unit=s2", "new", True, True),
        ("grid", "line=CO43|source=NGC253", "new", False, False),
    ]
    assert gaps[0].input_fingerprint == "v1:2:20"


def test_cooldown_moves_eligible_at_and_now_decides() -> None:
    snapshot = _snapshot(cooldown=60)
    early = evaluate(snapshot, T0 + dt.timedelta(seconds=30))[0]
    assert early.eligible_at == T0 + dt.timedelta(seconds=60) and not early.eligible
    assert evaluate(snapshot, T0 + dt.timedelta(seconds=61))[0].eligible


def test_same_snapshot_same_answer() -> None:
    snapshot = _snapshot()
    assert evaluate(snapshot, T0) == evaluate(snapshot, T0)


def test_cron_ticks_respect_the_timezone_and_daylight_saving() -> None:
    # 06:30 in Berlin is 05:30 UTC in winter and 04:30 UTC in summer.
    assert tick_at_or_after(
        "30 6 * * *", "Europe/Berlin", dt.datetime(2026, 1, 10, 12, tzinfo=dt.UTC)
    ) == dt.datetime(2026, 1, 11, 5, 30, tzinfo=dt.UTC)
    assert tick_at_or_after(
        "30 6 * * *", "Europe/Berlin", dt.datetime(2026, 7, 10, 12, tzinfo=dt.UTC)
    ) == dt.datetime(2026, 7, 11, 4, 30, tzinfo=dt.UTC)
    exact = dt.datetime(2026, 7, 11, 4, 30, tzinfo=dt.UTC)
    assert tick_at_or_after("30 6 * * *", "Europe/Berlin", exact) == exact
