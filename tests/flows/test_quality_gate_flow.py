"""A step's QA gate in a real flow run: a bad scan is rejected at its own step, recorded,
and its data is in no downstream product (real PostgreSQL, a real Prefect server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.cli.driver import run_pipeline
from ccat_wm.execution.report import artifact_rows, run_table
from tests.flows.conftest import setup_pipeline, tool_step
from tests.flows.test_pipeline_flow import task_run_named
from tests.helpers import run_cli

pytestmark = [pytest.mark.db, pytest.mark.usefixtures("prefect_server")]
RUN = m.ExecutedReductionStep


def used_by(engine: Engine, run_id: int) -> set[int]:
    """The runs whose products run `run_id` recorded as its inputs."""
    inp = m.ExecutedReductionStepInput
    with Session(engine) as session:
        return set(
            session.scalars(
                select(m.DataProduct.executed_reduction_step_id)
                .join(inp, inp.data_product_id == m.DataProduct.id)
                .where(inp.executed_reduction_step_id == run_id)
            )
        )


def first_product(engine: Engine, run_id: int) -> int:
    """The id of a product (not a log) of run `run_id`."""
    with Session(engine) as session:
        return session.scalars(
            select(m.DataProduct.id)
            .where(
                m.DataProduct.executed_reduction_step_id == run_id,
                m.DataProduct.data_product_type != m.DataProductType.LOG,
            )
            .order_by(m.DataProduct.id)
            .limit(1)
        ).one()


def prov_records(cli_env: dict[str, str], product: int) -> dict[str, Any]:
    """`lineage --prov` of a product, as PROV-JSON."""
    shown = run_cli(cli_env, "lineage", str(product), "--prov")
    assert shown.returncode == 0, shown.stderr
    records: dict[str, Any] = json.loads(shown.stdout)
    return records


def test_a_scan_the_gate_rejects_is_completed_recorded_and_in_no_map(
    engine: Engine, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    calibrate = tool_step(
        "calibrate",
        parameters={"mode": "qa", "arg": "scan-000002=9"},
        qa_gate=[{"metric": "value", "operator": "lt", "value": 5}],
    )
    grid = tool_step("grid", depends_on=["calibrate"], group_by=[])
    setup_pipeline(engine, tmp_path, [calibrate, grid], scans=3)

    result = run_pipeline(engine, "t")

    assert result.state == "Completed", result.message
    with Session(engine) as session:
        rows = session.execute(
            select(RUN.id, RUN.sub_group_key, RUN.status, RUN.qa_rejected, m.ReductionStep.name)
            .join(RUN.reduction_step)
            .order_by(RUN.id)
        ).all()
        calibrations = {r.sub_group_key: r for r in rows if r.name == "calibrate"}
        bad = calibrations["executed_obs_unit=scan-000002"]
        assert {r.status for r in rows} == {m.RunStatus.COMPLETED}  # the software worked
        assert [k for k, r in calibrations.items() if r.qa_rejected] == [bad.sub_group_key]
        (decision,) = session.scalars(
            select(m.QaDecision).where(m.QaDecision.executed_reduction_step_id == bad.id)
        ).all()
        assert decision.rejected and decision.source is m.QaSource.GATE
        assert decision.message == "rejected: value = 9 (needs value < 5)"
        assert decision.rules == [
            {"metric": "value", "operator": "lt", "value": 5.0, "seen": 9.0, "passed": False}
        ]
        assert decision.metrics == {"value": 9.0}
        accepted = session.scalars(
            select(m.QaDecision.rejected).where(m.QaDecision.executed_reduction_step_id != bad.id)
        ).all()
        assert accepted == [False, False]  # every gated run's decision is recorded
        (grid_run,) = [r for r in rows if r.name == "grid"]
    assert used_by(engine, grid_run.id) == {r.id for r in calibrations.values()} - {bad.id}
    task_run = task_run_named(result.flow_run_id, "calibrate[executed_obs_unit=scan-000002]")
    assert task_run.state.type.value == "COMPLETED"
    assert task_run.state.message == (
        f"run {bad.id} (calibrate[executed_obs_unit=scan-000002]) rejected: value = 9 "
        "(needs value < 5) by the step's QA gate; its products feed no downstream step"
    )

    # `status` and the runs artifact say why the scan is left out.
    status = run_cli(cli_env, "status", "t", "--history", "--json")
    assert status.returncode == 0, status.stderr
    shown = {r["id"]: r["qa_rejection"] for r in json.loads(status.stdout)}
    assert shown[bad.id] == "rejected: value = 9 (needs value < 5) (the step's QA gate)"
    assert [i for i, why in shown.items() if why] == [bad.id]
    text = run_cli(cli_env, "status", "t", "--history").stdout
    assert f"  run {bad.id}: rejected: value = 9 (needs value < 5)" in text
    with Session(engine) as session:
        rows, _ = artifact_rows(session, result.flow_run_id)
    qa_column = {r["run"]: r["qa"] for r in run_table(rows)}
    assert qa_column[bad.id].startswith("rejected: value = 9") and qa_column[grid_run.id] == ""

    # `plan` lists the rejected scan; `lineage` of the map names it, PROV has the decision.
    plan = run_cli(cli_env, "plan", "t", "--json")
    assert [(r["sub_group_key"], r["run_id"], r["source"]) for r in json.loads(plan.stdout)[
        "rejected"]] == [("executed_obs_unit=scan-000002", bad.id, "gate")]  # fmt: skip
    assert f"calibrate[executed_obs_unit=scan-000002] run {bad.id}: rejected: value = 9" in (
        run_cli(cli_env, "plan", "t").stdout
    )
    grid_product = first_product(engine, grid_run.id)
    lineage = run_cli(cli_env, "lineage", str(grid_product), "--json")
    assert lineage.returncode == 0, lineage.stderr
    (left,) = json.loads(lineage.stdout)["left_out"]
    assert (left["left_out_of"], left["run_id"], left["step"], left["decision_id"]) == (
        grid_run.id,
        bad.id,
        "calibrate",
        decision.id,
    )
    assert left["message"] == "rejected: value = 9 (needs value < 5)"
    assert (
        f"calibrate[executed_obs_unit=scan-000002] run {bad.id}, out of run {grid_run.id}: "
        "rejected: value = 9 (needs value < 5) (the step's QA gate, "
    ) in run_cli(cli_env, "lineage", str(grid_product)).stdout
    prov = prov_records(cli_env, grid_product)
    gate_decision = prov["activity"][f"ccat:qa_decision/{decision.id}"]
    assert gate_decision["ccat:rejected"] is True
    assert gate_decision["ccat:message"] == "rejected: value = 9 (needs value < 5)"
    assert f"ccat:run/{bad.id}" in prov["activity"]  # the left-out scan's run
    informed = {(r["prov:informed"], r["prov:informant"]) for r in prov["wasInformedBy"].values()}
    assert (f"ccat:qa_decision/{decision.id}", f"ccat:run/{bad.id}") in informed
    assert (f"ccat:run/{grid_run.id}", f"ccat:qa_decision/{decision.id}") in informed
    gate_agent = {r["prov:agent"] for r in prov["wasAssociatedWith"].values()
                  if r["prov:activity"] == f"ccat:qa_decision/{decision.id}"}  # fmt: skip
    assert gate_agent == {"ccat:qa_gate/t/calibrate"}

    # A person decides last: accepted, the scan goes into the next map, which says why.
    accepted = run_cli(
        cli_env, "qa", "accept", "--sub-group", "executed_obs_unit=scan-000002",
        "--step", "calibrate", "--reason", "the hot load was fine after all",
    )  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.splitlines() == [
        f"run {bad.id} calibrate[executed_obs_unit=scan-000002]: accepted (was rejected)",
        "  grid[]: inputs changed, a gap with reason qa_changed",
    ]
    again = run_pipeline(engine, "t")
    assert again.state == "Completed", again.message
    (remade,) = [r for r in again.runs if r.step == "grid"]
    assert remade.reason == "qa_changed"
    assert used_by(engine, remade.id) == {r.id for r in calibrations.values()}
    remade_product = first_product(engine, remade.id)
    assert json.loads(run_cli(cli_env, "lineage", str(remade_product), "--json").stdout)[
        "left_out"] == []  # fmt: skip
    prov = prov_records(cli_env, remade_product)
    person = [a for k, a in prov["activity"].items() if k.startswith("ccat:qa_decision/")
              and a["ccat:source"] == "person"]  # fmt: skip
    assert [(a["ccat:rejected"], a["ccat:message"]) for a in person] == [
        (False, "accept: the hot load was fine after all")
    ]
    refused = run_cli(cli_env, "qa", "reject", "--run", str(bad.id))
    assert refused.returncode == 1
    assert "--reason is required" in refused.stderr


def test_a_re_run_the_gate_rejects_takes_its_scan_out_of_the_per_scan_step_after_it(
    engine: Engine, tmp_path: Path
) -> None:
    """A scan accepted at first, re-calibrated (a config change) and rejected by the gate
    at completion: its baseline run, made from the earlier calibration, is left without
    an accepted input, so it is rejected too (derived) and its data reaches no map."""
    calibrate = tool_step(
        "calibrate",
        parameters={"mode": "qa", "arg": "scan-000002=1"},
        qa_gate=[{"metric": "value", "operator": "lt", "value": 5}],
    )
    baseline = tool_step("baseline", depends_on=["calibrate"])
    setup_pipeline(engine, tmp_path, [calibrate, baseline], scans=3)
    assert run_pipeline(engine, "t").state == "Completed"
    calibrate["config"]["parameters"]["arg"] = "scan-000002=9"  # the new calibration is bad
    setup_pipeline(engine, tmp_path, [calibrate, baseline], scans=0)

    again = run_pipeline(engine, "t")

    assert again.state == "Completed", again.message
    assert sorted((r.step, r.sub_group_key) for r in again.runs) == [
        ("baseline", "executed_obs_unit=scan-000001"), ("baseline", "executed_obs_unit=scan-000003"),
        ("calibrate", "executed_obs_unit=scan-000001"), ("calibrate", "executed_obs_unit=scan-000002"),
        ("calibrate", "executed_obs_unit=scan-000003"),
    ]  # fmt: skip
    with Session(engine) as session:
        current = session.execute(
            select(m.ReductionStep.name, RUN.sub_group_key, RUN.qa_rejected)
            .join(RUN.reduction_step)
            .where(RUN.is_current, RUN.qa_rejected)
            .order_by(m.ReductionStep.name)
        ).all()
        derived = session.scalars(
            select(m.QaDecision.message).where(m.QaDecision.source == m.QaSource.INPUTS)
        ).all()
    assert [(s, k) for s, k, _ in current] == [
        ("baseline", "executed_obs_unit=scan-000002"), ("calibrate", "executed_obs_unit=scan-000002")
    ]  # fmt: skip
    assert derived == [
        "rejected: every input is rejected (calibrate[executed_obs_unit=scan-000002])"
    ]
