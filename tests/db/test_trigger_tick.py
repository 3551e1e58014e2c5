"""The trigger tick: CONTINUOUS pipelines' due gaps become PENDING runs; waiting pipelines
and cooldowns are reported; runs of a cancelled flow run are cancelled from the ops DB."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.execution.claims import claims_of_unfinished_runs
from ccat_wm.execution.control import cancel_flow_run_runs
from ccat_wm.execution.trigger import TickResult, pipelines_waiting, trigger_tick
from ccat_wm.gaps.plan import make_plan
from tests.gapkit import PIPELINE, GapKit

RUN = m.ExecutedReductionStep


def tick(kit: GapKit, now: dt.datetime, location: str | None = None) -> TickResult:
    with Session(kit.engine) as session, session.begin():
        return trigger_tick(session, now, location=location)


def test_new_data_becomes_pending_runs_after_the_cooldown_and_the_pipeline_waits(
    engine: Engine, tmp_path: Path
) -> None:
    kit = GapKit(engine, tmp_path)
    spec = kit.edited()
    kit.step(spec, "calibrate")["cooldown_seconds"] = 120
    kit.apply(spec)
    kit.simulate(3)
    now = kit.db_now()
    early = tick(kit, now + dt.timedelta(seconds=10))
    assert early.created == {}
    expected = now + dt.timedelta(seconds=120)
    assert early.next_eligible_at is not None
    assert abs((early.next_eligible_at - expected).total_seconds()) < 5
    assert early.to_start == []
    due = tick(kit, now + dt.timedelta(seconds=121))
    assert due.created == {PIPELINE: 3}
    assert due.to_start == [PIPELINE]
    again = tick(kit, now + dt.timedelta(seconds=122))  # the runs exist: nothing new
    assert again.created == {} and again.to_start == [PIPELINE]


def test_manual_disabled_and_other_location_pipelines_are_left_alone(
    engine: Engine, tmp_path: Path
) -> None:
    kit = GapKit(engine, tmp_path)
    kit.simulate(2)
    later = kit.later(5)
    assert tick(kit, later, location="elsewhere").created == {}
    for trigger, enabled in (({"type": "MANUAL"}, True), ({"type": "CONTINUOUS"}, False)):
        spec = kit.edited()
        spec["pipelines"][0]["trigger"] = trigger
        spec["pipelines"][0]["enabled"] = enabled
        kit.apply(spec)
        assert tick(kit, later).created == {}
    spec = kit.edited()
    spec["pipelines"][0]["trigger"], spec["pipelines"][0]["enabled"] = {"type": "CONTINUOUS"}, True
    kit.apply(spec)
    assert tick(kit, later, location="local").created == {PIPELINE: 2}


def test_claimed_runs_of_a_live_owner_do_not_wait_but_a_dead_claims_do(
    engine: Engine, tmp_path: Path
) -> None:
    kit = GapKit(engine, tmp_path)
    kit.simulate(1)
    tick(kit, kit.later(5))
    with Session(engine) as session, session.begin():
        session.execute(update(RUN).values(prefect_flow_run_id="flow-run-of-a-dead-process"))
    with Session(engine) as session:  # nobody holds that owner's lock: it is dead
        assert pipelines_waiting(session) == [PIPELINE]
        assert claims_of_unfinished_runs(session) == ["flow-run-of-a-dead-process"]
        assert claims_of_unfinished_runs(session, ["other"]) == []


def test_cancelling_a_flow_runs_runs_cancels_only_its_unfinished_runs(
    engine: Engine, tmp_path: Path
) -> None:
    kit = GapKit(engine, tmp_path)
    kit.simulate(3)
    created = kit.create()
    ids = sorted(r.id for r in created)
    with Session(engine) as session, session.begin():
        session.execute(update(RUN).where(RUN.id.in_(ids[:2])).values(prefect_flow_run_id="f1"))
        session.execute(update(RUN).where(RUN.id == ids[2]).values(prefect_flow_run_id="f2"))
    kit.finish([r for r in created if r.id == ids[0]])
    with Session(engine) as session:
        results = cancel_flow_run_runs(session, "f1")
    assert [r.run_id for r in results] == [ids[1]]
    with Session(engine) as session:
        status = {i: st for i, st in session.execute(select(RUN.id, RUN.status))}
    assert status == {
        ids[0]: m.RunStatus.COMPLETED, ids[1]: m.RunStatus.CANCELLED, ids[2]: m.RunStatus.PENDING,
    }  # fmt: skip


def test_due_cron_pipelines_are_ticked_only_when_asked_as_ccat_wm_trigger_does(
    engine: Engine, tmp_path: Path
) -> None:
    """A site without a Prefect server runs `ccat-wm trigger` from cron: it must start a
    CRON pipeline once its cron tick has come (not before); the trigger deployment
    leaves CRON pipelines to their schedules."""
    kit = GapKit(engine, tmp_path)
    spec = kit.edited()
    spec["pipelines"][0]["trigger"] = {"type": "CRON", "cron": "0 * * * *"}  # hourly
    kit.apply(spec)
    kit.simulate(2)
    now = kit.db_now()
    top_of_hour = (now + dt.timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    with Session(kit.engine) as session, session.begin():
        before = trigger_tick(session, top_of_hour - dt.timedelta(seconds=5), include_cron=True)
        without = trigger_tick(session, top_of_hour + dt.timedelta(seconds=5))
    assert before.created == {} and without.created == {}
    with Session(kit.engine) as session, session.begin():
        due = trigger_tick(session, top_of_hour + dt.timedelta(seconds=5), include_cron=True)
    assert due.created == {PIPELINE: 2} and due.to_start == [PIPELINE]


def test_one_pipelines_bad_data_never_stops_the_evaluation_of_the_others(
    engine: Engine, tmp_path: Path
) -> None:
    """A cron that never fires (stored before apply refused it) once crashed every plan."""
    kit = GapKit(engine, tmp_path)
    spec = kit.edited()
    bad = copy.deepcopy(spec["pipelines"][0])
    bad["name"], bad["trigger"] = "aaa-bad", {"type": "CRON", "cron": "0 * * * *"}
    spec["pipelines"].insert(0, bad)
    kit.apply(spec)
    kit.simulate(2)
    with Session(engine) as session, session.begin():
        session.execute(
            update(m.Pipeline)
            .where(m.Pipeline.name == "aaa-bad")
            .values(trigger_config={"cron": "0 0 31 2 *", "timezone": "UTC"})
        )
    later = kit.later(5)
    with Session(engine) as session, session.begin():
        plan = make_plan(session, later)
    assert {g.pipeline for g in plan.gaps} == {PIPELINE}
    assert list(plan.errors) == ["aaa-bad"] and "never fires" in plan.errors["aaa-bad"]
    with Session(engine) as session, session.begin():
        result = trigger_tick(session, later, include_cron=True)
    assert result.created == {PIPELINE: 2}
    assert list(result.errors) == ["aaa-bad"]
