"""Gap evaluation scenarios (docs/concepts.md 3.2, 3.3): each asserts the exact gaps and reasons."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from tests.gapkit import GapKit, ready, reasons

S1, S2, S3 = (f"executed_obs_unit=scan-00000{i}" for i in (1, 2, 3))
NGC_CO = "line=CO43|source=NGC253"
M83_CO = "line=CO43|source=M83"


@pytest.fixture
def kit(engine: Engine, tmp_path: Path) -> GapKit:
    return GapKit(engine, tmp_path)


def test_new_scan_gives_its_per_scan_gaps_and_downstream_waits(kit: GapKit) -> None:
    kit.simulate(2)
    assert kit.wave() == 4  # 2 calibrate, 1 grid, 1 summary
    assert kit.gaps() == []
    kit.simulate(1)
    gaps = kit.gaps()
    assert reasons(gaps) == {
        ("calibrate", S3): "new",
        ("grid", NGC_CO): "inputs_changed",
        ("summary", ""): "inputs_changed",
    }
    assert ready(gaps) == {("calibrate", S3): True, ("grid", NGC_CO): False, ("summary", ""): False}
    assert [g.eligible for g in gaps] == [True, False, False]
    assert gaps[0].inputs == 2  # one package per CHAI module


def test_first_data_all_steps_show_at_once_and_the_all_step_waits(kit: GapKit) -> None:
    kit.simulate(2, sources=("NGC253", "M83"), seed=4)
    gaps = kit.gaps()
    per_scan = {(g.step, g.sub_group_key) for g in gaps if g.step == "calibrate"}
    assert per_scan == {("calibrate", S1), ("calibrate", S2)}
    assert all(g.reason.value == "new" for g in gaps)
    assert {g.step: g.ready for g in gaps if g.step != "calibrate"} == {
        "grid": False,
        "summary": False,
    }
    created = kit.create()
    assert {r.step for r in created} == {"calibrate"}
    kit.finish(created)
    gaps = kit.gaps()
    assert {(g.step, g.ready) for g in gaps} == {("grid", True), ("summary", False)}


def test_late_data_for_a_gridded_source_is_inputs_changed_downstream(kit: GapKit) -> None:
    kit.simulate(2)
    kit.wave()
    kit.simulate(1)  # the same source and line, observed again
    kit.finish(kit.create())  # calibrate the new scan
    gaps = kit.gaps()
    assert reasons(gaps) == {("grid", NGC_CO): "inputs_changed", ("summary", ""): "inputs_changed"}
    assert ready(gaps) == {("grid", NGC_CO): True, ("summary", ""): False}
    assert gaps[0].inputs == 3  # the three calibrated scans' intermediates (logs are not inputs)


def _release(kit: GapKit, software: str, tag: str) -> None:
    spec = kit.edited()
    for sw in spec["software"]:
        if sw["name"] == software:
            sw["versions"] = [{"tag": v["tag"]} for v in sw["versions"]] + [
                {"tag": tag, "is_latest": True}
            ]
    kit.apply(spec)


def test_patch_release_under_compatible_makes_no_gaps(kit: GapKit) -> None:
    kit.simulate(2)
    kit.wave()
    _release(kit, "calib-sw", "1.4.1")
    _release(kit, "grid-sw", "1.5.0")
    assert kit.gaps() == []


def test_major_release_is_version_changed_and_downstream_follows(kit: GapKit) -> None:
    kit.simulate(2)
    kit.wave()
    _release(kit, "calib-sw", "2.0.0")
    gaps = kit.gaps()
    assert reasons(gaps) == {
        ("calibrate", S1): "version_changed",
        ("calibrate", S2): "version_changed",
        ("grid", NGC_CO): "inputs_changed",
        ("summary", ""): "inputs_changed",
    }
    created = kit.create()
    with Session(kit.engine) as session:
        tags = session.scalars(
            select(m.ReductionSoftwareVersion.tag)
            .join(m.ExecutedReductionStep)
            .where(m.ExecutedReductionStep.id.in_([r.id for r in created]))
        ).all()
    assert tags == ["2.0.0", "2.0.0"]


def test_exact_pin_change_reprocesses_everything_then_downstream_follows(kit: GapKit) -> None:
    spec = kit.edited()
    kit.step(spec, "calibrate").update(version_policy="exact", pinned_version="1.3.0")
    kit.apply(spec)
    kit.simulate(2)
    kit.wave()
    assert kit.gaps() == []
    kit.step(spec, "calibrate")["pinned_version"] = "1.4.0"
    kit.apply(spec)
    assert reasons(kit.gaps()) == {
        ("calibrate", S1): "version_changed",
        ("calibrate", S2): "version_changed",
        ("grid", NGC_CO): "inputs_changed",
        ("summary", ""): "inputs_changed",
    }
    kit.finish(kit.create())
    assert reasons(kit.gaps()) == {
        ("grid", NGC_CO): "inputs_changed",
        ("summary", ""): "inputs_changed",
    }
    assert kit.wave() == 2
    assert kit.gaps() == []


def test_config_edit_is_config_changed(kit: GapKit) -> None:
    kit.simulate(1)
    kit.wave()
    spec = kit.edited()
    kit.step(spec, "grid")["config"]["parameters"] = {"mode": "b"}
    kit.apply(spec)
    assert reasons(kit.gaps()) == {
        ("grid", NGC_CO): "config_changed",
        ("summary", ""): "inputs_changed",
    }
    spec = kit.edited()
    kit.step(spec, "grid")["config"]["resources"] = {"cpu": 64, "time_hours": 9}
    kit.apply(spec)  # more resources do not change results
    assert reasons(kit.gaps()) == {
        ("grid", NGC_CO): "config_changed",
        ("summary", ""): "inputs_changed",
    }


def _add_package_to_scan(kit: GapKit, scan: str) -> None:
    with Session(kit.engine) as session, session.begin():
        scan_id = session.scalars(
            select(m.ExecutedObsUnit.id).where(m.ExecutedObsUnit.name == scan)
        ).one()
        module = session.scalars(select(m.InstrumentModule.id).limit(1)).one()
        instrument = session.scalars(select(m.InstrumentModule.instrument_id).limit(1)).one()
        extra = m.InstrumentModule(instrument_id=instrument, name="XFA")
        session.add(extra)
        session.flush()
        assert module != extra.id
        session.execute(
            insert(m.RawDataPackage.__table__).values(
                name=f"{scan}-late", executed_obs_unit_id=scan_id, instrument_module_id=extra.id,
                size=1, checksum="0" * 64, metadata={}, state=m.PackageState.ARCHIVED,
            )
        )  # fmt: skip


@pytest.mark.parametrize("pattern", ["three runs", "one run retried twice"])
def test_max_retries_plus_one_failures_is_failed_until_new_input(kit: GapKit, pattern: str) -> None:
    kit.simulate(1)
    if pattern == "three runs":
        for _ in range(3):
            kit.finish(kit.create(), status=m.RunStatus.FAILED)
    else:
        kit.finish(kit.create(), status=m.RunStatus.FAILED, retry_count=2)
    gaps = kit.gaps()
    assert reasons(gaps) == {("calibrate", S1): "failed"}  # failed does not hold back the map...
    assert gaps[0].eligible is False and gaps[0].eligible_at is None
    assert kit.create() == []  # ...and is not retried
    _add_package_to_scan(kit, "scan-000001")
    gaps = kit.gaps()
    assert reasons(gaps)[("calibrate", S1)] == "new"
    assert gaps[0].eligible and gaps[0].inputs == 3


def test_two_failures_with_max_retries_two_is_still_a_gap(kit: GapKit) -> None:
    kit.simulate(1)
    for _ in range(2):
        kit.finish(kit.create(), status=m.RunStatus.FAILED)
    gaps = kit.gaps()
    assert reasons(gaps)[("calibrate", S1)] == "new" and gaps[0].eligible


def test_cooldown_not_yet_quiet_gives_eligible_at(kit: GapKit) -> None:
    spec = kit.edited()
    kit.step(spec, "calibrate")["cooldown_seconds"] = 60
    kit.apply(spec)
    kit.simulate(1)
    arrived = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
    kit.set_package_times(arrived)
    gaps = kit.gaps(now=arrived + dt.timedelta(seconds=30))
    first = gaps[0]
    assert (first.step, first.reason.value, first.ready, first.eligible) == (
        "calibrate",
        "new",
        True,
        False,
    )
    assert first.eligible_at == arrived + dt.timedelta(seconds=60)
    assert kit.gaps(now=arrived + dt.timedelta(seconds=60))[0].eligible


def test_maximum_wait_fires_under_continuous_arrivals(kit: GapKit) -> None:
    spec = kit.edited()
    kit.step(spec, "calibrate")["group_by"] = ["source", "line"]
    kit.step(spec, "calibrate").update(cooldown_seconds=60, max_wait_seconds=300)
    kit.apply(spec)
    kit.simulate(6)  # 12 packages of one source and line
    t0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
    kit.set_package_times(
        [t0 + dt.timedelta(seconds=30 * i) for i in range(12)]
    )  # never 60 s quiet
    now = t0 + dt.timedelta(seconds=30 * 11 + 10)
    gap = kit.gaps(now=now)[0]
    assert gap.sub_group_key == NGC_CO and gap.inputs == 12
    assert gap.eligible_at == t0 + dt.timedelta(seconds=300) and gap.eligible
    spec = kit.edited()
    kit.step(spec, "calibrate")["max_wait_seconds"] = None
    kit.apply(spec)
    gap = kit.gaps(now=now)[0]
    assert gap.eligible_at == t0 + dt.timedelta(seconds=30 * 11 + 60) and not gap.eligible


def test_step_schedule_gates_firing(kit: GapKit) -> None:
    spec = kit.edited()
    kit.step(spec, "calibrate")["schedule"] = "0 4 * * *"
    kit.apply(spec)
    kit.simulate(1)
    arrived = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
    kit.set_package_times(arrived)
    tick = dt.datetime(2026, 6, 2, 4, 0, tzinfo=dt.UTC)
    before = kit.gaps(now=tick - dt.timedelta(minutes=1))[0]
    assert before.eligible_at == tick and not before.eligible
    assert kit.gaps(now=tick + dt.timedelta(minutes=5))[0].eligible


def test_cron_pipeline_fires_at_its_ticks_and_manual_only_when_asked(kit: GapKit) -> None:
    spec = kit.edited()
    spec["pipelines"][0]["trigger"] = {
        "type": "CRON",
        "cron": "30 6 * * *",
        "timezone": "Europe/Berlin",
    }
    kit.apply(spec)
    kit.simulate(1)
    arrived = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
    kit.set_package_times(arrived)
    gap = kit.gaps(now=arrived + dt.timedelta(hours=1))[0]
    assert gap.eligible_at == dt.datetime(2026, 6, 2, 4, 30, tzinfo=dt.UTC)  # 06:30 CEST
    spec["pipelines"][0]["trigger"] = {"type": "MANUAL"}
    kit.apply(spec)
    gap = kit.gaps(now=arrived + dt.timedelta(days=3))[0]
    assert gap.eligible_at is None and not gap.eligible
    asked = kit.gaps(now=arrived + dt.timedelta(days=3), manual=True)[0]
    assert asked.eligible and asked.eligible_at == arrived + dt.timedelta(days=3)


def test_a_run_in_flight_suppresses_its_gap(kit: GapKit) -> None:
    kit.simulate(2)
    created = kit.create()
    assert len(created) == 2
    gaps = kit.gaps()
    assert reasons(gaps) == {("grid", NGC_CO): "new", ("summary", ""): "new"}
    assert not any(ready(gaps).values())
    assert kit.create() == []


def test_per_scan_projects_into_per_source_and_line(kit: GapKit) -> None:
    kit.simulate(6, sources=("NGC253", "M83"), lines=("CO43",), seed=8)
    created = kit.create()
    kit.finish(created)
    gaps = kit.gaps()
    grid = {g.sub_group_key: g for g in gaps if g.step == "grid"}
    assert set(grid) == {NGC_CO, M83_CO}
    with Session(kit.engine) as session:
        scans = dict(
            session.execute(
                select(m.Source.name, func.count(m.ExecutedObsUnit.id))
                .join(m.ObsUnit, m.ObsUnit.source_id == m.Source.id)
                .join(m.ExecutedObsUnit, m.ExecutedObsUnit.obs_unit_id == m.ObsUnit.id)
                .group_by(m.Source.name)
            ).all()
        )
    # one intermediate product per calibrated scan, from the scans of that source only
    assert grid[NGC_CO].inputs == scans["NGC253"] and grid[M83_CO].inputs == scans["M83"]
    created = kit.create()
    with Session(kit.engine) as session:
        inputs = session.scalars(
            select(m.ExecutedReductionStepInput.data_product_id).where(
                m.ExecutedReductionStepInput.executed_reduction_step_id
                == next(r.id for r in created if r.sub_group_key == NGC_CO)
            )
        ).all()
    assert len(inputs) == grid[NGC_CO].inputs


def test_json_path_filter_selects_by_metadata(kit: GapKit) -> None:
    spec = kit.edited()
    spec["data_groupings"][0]["filter_rules"] = [
        {
            "table": "RawDataPackage",
            "column": "metadata",
            "json_path": "observation.frequency_ghz",
            "operator": "gt",
            "value": 700,
        },
        {"table": "Line", "column": "name", "operator": "in", "value": ["CO43", "CI10"]},
    ]
    kit.apply(spec)
    kit.simulate(3, lines=("CO43", "CO76"), seed=5)
    gaps = [g for g in kit.gaps() if g.step == "calibrate"]
    with Session(kit.engine) as session:
        co43_scans = session.scalars(
            select(m.ExecutedObsUnit.name).join(m.ObsUnit).join(m.Line).where(m.Line.name == "CO43")
        ).all()
    assert {g.sub_group_key for g in gaps} == {f"executed_obs_unit={s}" for s in co43_scans}
    assert all(g.inputs == 1 for g in gaps)  # only the HFA package (tuned to CO76, > 700 GHz)


def test_a_disabled_pipeline_yields_nothing(kit: GapKit) -> None:
    kit.simulate(2)
    spec = kit.edited()
    spec["pipelines"][0]["enabled"] = False
    kit.apply(spec)
    assert kit.gaps() == []
    assert kit.create() == []


def test_force_reprocesses_settled_and_failed_sub_groups(kit: GapKit) -> None:
    kit.simulate(1)
    kit.wave()
    forced = kit.gaps(force=True)
    assert reasons(forced) == {
        ("calibrate", S1): "forced",
        ("grid", NGC_CO): "inputs_changed",
        ("summary", ""): "inputs_changed",
    }


def test_created_runs_record_reason_version_config_and_exact_inputs(kit: GapKit) -> None:
    kit.simulate(2)
    created = kit.create()
    with Session(kit.engine) as session:
        run = session.get_one(m.ExecutedReductionStep, created[0].id)
        assert run.status is m.RunStatus.PENDING and run.reason is m.GapReason.NEW
        packages = session.execute(
            select(m.RawDataPackage.name, m.ExecutedReductionStepInput.checksum)
            .join(
                m.ExecutedReductionStepInput,
                m.ExecutedReductionStepInput.raw_data_package_id == m.RawDataPackage.id,
            )
            .where(m.ExecutedReductionStepInput.executed_reduction_step_id == run.id)
            .order_by(m.RawDataPackage.name)
        ).all()
        assert [p.name for p in packages] == ["scan-000001-CHAI-HFA", "scan-000001-CHAI-LFA"]
    assert run.input_fingerprint.startswith("v1:2:")


@pytest.mark.parametrize(
    ("calibrate", "grid", "summary", "expected_keys"),
    [
        (
            ["instrument_module"],
            ["instrument"],
            [],
            {"instrument_module=HFA", "instrument_module=LFA"},
        ),
        (
            ["executed_obs_unit", "instrument_module"],
            ["source", "instrument_module"],
            ["instrument"],
            {
                f"executed_obs_unit=scan-00000{i}|instrument_module={m}"
                for i in (1, 2)
                for m in ("HFA", "LFA")
            },
        ),
        ([], [], [], {""}),
    ],
    ids=["per-module", "per-scan-and-module", "all-data-only"],
)
def test_other_groupings_evaluate_the_same_pruned_and_full(
    kit: GapKit, calibrate: list[str], grid: list[str], summary: list[str], expected_keys: set[str]
) -> None:
    spec = kit.edited()
    for name, group_by in (("calibrate", calibrate), ("grid", grid), ("summary", summary)):
        kit.step(spec, name)["group_by"] = group_by
    kit.apply(spec)
    kit.simulate(2)
    assert {g.sub_group_key for g in kit.gaps() if g.step == "calibrate"} == expected_keys
    assert kit.wave() > 0
    assert kit.gaps() == []
    kit.simulate(1)
    assert kit.gaps()  # new data: gaps again, and pruned == full (asserted by the kit)


def test_a_grouping_that_selects_nothing_has_no_gaps(kit: GapKit) -> None:
    spec = kit.edited()
    spec["data_groupings"][0]["filter_rules"] = [
        {"table": "Source", "column": "name", "operator": "eq", "value": "nowhere"}
    ]
    kit.apply(spec)
    kit.simulate(2)
    assert kit.gaps() == []
    for group_by in ([], ["instrument_module"]):
        spec = kit.edited()
        for step in spec["pipelines"][0]["steps"]:
            step["group_by"] = group_by
        kit.apply(spec)
        assert kit.gaps() == []
