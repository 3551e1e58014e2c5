"""`ccat-wm plan`: side-effect free, set-based, with blast radius and cost."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import Engine, event, select, update
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.gaps.snapshot import load_snapshot
from tests.gapkit import PIPELINE, GapKit
from tests.helpers import run_cli, snapshot

PLAN_COLUMNS = ("pipeline", "step", "sub_group_key", "reason", "ready", "eligible_at", "inputs")
PLAN_TABLE = (*PLAN_COLUMNS, "next")
"""The columns of a gap the issue fixes for `ccat-wm plan`."""


def _statements_to_load(engine: Engine) -> int:
    count = 0

    def counter(*_: object) -> None:
        nonlocal count
        count += 1

    event.listen(engine, "before_cursor_execute", counter)
    try:
        with Session(engine) as session:
            pipeline = session.scalars(select(m.Pipeline).where(m.Pipeline.name == PIPELINE)).one()
            load_snapshot(session, pipeline)
    finally:
        event.remove(engine, "before_cursor_execute", counter)
    return count


def test_snapshot_query_count_does_not_grow_with_data(engine: Engine, tmp_path: Path) -> None:
    kit = GapKit(engine, tmp_path)
    kit.simulate(2)
    kit.wave()
    small = _statements_to_load(engine)
    kit.simulate(30, sources=("NGC253", "M83", "Orion-KL"), lines=("CO43", "CI10"), seed=3)
    kit.wave()
    assert _statements_to_load(engine) == small
    # SET jit, 4 for settings, 1 for runs in flight and failures, 1 for the keys of
    # invalidated runs, 1 for the keys a person's quality decision changed, and 1
    # statement for every step's inputs and current runs
    assert small == 10


def test_plan_is_side_effect_free_and_reports_blast_radius_and_cost(
    engine: Engine, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    kit = GapKit(engine, tmp_path)
    kit.simulate(3, sources=("NGC253", "M83"), seed=2)
    before = snapshot(engine)
    result = run_cli(cli_env, "plan", "--json")
    assert result.returncode == 0, result.stderr
    assert snapshot(engine) == before
    plan = json.loads(result.stdout)
    steps = {c["step"]: c for c in plan["blast_radius"]}
    calib = [g for g in plan["gaps"] if g["step"] == "calibrate"]
    assert steps["calibrate"]["runs"] == len(calib) == 3
    assert steps["summary"]["runs"] == 1
    assert steps["calibrate"]["basis"] == "configured resources"
    assert steps["calibrate"]["cpu_hours"] == 3 * 2 * 0.5  # cpu 2 x 0.5 h each
    assert set(calib[0]) >= set(PLAN_COLUMNS)

    kit.wave()
    with Session(engine) as session, session.begin():
        session.execute(update(m.ExecutedReductionStep).values(cpu_hours=0.1))
    kit.simulate(1, seed=6)
    result = run_cli(cli_env, "plan", PIPELINE)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert tuple(lines[0].split()) == PLAN_TABLE
    assert any(
        line.split()[:5] == [PIPELINE, "calibrate", "executed_obs_unit=scan-000004", "new", "yes"]
        for line in lines
    )
    assert any(line.split()[:3] == [PIPELINE, "summary", "all"] for line in lines)
    assert any(
        "history (median of 3 runs)" in line and line.split()[1] == "calibrate" for line in lines
    )
    assert lines[-1] == "total: 3 runs, 0.300000 CPU-hours"


def test_plan_of_an_unknown_pipeline_is_a_clear_error(
    engine: Engine, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    GapKit(engine, tmp_path)
    result = run_cli(cli_env, "plan", "nope")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: unknown pipeline 'nope'; known: gaps"


def test_settled_root_sub_groups_stay_in_the_database(engine: Engine, tmp_path: Path) -> None:
    """Also when a root sub-group spans several scans (per source+line), the pruned
    snapshot holds only sub-groups that may have a gap, and agrees with the full one."""
    kit = GapKit(engine, tmp_path)
    spec = kit.edited()
    kit.step(spec, "calibrate")["group_by"] = ["source", "line"]
    kit.step(spec, "grid")["group_by"] = ["source"]
    kit.apply(spec)
    kit.simulate(3, sources=("NGC253",), lines=("CO43",), seed=4)
    kit.simulate(3, sources=("M83",), lines=("CO43",), seed=4)
    kit.wave()

    def root_rows(prune: bool) -> int:
        with Session(engine) as session:
            pipeline = session.scalars(select(m.Pipeline).where(m.Pipeline.name == PIPELINE)).one()
            return len(load_snapshot(session, pipeline, prune=prune).rows[0])

    assert root_rows(prune=True) == 0
    assert root_rows(prune=False) == 6  # one fine group per scan
    kit.simulate(1, sources=("M83",), lines=("CO43",), seed=5)
    gaps = kit.gaps()  # asserts pruned == full
    assert next((g.step, g.sub_group_key, g.reason.value) for g in gaps) == (
        "calibrate",
        "line=CO43|source=M83",
        "inputs_changed",
    )
    assert 0 < root_rows(prune=True) < root_rows(prune=False)
