"""`plan` and a manual `run` agree for every gap reason; `retry` revives failed sub-groups.

Domain level against a real PostgreSQL: what `make_plan` marks ready is exactly the set
of runs a manual run's wave (`prepare_wave(manual=True)`) creates, and a failed
sub-group is not ready, names the `ccat-wm retry` command, and `retry_failed` runs it
with reason `retry` and a fresh budget.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.errors import CcatWmError
from ccat_wm.execution.retry import retry_failed
from ccat_wm.execution.waves import prepare_wave
from ccat_wm.gaps.plan import make_plan, next_action
from tests.db.test_gaps import _add_package_to_scan
from tests.gapkit import PIPELINE, GapKit

S1 = "executed_obs_unit=scan-000001"


@pytest.fixture
def kit(engine: Engine, tmp_path: Path) -> GapKit:
    return GapKit(engine, tmp_path)


def _fail_three_times(kit: GapKit) -> None:
    for _ in range(3):  # max_retries 2: the third failure exhausts the budget
        kit.finish(kit.create(), status=m.RunStatus.FAILED)


def _new(kit: GapKit) -> None:
    kit.simulate(2)


def _version_changed(kit: GapKit) -> None:
    kit.simulate(1)
    kit.wave()
    spec = kit.edited()
    calib = next(s for s in spec["software"] if s["name"] == "calib-sw")
    calib["versions"] = [{"tag": "1.4.0"}, {"tag": "2.0.0", "is_latest": True}]
    kit.apply(spec)


def _config_changed(kit: GapKit) -> None:
    kit.simulate(1)
    kit.wave()
    spec = kit.edited()
    kit.step(spec, "calibrate")["config"]["parameters"] = {"mode": "b"}
    kit.apply(spec)


def _inputs_changed(kit: GapKit) -> None:
    kit.simulate(1)
    kit.wave()
    _add_package_to_scan(kit, "scan-000001")


def _failed(kit: GapKit) -> None:
    kit.simulate(2)
    _fail_three_times_of_one(kit)


def _fail_three_times_of_one(kit: GapKit) -> None:
    """Fail scan 1 three times; scan 2 completes."""
    for attempt in range(3):
        created = kit.create()
        failing = [c for c in created if c.sub_group_key == S1]
        kit.finish(failing, status=m.RunStatus.FAILED)
        if attempt == 0:
            kit.finish([c for c in created if c.sub_group_key != S1])


SCENARIOS: dict[str, tuple[Callable[[GapKit], None], str]] = {
    "new": (_new, "new"),
    "version_changed": (_version_changed, "version_changed"),
    "config_changed": (_config_changed, "config_changed"),
    "inputs_changed": (_inputs_changed, "inputs_changed"),
    "failed": (_failed, "failed"),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_what_plan_marks_ready_is_exactly_what_a_manual_run_executes(
    kit: GapKit, scenario: str
) -> None:
    prepare, reason = SCENARIOS[scenario]
    prepare(kit)
    now = kit.later()
    with Session(kit.engine) as session, session.begin():
        plan = make_plan(session, now, PIPELINE)
    assert reason in {g.reason.value for g in plan.gaps}
    ready = {(g.step, g.sub_group_key) for g in plan.gaps if g.ready}
    with Session(kit.engine) as session, session.begin():
        wave = prepare_wave(session, PIPELINE, now, claim_as="test", manual=True)
    executed = {(i.step, i.sub_group_key) for i in wave.items if i.run_id is not None}
    assert executed == ready
    follow_ups = {(i.step, i.sub_group_key) for i in wave.items if i.run_id is None}
    for gap in plan.gaps:
        action = next_action(gap)
        if gap.reason is m.GapReason.FAILED:
            assert not gap.ready
            assert action == f"ccat-wm retry {PIPELINE} --step {gap.step} --sub-group {S1}"
        elif gap.ready:
            assert action == f"ccat-wm run {PIPELINE}"
        else:  # not ready: a follow-up of the same manual run
            assert "follow-up of `ccat-wm run`" in action
            assert (gap.step, gap.sub_group_key) in follow_ups


def _runs(kit: GapKit, key: str) -> list[tuple[m.GapReason, m.RunStatus]]:
    with Session(kit.engine) as session:
        rows = session.execute(
            select(m.ExecutedReductionStep.reason, m.ExecutedReductionStep.status)
            .where(m.ExecutedReductionStep.sub_group_key == key)
            .order_by(m.ExecutedReductionStep.id)
        ).all()
    return [(r, s) for r, s in rows]


def test_retry_gives_a_failed_sub_group_a_fresh_budget_and_records_reason_retry(
    kit: GapKit,
) -> None:
    kit.simulate(2)
    _fail_three_times_of_one(kit)
    kit.wave()  # the map goes ahead with scan 2; the failed scan is left alone
    assert kit.create() == []
    with Session(kit.engine) as session, session.begin():
        result = retry_failed(session, PIPELINE, kit.later())
    assert [(c.step, c.sub_group_key, c.reason) for c in result.created] == [
        ("calibrate", S1, m.GapReason.RETRY)
    ]
    # The downstream sub-groups containing it follow in the same flow run.
    assert result.follow_keys == ["", S1, "line=CO43|source=NGC253"]
    assert _runs(kit, S1)[-1] == (m.GapReason.RETRY, m.RunStatus.PENDING)
    # One more failure after the retry is within the fresh budget: a gap again, not failed.
    kit.finish(result.created, status=m.RunStatus.FAILED)
    reasons = {(g.step, g.sub_group_key): g.reason.value for g in kit.gaps()}
    assert reasons[("calibrate", S1)] == "new"
    # Exhausting the fresh budget makes it failed again.
    kit.finish(kit.create(), status=m.RunStatus.FAILED, retry_count=1)
    reasons = {(g.step, g.sub_group_key): g.reason.value for g in kit.gaps()}
    assert reasons[("calibrate", S1)] == "failed"


def test_retry_narrowed_by_run_id_and_errors_name_what_is_not_failed(kit: GapKit) -> None:
    kit.simulate(2)
    _fail_three_times_of_one(kit)
    with Session(kit.engine) as session:
        failed_run, completed_run = (
            session.scalar(
                select(m.ExecutedReductionStep.id).where(
                    m.ExecutedReductionStep.sub_group_key == key,
                    m.ExecutedReductionStep.status == status,
                )
            )
            for key, status in (
                (S1, m.RunStatus.FAILED),
                ("executed_obs_unit=scan-000002", m.RunStatus.COMPLETED),
            )
        )
    now = kit.later()
    with Session(kit.engine) as session, session.begin():
        with pytest.raises(CcatWmError, match="scan-000002' of step 'calibrate' is not failed"):
            retry_failed(session, PIPELINE, now, run_ids=[completed_run or 0])
        with pytest.raises(CcatWmError, match="no run with id 999999"):
            retry_failed(session, PIPELINE, now, run_ids=[999999])
        with pytest.raises(CcatWmError, match="has no step 'gird'; its steps: calibrate"):
            retry_failed(session, PIPELINE, now, step="gird")
        with pytest.raises(CcatWmError, match="no step of pipeline 'gaps' has a failed sub-group"):
            retry_failed(session, PIPELINE, now, sub_groups=["executed_obs_unit=scan-000002"])
    with Session(kit.engine) as session, session.begin():
        result = retry_failed(session, PIPELINE, now, run_ids=[failed_run or 0])
    assert [c.sub_group_key for c in result.created] == [S1]
    with Session(kit.engine) as session, session.begin():  # in flight now: nothing to retry
        assert retry_failed(session, PIPELINE, now).created == []


def test_force_records_reason_forced_also_for_a_failed_sub_group(kit: GapKit) -> None:
    kit.simulate(2)
    _fail_three_times_of_one(kit)
    created = kit.create(force=True, manual=True)
    assert {(c.sub_group_key, c.reason) for c in created if c.step == "calibrate"} == {
        (S1, m.GapReason.FORCED),
        ("executed_obs_unit=scan-000002", m.GapReason.FORCED),
    }


def test_a_run_can_never_record_reason_failed(kit: GapKit) -> None:
    kit.simulate(1)
    created = kit.create()
    with (
        Session(kit.engine) as session,
        session.begin(),
        pytest.raises(IntegrityError, match="reason_not_failed"),
    ):
        run = session.get_one(m.ExecutedReductionStep, created[0].id)
        session.add(
            m.ExecutedReductionStep(
                reduction_step_id=run.reduction_step_id,
                reduction_software_version_id=run.reduction_software_version_id,
                sub_group_key=run.sub_group_key + "-other",
                reason=m.GapReason.FAILED,
                input_fingerprint=run.input_fingerprint,
                config_fingerprint=run.config_fingerprint,
            )
        )
        session.flush()
    # Nor can an existing run's reason change (to anything: it is recorded for good).
    with (
        Session(kit.engine) as session,
        session.begin(),
        pytest.raises(IntegrityError, match="recorded for good"),
    ):
        session.get_one(m.ExecutedReductionStep, created[0].id).reason = m.GapReason.FAILED
        session.flush()


def test_plan_at_accepts_iso_8601_with_z() -> None:
    from ccat_wm.cli.common import parse_moment

    assert parse_moment("2026-01-01T00:00Z") == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert parse_moment("2026-01-01") == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert parse_moment("2026-01-01T02:00+02:00") == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    base = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    assert parse_moment("1d", now=base) == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="'yesterday' is not a time; expected ISO 8601"):
        parse_moment("yesterday")
