"""Daily operations as an operator types them: retry, logs, status filters, errors.

The installed `ccat-wm` as a subprocess against the real test PostgreSQL, with flows on
the session's Prefect server (`run_env`), running tests/programs/contract_tool.py on the
local backend.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.flows.conftest import setup_pipeline, tool_step
from tests.helpers import (
    CCAT_WM,
    cli_json,
    demo_spec_data,
    locations_data,
    run_cli,
    wait_until,
    write_yaml,
)

pytestmark = pytest.mark.db
BAD = "executed_obs_unit=scan-000002"


def _status(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = cli_json(env, "status", "t", "--json", *args)
    return rows


def test_a_failed_sub_group_is_explained_its_log_read_and_one_retry_command_fixes_it(
    engine: Engine, tmp_path: Path, run_env: dict[str, str]
) -> None:
    fixed = tmp_path / "fixed"
    step = tool_step(
        "reduce", max_retries=1, parameters={"fail_key": "scan-000002", "fixed": str(fixed)}
    )
    setup_pipeline(engine, tmp_path, [step], scans=2)

    first = run_cli(run_env, "run", "t")
    assert first.returncode == 1
    hint = (
        "1 sub-group(s) of t failed with their retries exhausted; retry them with: ccat-wm retry t"
    )
    assert hint in first.stdout
    errors = [line for line in first.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: pipeline 't' flow run")

    plan = json.loads(run_cli(run_env, "plan", "t", "--json").stdout)
    assert [(g["sub_group_key"], g["reason"], g["ready"], g["next"]) for g in plan["gaps"]] == [
        (BAD, "failed", False, f"ccat-wm retry t --step reduce --sub-group {BAD}")
    ]
    shown_plan = run_cli(run_env, "plan", "t").stdout
    assert (
        "retrying the 1 failed sub-group(s) would run 1 run(s), downstream included" in (shown_plan)
        and "ccat-wm retry t" in shown_plan
    ), shown_plan
    again = run_cli(run_env, "run", "t")  # what plan says: nothing ready, and why
    assert again.returncode == 0, again.stderr
    assert "no gaps: nothing to run" in again.stdout and hint in again.stdout

    failed = _status(run_env, "--status", "FAILED")
    assert [(r["sub_group_key"], r["retry_count"]) for r in failed] == [(BAD, 1)]
    assert failed[0]["started_at"] and failed[0]["finished_at"]
    assert failed[0]["failure_reason"] == "exit code 3"
    assert _status(run_env, "--status", "completed", "--step", "reduce")[0]["status"] == (
        "COMPLETED"
    )
    assert _status(run_env, "--since", "2099-01-01T00:00Z") == []
    assert len(_status(run_env, "--since", "1d")) == 2
    assert _status(run_env, "--step", "nope") == []
    unserved = {k: v for k, v in run_env.items() if k != "PREFECT_API_URL"}
    assert _status(unserved, "--status", "FAILED")[0]["flow_run_url"] is None  # no server set
    served = _status(run_env | {"PREFECT_API_URL": "http://127.0.0.1:4200/api"})
    assert served[0]["flow_run_url"] == (
        f"http://127.0.0.1:4200/runs/flow-run/{served[0]['flow_run_id']}"
    )

    run_id = str(failed[0]["id"])
    log = run_cli(run_env, "logs", run_id)
    assert log.returncode == 0, log.stderr
    assert "boom: failing on purpose" in log.stdout
    assert f"# run {run_id} attempt 2 of 2 (FAILED)" in log.stderr  # counted from 1
    assert "tool.log" in log.stderr  # what the software wrote itself is listed
    assert "boom" in run_cli(run_env, "logs", run_id, "--attempt", "1").stdout
    beyond = run_cli(run_env, "logs", run_id, "--attempt", "5")
    assert beyond.returncode == 1
    assert (
        beyond.stderr.strip()
        == f"error: run {run_id} has attempts 1..2 (1 is the first); got --attempt 5"
    )

    not_failed = run_cli(run_env, "retry", "t", "--sub-group", "executed_obs_unit=scan-000001")
    assert not_failed.returncode == 1
    assert "no step of pipeline 't' has a failed sub-group" in not_failed.stderr

    fixed.touch()  # the operator's fix
    retried = run_cli(run_env, "retry", "t")
    assert retried.returncode == 0, retried.stderr
    assert "1 failed sub-group(s) of t get a fresh retry budget" in retried.stdout
    newest = _status(run_env, "--step", "reduce")[0]
    assert (newest["sub_group_key"], newest["reason"], newest["status"]) == (
        BAD, "retry", "COMPLETED",
    )  # fmt: skip
    assert json.loads(run_cli(run_env, "plan", "t", "--json").stdout)["gaps"] == []
    assert "nothing to retry" in run_cli(run_env, "retry", "t").stdout
    # Current problems by default: the failure its retry fixed is history.
    assert _status(run_env, "--status", "FAILED") == []
    shown = run_cli(run_env, "status", "t", "--status", "FAILED")
    assert "1 failed or cancelled run(s) whose sub-group completed since are not shown" in (
        shown.stdout
    )
    history = _status(run_env, "--status", "FAILED", "--history")
    assert [(r["sub_group_key"], r["status"]) for r in history] == [(BAD, "FAILED")]

    forced = run_cli(run_env, "run", "t", "--force", "--sub-group", "executed_obs_unit=scan-000001")
    assert forced.returncode == 0, forced.stderr
    newest = _status(run_env)[0]
    assert (newest["sub_group_key"], newest["reason"]) == (
        "executed_obs_unit=scan-000001",
        "forced",
    )


def test_logs_follow_prints_a_running_job_until_it_ends(
    engine: Engine, tmp_path: Path, run_env: dict[str, str]
) -> None:
    """The job is held after its first line until the follower has printed that line, then
    sleeps 6 s: what the follower prints after it, it read from a running job."""
    release = tmp_path / "release"
    step = tool_step(
        "reduce", parameters={"sleep": 6, "hold_key": "scan-000001", "arg": str(release)}
    )
    setup_pipeline(engine, tmp_path, [step], scans=1)
    runner = subprocess.Popen(
        [CCAT_WM, "run", "t"], env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        running = wait_until(
            "the run to show RUNNING", lambda: _status(run_env, "--status", "RUNNING"), 120
        )
        run_id = str(running[0]["id"])
        follower = subprocess.Popen(
            [CCAT_WM, "logs", run_id, "--follow"], env=run_env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert follower.stdout is not None
        seen = []
        while not any("tool ok for executed_obs_unit=scan-000001" in line for line in seen):
            line = follower.stdout.readline()
            assert line, f"the follower ended before the job's first line: {seen}"
            seen.append(line)
        release.touch()  # the job goes on: sleeps 6 s, then writes its last line
        rest, errors = follower.communicate(timeout=120)
        assert follower.returncode == 0, errors
        # Written after the follower attached and the 6 s sleep: it saw the job to its end.
        assert "woke up after 6" in rest
        assert errors.strip().endswith(f"# run {run_id} is COMPLETED")
    finally:
        release.touch()
        runner.wait(timeout=120)


def test_errors_are_one_line_with_the_traceback_in_a_log_and_usage_errors_exit_2(
    engine: Engine, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    del engine
    version = run_cli(cli_env, "--version")
    assert version.returncode == 0 and version.stdout.startswith("ccat-wm, version ")
    usage = run_cli(cli_env, "status", "--limit", "0")
    assert usage.returncode == 2 and "Invalid value for '--limit'" in usage.stderr
    bad_time = run_cli(cli_env, "plan", "--at", "yesterday")
    assert bad_time.returncode == 2 and "expected ISO 8601" in bad_time.stderr
    huge = "99999999999999999999"  # beyond BIGINT: once an out-of-range database error
    for command in ("cancel", "logs"):
        too_big = run_cli(cli_env, command, huge)
        assert too_big.returncode == 2 and "is not in the range" in too_big.stderr, too_big
    no_product = run_cli(cli_env, "lineage", huge)
    assert no_product.returncode == 1
    assert no_product.stderr.startswith(f"error: no data product with id {huge}: ids are at most")

    spec = write_yaml(tmp_path / "spec.yaml", {**locations_data(tmp_path), **demo_spec_data()})
    read_only = cli_env | {"PGOPTIONS": "-c default_transaction_read_only=on"}
    failed = run_cli(read_only, "apply", str(spec))
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1, failed.stderr
    log = Path(cli_env["CCAT_WM_HOME"]) / "logs" / "ccat-wm-errors.log"
    assert lines[0] == (
        "error: database error (ReadOnlySqlTransaction): cannot execute INSERT in a "
        f"read-only transaction (traceback in {log}; or rerun with --debug)"
    )
    assert "INSERT INTO" not in failed.stderr and "Traceback" in log.read_text()
    assert "SQL parameters hidden" in log.read_text()  # values never reach the log
    debug = run_cli(read_only, "--debug", "apply", str(spec))
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
