"""A wave larger than one flow run: parts that overlap at their seams (`flows.parts`).

The scheduling rules are tested directly on plain functions; the real flow runs (the
session's Prefect server, real PostgreSQL, local backend) show the overlap and that a
part whose runs wait for the part before still waits.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from ccat_ops_db import models as m
from ccat_wm.cli.driver import run_pipeline
from ccat_wm.execution.waves import WaveItem
from flows.parts import Part, lead_for, progress_of, run_parts, split_wave
from tests.flows.conftest import setup_pipeline, tool_step


def items(count: int, *, follow_ups: int = 0) -> list[WaveItem]:
    """`count` root runs, then `follow_ups` runs each waiting for the root of the same index."""
    roots = [WaveItem("a", f"k{i}", i + 1) for i in range(count)]
    return roots + [WaveItem("b", f"k{i}", None, (i,)) for i in range(follow_ups)]


def test_split_remaps_upstream_and_marks_parts_that_wait_for_the_part_before() -> None:
    parts = split_wave(items(6, follow_ups=6), 4)

    assert [len(p.items) for p in parts] == [4, 4, 4]
    assert [p.waits_for_previous for p in parts] == [False, True, True]
    # part 2 holds roots k4, k5 and follow-ups of k0, k1 (in part 1: dropped) ...
    assert [i.upstream for i in parts[1].items] == [(), (), (), ()]
    # ... part 3 the follow-ups of k2..k5 (k2, k3 in part 1, ended before; k4, k5 in part 2)
    assert [i.upstream for i in parts[2].items] == [(), (), (), ()]
    assert [p.waits_for_previous for p in split_wave(items(9), 4)] == [False, False, False]
    within = split_wave([WaveItem("a", "x", 1), WaveItem("b", "x", None, (0,))], 4)
    assert within[0].items[1].upstream == (0,)
    assert lead_for(996, 8) == 100 and lead_for(6, 1) == 1
    assert lead_for(996, 1000) == 1000  # every run of a part in flight at once (SLURM)


class Recorder:
    """A `run_part` that takes `seconds_per_run` per run, one at a time, and logs when."""

    def __init__(self, seconds_per_run: float) -> None:
        self.seconds = seconds_per_run
        self.events: list[tuple[float, str, int]] = []
        self.lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0

    def __call__(self, part: Part) -> dict[str, int]:
        progress = progress_of("flow", part.number)
        assert progress is not None
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.events.append((time.monotonic(), "start", part.number))
        for _ in part.items:
            time.sleep(self.seconds)
            progress.one_ended()
        with self.lock:
            self.running -= 1
            self.events.append((time.monotonic(), "end", part.number))
        return {"completed": len(part.items)}

    def when(self, what: str, number: int) -> float:
        return next(t for t, kind, n in self.events if kind == what and n == number)


def test_the_next_part_starts_when_the_one_before_has_lead_runs_left() -> None:
    recorder = Recorder(0.05)

    counts = run_parts("flow", split_wave(items(40), 10), recorder, lead=2)

    assert counts == [{"completed": 10}] * 4
    for number in (2, 3, 4):
        started, before_ended = recorder.when("start", number), recorder.when("end", number - 1)
        # 2 runs of 0.05 s were left in the part before: it ends about 0.1 s later
        assert started < before_ended, (number, started, before_ended)
        assert before_ended - started > 0.05
    assert recorder.most_at_once == 2
    assert progress_of("flow", 1) is None  # forgotten once the wave is done


def test_a_part_waiting_for_runs_of_the_part_before_starts_after_it_ended() -> None:
    recorder = Recorder(0.02)

    run_parts("flow", split_wave(items(10, follow_ups=10), 10), recorder, lead=5)

    assert recorder.when("start", 2) >= recorder.when("end", 1)


def test_no_part_starts_more_than_two_at_once_even_with_a_large_lead() -> None:
    recorder = Recorder(0.02)

    run_parts("flow", split_wave(items(30), 5), recorder, lead=5)

    assert recorder.most_at_once == 2
    for number in range(3, 7):
        assert recorder.when("start", number) >= recorder.when("end", number - 2)


def history_times(engine: Engine, status: m.RunStatus) -> dict[str, float]:
    """When each run (by sub-group) first entered `status`, as epoch seconds."""
    run, change = m.ExecutedReductionStep, m.RunStatusChange
    with engine.connect() as conn:
        rows = conn.execute(
            select(run.sub_group_key, func.min(change.changed_at))
            .join(change, change.executed_reduction_step_id == run.id)
            .where(change.status == status)
            .group_by(run.sub_group_key)
        ).all()
    return {key: at.timestamp() for key, at in rows}


@pytest.mark.db
@pytest.mark.usefixtures("prefect_server")
def test_in_a_real_flow_part_two_starts_before_part_one_ended(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts of 6 runs (budget 10), one run at a time: part 2 begins while part 1's last runs."""
    monkeypatch.setenv("CCAT_WM_MAX_TASK_RUNS", "10")
    monkeypatch.setenv("CCAT_WM_FLOW_WORKERS", "1")
    setup_pipeline(engine, tmp_path, [tool_step("reduce", parameters={"sleep": 0.5})], scans=8)

    result = run_pipeline(engine, "t")

    assert result.state == "Completed", result.message
    assert [r.status for r in result.runs] == ["COMPLETED"] * 8
    started = history_times(engine, m.RunStatus.STAGING_DATA)
    ended = history_times(engine, m.RunStatus.COMPLETED)
    keys = sorted(started, key=started.__getitem__)
    first_part, second_part = keys[:6], keys[6:]
    assert min(started[k] for k in second_part) < max(ended[k] for k in first_part)


@pytest.mark.db
@pytest.mark.usefixtures("prefect_server")
def test_in_a_real_flow_follow_ups_in_the_next_part_wait_for_their_upstream_part(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """6 scans, two per-scan steps: part 1 holds the 6 first runs, part 2 their follow-ups."""
    monkeypatch.setenv("CCAT_WM_MAX_TASK_RUNS", "10")
    steps = [tool_step("first"), tool_step("second", depends_on=["first"])]
    setup_pipeline(engine, tmp_path, steps, scans=6)

    result = run_pipeline(engine, "t")

    assert result.state == "Completed", result.message
    assert sorted((r.step, r.status) for r in result.runs) == sorted(
        [("first", "COMPLETED")] * 6 + [("second", "COMPLETED")] * 6
    )
