"""`ccat-wm run`, `status`, `lineage` and `cancel` as a user types them (real Prefect, real DB)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.simulate.register import SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from tests.helpers import demo_spec_data, locations_data, run_cli, write_yaml

pytestmark = pytest.mark.db


def test_run_status_and_lineage_from_the_command_line(
    engine: Engine, tmp_path: Path, run_env: dict[str, str]
) -> None:
    spec = write_yaml(tmp_path / "spec.yaml", {**locations_data(tmp_path), **demo_spec_data()})
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([spec]), user="tester")
        register_simulation(session, SimulationRequest(scans=2, seed=253))

    unknown = run_cli(run_env, "run", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "error: unknown pipeline 'nope'; known: chai-demo"

    only = run_cli(run_env, "run", "chai-demo", "--sub-group", "executed_obs_unit=scan-000001")
    assert only.returncode == 0, only.stderr
    assert "Completed" in only.stdout
    status = run_cli(run_env, "status", "chai-demo", "--json")
    rows = json.loads(status.stdout)
    assert {(r["step"], r["sub_group_key"], r["status"]) for r in rows} == {
        ("calibrate", "executed_obs_unit=scan-000001", "COMPLETED"),
        ("baseline", "executed_obs_unit=scan-000001", "COMPLETED"),
    }
    assert all(r["hpc_job_id"] and r["processing_time_s"] > 0 for r in rows)
    assert set(rows[0]) >= {
        "id", "pipeline", "step", "sub_group_key", "status", "reason", "retry_count",
        "hpc_job_id", "processing_time_s", "peak_memory_gb", "cpu_hours",
    }  # fmt: skip

    rest = run_cli(run_env, "run", "chai-demo")
    assert rest.returncode == 0, rest.stderr
    rows = json.loads(run_cli(run_env, "status", "--json").stdout)
    grid = [r for r in rows if r["step"] == "grid"]
    assert grid and all(r["status"] == "COMPLETED" for r in rows)

    cube = next((tmp_path / "runs").rglob("*.cube.fits"))
    shown = run_cli(run_env, "lineage", str(cube), "--json")
    assert shown.returncode == 0, shown.stderr
    lineage = json.loads(shown.stdout)
    assert lineage["data_product_type"] == "SCIENCE"
    assert lineage["runs"][0]["step"] == "grid"
    assert {r["step"] for r in lineage["runs"]} == {"grid", "baseline", "calibrate"}
    assert lineage["runs"][0]["digest"].startswith("sha256:")
    assert lineage["raw_data_packages"] and all(
        p["name"].endswith("-CHAI-LFA") for p in lineage["raw_data_packages"]
    )
    text = run_cli(run_env, "lineage", str(lineage["product_id"]))
    assert "software chai-gridding 2.1.0" in text.stdout and "raw data packages (" in text.stdout
    # Each software version, config and template once, with the runs that used it.
    calibrate_runs = [r for r in lineage["runs"] if r["step"] == "calibrate"]
    assert text.stdout.count("software chai-calibration") == 1
    assert text.stdout.count("    config   ") == len({r["step"] for r in lineage["runs"]})
    assert f"chai-demo / calibrate: {len(calibrate_runs)} run(s), ids" in text.stdout

    done = rows[0]["id"]
    refused = run_cli(run_env, "cancel", str(done))
    assert refused.returncode == 1
    assert refused.stderr.startswith(
        f"error: run {done} is COMPLETED; it can move to CANCELLED only from"
    )


ALARMS = ("ERROR", "WARNING", "Traceback", "Still processing items")


@pytest.mark.prefect_ephemeral
def test_successful_commands_print_no_false_alarms(
    engine: Engine, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """What an operator sees from a healthy site: no ERROR, WARNING, traceback or stray
    Prefect progress line from `apply`, `simulate`, `run`, `trigger` and `deploy`, with
    Prefect's analytics left at ccat-wm's default (off: no telemetry error offline).
    `engine` empties the database first: another test's location of the same name, with
    runs under another path, would make `apply` refuse the path change."""
    del engine
    env = {k: v for k, v in cli_env.items() if k != "PREFECT_SERVER_ANALYTICS_ENABLED"}
    spec = write_yaml(tmp_path / "spec.yaml", {**locations_data(tmp_path), **demo_spec_data()})
    commands = [
        ("apply", str(spec)),
        ("simulate", "--scans", "2", "--seed", "5"),
        ("run", "chai-demo", "--sub-group", "executed_obs_unit=scan-000001"),
        ("simulate", "--scans", "1", "--seed", "6"),
        ("trigger",),
        ("deploy", "--prefect-yaml", str(tmp_path / "prefect.yaml"), "--dry-run"),
    ]
    for command in commands:
        result = run_cli(env, *command)
        assert result.returncode == 0, (command, result.stderr)
        output = result.stdout + result.stderr
        assert not [a for a in ALARMS if a in output], (command, output[-3000:])


@pytest.mark.prefect_ephemeral
def test_trigger_without_a_prefect_server_starts_a_cron_pipeline_whose_tick_has_come(
    engine: Engine, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """A site that runs only `ccat-wm trigger` from the system's cron loses no pipeline:
    a CRON pipeline whose data arrived before its last cron tick is run by the tick."""
    spec_data = {**locations_data(tmp_path), **demo_spec_data()}
    spec_data["pipelines"][0]["trigger"] = {"type": "CRON", "cron": "0 * * * *"}
    spec = write_yaml(tmp_path / "spec.yaml", spec_data)
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([spec]), user="tester")
        register_simulation(session, SimulationRequest(scans=1, seed=7))
        # the data arrived two hours ago: the last hourly tick has come since
        session.execute(
            update(m.RawDataPackage).values(
                created_at=m.RawDataPackage.created_at - dt.timedelta(hours=2)
            )
        )
    ticked = run_cli(cli_env, "trigger", "--json")
    assert ticked.returncode == 0, ticked.stderr
    result = json.loads(ticked.stdout)
    assert result["created"].get("chai-demo", 0) >= 1, result
    assert "chai-demo" in result["started"], result
    rows = json.loads(run_cli(cli_env, "status", "chai-demo", "--json").stdout)
    assert rows and all(r["status"] == "COMPLETED" for r in rows), rows


@pytest.mark.prefect_ephemeral
def test_a_failing_run_prints_its_failures_by_name_without_a_traceback(
    engine: Engine, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """A data failure is not a crash: `ccat-wm run` of a pipeline whose sub-group fails
    exits 1 and names `step[sub-group]` and its reason, with no traceback or Prefect
    "unexpected exception" anywhere in its output (the ephemeral server, as a newcomer)."""
    from tests.flows.conftest import setup_pipeline, tool_step

    setup_pipeline(engine, tmp_path, [tool_step("reduce", parameters={"fail_key": "scan-000002"})],
                   scans=2)  # fmt: skip
    failed = run_cli(cli_env, "run", "t")
    output = failed.stdout + failed.stderr
    assert failed.returncode == 1, output
    assert "reduce[executed_obs_unit=scan-000002]: exit code 3" in output, output
    assert "ccat-wm retry t" in output, output
    for alarm in ("Traceback", "unexpected exception", "SubGroupRunsFailedError"):
        assert alarm not in output, output
