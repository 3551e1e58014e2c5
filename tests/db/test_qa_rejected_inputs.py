"""A completed run a quality decision rejects feeds no downstream sub-group.

It stays COMPLETED and current for its own step (no gap, no re-run), its products are
left out of the inputs of every downstream sub-group (the map is made from the accepted
scans), a downstream sub-group left without inputs gets no run, and taking the
decision back brings the products back. Every evaluation here is also checked pruned
against full, and the trigger's incremental evaluation against both (`GapKit.gaps`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.quality.people import PersonDecision, QaDecisionError, current_run, decide
from tests.gapkit import GapKit, reasons

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


def test_apply_stores_the_gate_and_a_new_threshold_re_runs_nothing(kit: GapKit) -> None:
    """A gate is stored as validated (operators in the filter rules' names); it is no
    part of the config's fingerprint, so changing a threshold makes no gap."""
    kit.simulate(2)
    kit.wave()
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
    assert gate == [
        {"metric": "tsys_k", "operator": "lte", "value": 400.0},
        {"metric": "flagged_fraction", "operator": "in", "value": [0.0, 0.5]},
    ]
    assert kit.gaps() == []
    kit.step(spec, "calibrate")["qa_gate"][0]["value"] = 300
    kit.apply(spec)
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
