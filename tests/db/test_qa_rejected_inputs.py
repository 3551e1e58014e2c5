"""A completed run a quality decision rejects feeds no downstream sub-group.

It stays COMPLETED and current for its own step (no gap, no re-run), its products are
left out of the inputs of every downstream sub-group (the map is made from the accepted
scans), a downstream sub-group left without inputs gets no run, and taking the
decision back brings the products back. Every evaluation here is also checked pruned
against full, and the trigger's incremental evaluation against both (`GapKit.gaps`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.gaps.plan import make_plan
from ccat_wm.gaps.what_if import plan_with
from ccat_wm.quality.people import PersonDecision, QaDecisionError, current_run, decide
from ccat_wm.quality.standing import left_out
from ccat_wm.spec.loader import load_spec_files
from tests.gapkit import GapKit, reasons
from tests.helpers import write_yaml

RUN = m.ExecutedReductionStep
S1, S2, S3 = (f"executed_obs_unit=scan-00000{i}" for i in (1, 2, 3))
NGC_CO = "line=CO43|source=NGC253"
M83_CO = "line=CO43|source=M83"


@pytest.fixture
def kit(engine: Engine, tmp_path: Path) -> GapKit:
    return GapKit(engine, tmp_path)


def set_rejected(kit: GapKit, key: str, *, rejected: bool) -> int:
    """Set the decision on the current calibrate run of sub-group `key`; return its id."""
    with Session(kit.engine) as session, session.begin():
        run_id = session.scalars(
            select(RUN.id)
            .join(RUN.reduction_step)
            .where(m.ReductionStep.name == "calibrate", RUN.sub_group_key == key, RUN.is_current)
        ).one()
        session.execute(update(RUN).where(RUN.id == run_id).values(qa_rejected=rejected))
    return run_id


def grid_inputs(kit: GapKit, run_id: int) -> set[int]:
    """The calibrate runs whose products the grid run `run_id` recorded as its inputs."""
    product, inp = m.DataProduct, m.ExecutedReductionStepInput
    with Session(kit.engine) as session:
        return set(
            session.scalars(
                select(product.executed_reduction_step_id)
                .join(inp, inp.data_product_id == product.id)
                .where(inp.executed_reduction_step_id == run_id)
            )
        )


def test_a_rejected_scan_is_left_out_of_the_map_and_comes_back_when_accepted(
    kit: GapKit,
) -> None:
    kit.simulate(3)
    kit.wave()
    assert kit.gaps() == []
    rejected = set_rejected(kit, S2, rejected=True)

    gaps = kit.gaps()
    # calibrate[scan 2] keeps its current run: no gap of its own, nothing re-run
    assert reasons(gaps) == {("grid", NGC_CO): "inputs_changed", ("summary", ""): "inputs_changed"}
    grid = next(g for g in gaps if g.step == "grid")
    assert grid.inputs == 2 and grid.ready

    (run,) = [r for r in kit.create() if r.step == "grid"]
    with Session(kit.engine) as session:
        calibrated = set(
            session.scalars(
                select(RUN.id).join(RUN.reduction_step).where(m.ReductionStep.name == "calibrate")
            )
        )
    assert grid_inputs(kit, run.id) == calibrated - {rejected}

    kit.finish([run])
    kit.wave()
    assert kit.gaps() == []
    set_rejected(kit, S2, rejected=False)
    gaps = kit.gaps()
    assert reasons(gaps) == {("grid", NGC_CO): "inputs_changed", ("summary", ""): "inputs_changed"}
    assert next(g for g in gaps if g.step == "grid").inputs == 3


def test_a_sub_group_whose_every_scan_is_rejected_gets_no_run(kit: GapKit) -> None:
    kit.simulate(1, sources=("M83",), seed=3)
    kit.simulate(1, sources=("NGC253",), seed=4)
    calibrations = kit.create()
    assert {r.step for r in calibrations} == {"calibrate"}
    kit.finish(calibrations)
    scans = {r.sub_group_key for r in calibrations}
    m83 = next(k for k in scans if _source_of(kit, k) == "M83")
    set_rejected(kit, m83, rejected=True)

    gaps = kit.gaps()
    assert ("grid", M83_CO) not in reasons(gaps)
    assert reasons(gaps)[("grid", NGC_CO)] == "new"
    created = kit.create()
    assert {(r.step, r.sub_group_key) for r in created} == {("grid", NGC_CO)}


def _source_of(kit: GapKit, scan_key: str) -> str:
    name = scan_key.removeprefix("executed_obs_unit=")
    with Session(kit.engine) as session:
        return session.scalars(
            select(m.Source.name)
            .join(m.ObsUnit, m.ObsUnit.source_id == m.Source.id)
            .join(m.ExecutedObsUnit, m.ExecutedObsUnit.obs_unit_id == m.ObsUnit.id)
            .where(m.ExecutedObsUnit.name == name)
        ).one()


def set_metrics(kit: GapKit, tsys_by_key: dict[str, float]) -> None:
    """Record the metrics of the current calibrate runs, as result collection does."""
    with Session(kit.engine) as session, session.begin():
        for key, tsys in tsys_by_key.items():
            session.execute(
                update(RUN)
                .where(RUN.sub_group_key == key, RUN.is_current)
                .values(qa_metrics={"tsys_k": tsys, "flagged_fraction": 0.5})
            )


def calibrate_run_ids(kit: GapKit) -> set[int]:
    with Session(kit.engine) as session:
        return set(
            session.scalars(
                select(RUN.id).join(RUN.reduction_step).where(m.ReductionStep.name == "calibrate")
            )
        )


def test_apply_stores_the_gate_and_re_decides_current_runs_without_re_running(
    kit: GapKit,
) -> None:
    """A gate is stored as validated (operators in the filter rules' names); a new or
    changed gate re-decides the current runs from their recorded metrics: each gets a
    gate decision, the flipped ones feed no map (reason `qa_changed` downstream), and
    no calibration is re-run (no calibrate gap, the same run ids)."""
    kit.simulate(3)
    kit.wave()
    set_metrics(kit, {S1: 150.0, S2: 350.0, S3: 2000.0})
    before = calibrate_run_ids(kit)
    spec = kit.edited()
    kit.step(spec, "calibrate")["qa_gate"] = [
        {"metric": "tsys_k", "operator": "le", "value": 400},
        {"metric": "flagged_fraction", "operator": "in", "value": [0, 0.5]},
    ]
    kit.apply(spec)
    with Session(kit.engine) as session:
        gate = session.scalars(
            select(m.ReductionStep.qa_gate).where(m.ReductionStep.name == "calibrate")
        ).one()
        decided = session.execute(
            select(RUN.sub_group_key, m.QaDecision.rejected, m.QaDecision.message)
            .join(RUN, RUN.id == m.QaDecision.executed_reduction_step_id)
            .where(m.QaDecision.source == m.QaSource.GATE)
            .order_by(RUN.sub_group_key)
        ).all()
    assert gate == [
        {"metric": "tsys_k", "operator": "lte", "value": 400.0},
        {"metric": "flagged_fraction", "operator": "in", "value": [0.0, 0.5]},
    ]
    assert [tuple(d) for d in decided] == [
        (S1, False, "accepted"), (S2, False, "accepted"),
        (S3, True, "rejected: tsys_k = 2000 (needs tsys_k <= 400)"),
    ]  # fmt: skip
    assert reasons(kit.gaps()) == {
        ("grid", NGC_CO): "qa_changed", ("summary", ""): "inputs_changed"
    }  # fmt: skip
    kit.wave()
    assert kit.gaps() == []
    assert calibrate_run_ids(kit) == before  # nothing was calibrated again

    kit.step(spec, "calibrate")["qa_gate"][0]["value"] = 300  # stricter: scan 2 goes too
    person(kit, S1, rejected=True)  # a person's decision stays in force under a new gate
    kit.apply(spec)
    with Session(kit.engine) as session:
        in_force = dict(
            session.execute(
                select(RUN.sub_group_key, RUN.qa_rejected).where(RUN.id.in_(before))
            ).all()
        )
    assert in_force == {S1: True, S2: True, S3: True}
    assert calibrate_run_ids(kit) == before


def test_a_map_whose_every_scan_a_new_gate_rejects_is_withdrawn_not_re_made(
    kit: GapKit,
) -> None:
    """Nothing is left to re-make it from: no gap (a run without inputs); the map's run is
    rejected too (derived from its inputs), and so is the summary made from it; plan
    lists all three with why."""
    kit.simulate(1)
    kit.wave()
    set_metrics(kit, {S1: 2000.0})
    spec = kit.edited()
    kit.step(spec, "calibrate")["qa_gate"] = [{"metric": "tsys_k", "operator": "lt", "value": 400}]
    kit.apply(spec)
    assert kit.gaps() == []
    with Session(kit.engine) as session, session.begin():
        plan = make_plan(session, kit.db_now())
    assert [(r.step, r.sub_group_key, r.source, r.message) for r in plan.rejected] == [
        ("calibrate", S1, "gate", "rejected: tsys_k = 2000 (needs tsys_k < 400)"),
        ("grid", NGC_CO, "inputs", f"rejected: every input is rejected (calibrate[{S1}])"),
        ("summary", "", "inputs", f"rejected: every input is rejected (grid[{NGC_CO}])"),
    ]


def test_plan_with_shows_exactly_the_sub_groups_a_threshold_flips(kit: GapKit) -> None:
    """`plan --with` applies the spec in a transaction it rolls back: the flips it shows
    are the sub-groups whose decision in force the new threshold changes, each way,
    and nothing is written."""
    kit.simulate(3)
    kit.wave()
    set_metrics(kit, {S1: 150.0, S2: 350.0, S3: 2000.0})
    spec = kit.edited()
    kit.step(spec, "calibrate")["qa_gate"] = [{"metric": "tsys_k", "operator": "lt", "value": 400}]
    kit.apply(spec)
    kit.wave()
    kit.step(spec, "calibrate")["qa_gate"][0]["value"] = 3000  # accept scan 3
    path = write_yaml(kit.root / "what-if.yaml", spec)
    with Session(kit.engine) as session:
        decisions_before = session.scalar(select(func.count()).select_from(m.QaDecision))
        what_if = plan_with(session, load_spec_files([path]), kit.db_now(), user="tester")
    assert [(f.step, f.sub_group_key, f.rejected) for f in what_if.qa_flips] == [
        ("calibrate", S3, False)
    ]
    assert reasons(what_if.new_gaps) == {
        ("grid", NGC_CO): "qa_changed", ("summary", ""): "inputs_changed"
    }  # fmt: skip
    kit.step(spec, "calibrate")["qa_gate"][0]["value"] = 200  # reject scan 2, keep 3 out
    path = write_yaml(kit.root / "what-if.yaml", spec)
    with Session(kit.engine) as session:
        what_if = plan_with(session, load_spec_files([path]), kit.db_now(), user="tester")
        decisions_after = session.scalar(select(func.count()).select_from(m.QaDecision))
    assert [(f.step, f.sub_group_key, f.rejected) for f in what_if.qa_flips] == [
        ("calibrate", S2, True)
    ]
    assert what_if.qa_flips[0].message == "rejected: tsys_k = 350 (needs tsys_k < 200)"
    assert decisions_after == decisions_before  # rolled back
    assert kit.gaps() == []


def test_the_database_keeps_every_decision(kit: GapKit) -> None:
    """A decision is provenance: UPDATE, DELETE and TRUNCATE of it are refused."""
    kit.simulate(1)
    kit.wave()
    run_id = set_rejected(kit, S1, rejected=True)
    with Session(kit.engine) as session, session.begin():
        session.add(
            m.QaDecision(
                executed_reduction_step_id=run_id, rejected=True, source=m.QaSource.PERSON,
                message="bad baseline", rules=[], metrics={}, decided_by="tester",
            )
        )  # fmt: skip
    for statement in (
        "UPDATE qa_decision SET rejected = false",
        "DELETE FROM qa_decision",
        "TRUNCATE qa_decision, qa_change",
    ):
        with pytest.raises(DBAPIError, match="is provenance"), kit.engine.begin() as conn:
            conn.execute(text(statement))
    with Session(kit.engine) as session:
        assert session.scalars(select(m.QaDecision.rejected)).all() == [True]


def person(kit: GapKit, key: str, *, rejected: bool, undo: bool = False) -> PersonDecision:
    """A person's decision on the current calibrate run of sub-group `key`."""
    with Session(kit.engine) as session, session.begin():
        run_id = current_run(session, None, "calibrate", key)
        (done,) = decide(
            session, [run_id], rejected=rejected, reason="looked at it", user="tester", undo=undo
        )
    return done


def test_a_person_decides_last_and_the_map_says_qa_changed(kit: GapKit) -> None:
    """A person's rejection overrides the gate's acceptance and the other way round; the
    maps holding the scan get a gap with reason `qa_changed` (pruned, full and the
    trigger's incremental evaluation agree); `--undo` gives the gate its say back."""
    kit.simulate(3)
    kit.wave()
    rejected = person(kit, S2, rejected=True)
    assert (rejected.rejected_before, rejected.rejected) == (False, True)
    assert rejected.downstream == (("grid", NGC_CO),)
    gaps = kit.gaps()
    assert reasons(gaps) == {("grid", NGC_CO): "qa_changed", ("summary", ""): "inputs_changed"}
    assert next(g for g in gaps if g.step == "grid").inputs == 2
    created = kit.create()
    assert [(r.step, r.reason.value) for r in created] == [("grid", "qa_changed")]
    kit.finish(created)
    kit.wave()
    assert kit.gaps() == []  # the map re-made after the decision: no longer qa_changed

    undone = person(kit, S2, rejected=False, undo=True)  # no gate decision: accepted again
    assert (undone.rejected_before, undone.rejected) == (True, False)
    assert reasons(kit.gaps()) == {
        ("grid", NGC_CO): "qa_changed", ("summary", ""): "inputs_changed"
    }  # fmt: skip
    again = person(kit, S2, rejected=False)  # the same decision again changes nothing
    assert again.downstream == () and again.rejected is False
    with Session(kit.engine) as session:
        decisions = session.execute(
            select(m.QaDecision.source, m.QaDecision.rejected, m.QaDecision.undo).order_by(
                m.QaDecision.id
            )
        ).all()
    assert [tuple(d) for d in decisions] == [
        (m.QaSource.PERSON, True, False), (m.QaSource.PERSON, False, True),
        (m.QaSource.PERSON, False, False),
    ]  # fmt: skip


def test_a_decision_needs_a_reason_and_a_completed_run(kit: GapKit) -> None:
    kit.simulate(1)
    created = kit.create()
    with Session(kit.engine) as session, session.begin():
        with pytest.raises(QaDecisionError, match="--reason is required"):
            decide(session, [created[0].id], rejected=True, reason=" ", user="tester")
        with pytest.raises(QaDecisionError, match=r"is PENDING: only a COMPLETED run"):
            decide(session, [created[0].id], rejected=True, reason="bad", user="tester")
        with pytest.raises(QaDecisionError, match="no current run of step 'grid'"):
            current_run(session, None, "grid", NGC_CO)


def with_baseline(kit: GapKit) -> None:
    """Apply the pipeline with a per-scan step between calibrate and grid (as CHAI's)."""
    spec = kit.edited()
    steps = spec["pipelines"][0]["steps"]
    baseline = {**copy.deepcopy(steps[0]), "name": "baseline", "depends_on": ["calibrate"]}
    baseline["config"] = {**baseline["config"], "name": "baseline-config"}
    steps.insert(1, baseline)
    kit.step(spec, "grid")["depends_on"] = ["baseline"]
    kit.apply(spec)


def test_a_rejection_after_the_map_follows_through_a_per_scan_step(kit: GapKit) -> None:
    """Rejected after the map was made, a scan's per-scan baseline run is left without an
    accepted input: it keeps its run (nothing to re-make it from) but is rejected too
    (derived, recorded), so the map is re-made without the scan; lineage names both.
    Accepting the scan again takes the derived rejection back."""
    with_baseline(kit)
    kit.simulate(3)
    kit.wave()
    rejected = person(kit, S2, rejected=True)
    assert rejected.downstream == (("baseline", S2),)
    (followed,) = rejected.derived
    assert (followed.step, followed.sub_group_key, followed.rejected) == ("baseline", S2, True)
    assert followed.message == f"rejected: every input is rejected (calibrate[{S2}])"
    assert rejected.gaps() == [("grid", NGC_CO)]
    assert reasons(kit.gaps()) == {
        ("grid", NGC_CO): "qa_changed", ("summary", ""): "inputs_changed"
    }  # fmt: skip
    (grid,) = [r for r in kit.create() if r.step == "grid"]
    with Session(kit.engine) as session:
        left = left_out(session, [grid.id])[grid.id]
        assert {(r.step, r.sub_group_key, r.source) for r in left} == {
            ("calibrate", S2, "person"),
            ("baseline", S2, "inputs"),
        }
        derived = session.scalars(
            select(m.QaDecision.source).where(
                m.QaDecision.executed_reduction_step_id == followed.run_id
            )
        ).all()
    assert derived == [m.QaSource.INPUTS]
    assert len(grid_inputs(kit, grid.id)) == 2  # two baselines: scan 2's is left out
    kit.finish([grid])
    kit.wave()
    assert kit.gaps() == []

    accepted = person(kit, S2, rejected=False)
    assert [(d.step, d.rejected) for d in accepted.derived] == [("baseline", False)]
    assert accepted.derived[0].message == f"accepted: an input is accepted again (calibrate[{S2}])"
    assert reasons(kit.gaps()) == {
        ("grid", NGC_CO): "qa_changed", ("summary", ""): "inputs_changed"
    }  # fmt: skip
    with Session(kit.engine) as session, session.begin():
        assert make_plan(session, kit.db_now()).rejected == []


def test_a_new_gate_follows_through_a_per_scan_step(kit: GapKit) -> None:
    """A threshold that rejects a scan already in a map: its baseline run follows, the map
    gets `qa_changed`; nothing but the map is re-run."""
    with_baseline(kit)
    kit.simulate(3)
    kit.wave()
    set_metrics(kit, {S1: 150.0, S2: 350.0, S3: 2000.0})
    spec = kit.edited()
    kit.step(spec, "calibrate")["qa_gate"] = [{"metric": "tsys_k", "operator": "lt", "value": 400}]
    kit.apply(spec)
    with Session(kit.engine) as session, session.begin():
        plan = make_plan(session, kit.db_now())
    assert [(r.step, r.sub_group_key, r.source) for r in plan.rejected] == [
        ("calibrate", S3, "gate"), ("baseline", S3, "inputs")
    ]  # fmt: skip
    assert plan.rejected[1].who == "its inputs' decisions"
    assert reasons(plan.gaps) == {("grid", NGC_CO): "qa_changed", ("summary", ""): "inputs_changed"}
