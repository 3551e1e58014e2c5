"""Pipelines through the real single-node SLURM cluster (infra/slurm/start-cluster.sh).

The processing location is a `slurm` one with the host runtime (no Apptainer here);
jobs run on this machine's slurmd, metrics come from slurmdbd's accounting in MariaDB.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.cli.driver import run_pipeline
from ccat_wm.execution.logs import read_log, run_log
from tasks.runs import task_run_name
from tests.flows.conftest import setup_pipeline, tool_step
from tests.flows.test_pipeline_flow import (
    flow_task_runs,
    history,
    runs,
    task_run_log_lines,
    task_run_named,
)
from tests.helpers import SLURM_TEST_SETTINGS, run_cli, wait_until

T = TypeVar("T")
pytestmark = [pytest.mark.db, pytest.mark.usefixtures("prefect_server", "slurm_cluster")]


def slurm_location(root: Path, **settings: Any) -> dict[str, Any]:
    """The test pipeline's processing location, on SLURM (`settings` added to the test's)."""
    return {
        "site": "test",
        "location_type": "PROCESSING",
        "backend": "slurm",
        "runtime": "host",
        "path": str(root / "runs"),
        "settings": {**SLURM_TEST_SETTINGS, **settings},
    }


def sacct(job_id: str, fields: str) -> list[list[str]]:
    """Accounting rows of a job, as SLURM has them."""
    out = subprocess.run(
        ["sacct", "-n", "-P", "-j", job_id, f"--format={fields}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [line.split("|") for line in out.splitlines()]


def reread_accounting(read: Callable[[], T], settled: Callable[[T], bool]) -> T:
    """Call `read` until `settled` holds or 30 s passed; return the last value.

    slurmdbd's records can lag behind a job's end: once, right after a flow ended, an
    array task's row was COMPLETED while its name still read "allocation" (the name
    accounting gives a job it has no name for yet). What never settles still fails the
    caller's assertions.
    """
    deadline = time.monotonic() + 30.0
    while not settled(value := read()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return value


def accounted_job(job_id: str, fields: str) -> list[str]:
    """The job's own accounting row, once slurmdbd has recorded its name."""

    def row() -> list[str]:
        (found,) = [r for r in sacct(job_id, fields) if r[0] == job_id]
        return found

    return reread_accounting(row, lambda r: r[1] != "allocation")


def test_a_wide_step_runs_as_a_slurm_job_array_with_accounting_metrics(
    engine: Engine, tmp_path: Path
) -> None:
    setup_pipeline(
        engine,
        tmp_path,
        [tool_step("reduce", max_concurrent_runs=6, parameters={"sleep": 1.5})],
        scans=6,
        location=slurm_location(tmp_path),
    )

    result = run_pipeline(engine, "t")

    assert result.state == "Completed", result.message
    done = [r.ExecutedReductionStep for r in runs(engine)]
    assert [r.status for r in done] == [m.RunStatus.COMPLETED] * 6
    job_ids = [r.hpc_job_id for r in done]
    arrays = {j.split("_")[0] for j in job_ids if "_" in j}
    assert arrays and len(arrays) + sum("_" not in j for j in job_ids) < 6  # batched
    for run in done:
        row = accounted_job(run.hpc_job_id, "JobID,JobName,State,ElapsedRaw")
        assert row[2] == "COMPLETED"
        assert row[1].startswith("ccat-run-") and "-a0-reduce" in row[1]
        assert run.processing_time_s == float(row[3]) and run.processing_time_s >= 1
        assert run.cpu_hours is not None and run.cpu_hours > 0
        assert run.execution_command and "contract_tool.py" in run.execution_command
    with Session(engine) as session:
        products = session.scalar(select(func.count()).select_from(m.DataProduct))
    assert products is not None and products >= 6 * 2
    # `ccat-wm logs` reads what the SLURM job itself wrote (an array task's output).
    array_run = next(r for r in done if "_" in (r.hpc_job_id or ""))
    log = run_log(engine, array_run.id)
    assert (log.attempt, log.attempts) == (0, 1)
    text = read_log(engine, log)
    assert f"tool ok for {array_run.sub_group_key}" in text and "woke up after 1.5" in text


def peak_in_flight(engine: Engine) -> int:
    """Most runs between STAGING_DATA and their end at one moment (ops DB status history)."""
    change = m.RunStatusChange
    with engine.connect() as conn:
        rows = conn.execute(
            select(change.executed_reduction_step_id, change.status, change.changed_at)
        ).all()
    events = []
    for _, status, moment in rows:
        if status is m.RunStatus.STAGING_DATA:
            events.append((moment, 1))
        elif status in (m.RunStatus.COMPLETED, m.RunStatus.FAILED, m.RunStatus.CANCELLED):
            events.append((moment, -1))
    peak = running = 0
    for _, delta in sorted(events):
        running += delta
        peak = max(peak, running)
    return peak


def test_a_wave_on_slurm_is_submitted_together_within_its_step_limit(
    engine: Engine, tmp_path: Path
) -> None:
    """The first runs go out as one job array before their task runs; the limit holds.

    No array window, so a job array can only come from the submission together.
    """
    setup_pipeline(
        engine,
        tmp_path,
        [tool_step("reduce", max_concurrent_runs=4, parameters={"sleep": 1.0})],
        scans=7,
        location=slurm_location(tmp_path, slurm_array_window_s=0),
    )

    result = run_pipeline(engine, "t")

    assert result.state == "Completed", result.message
    done = [r.ExecutedReductionStep for r in runs(engine)]
    assert [r.status for r in done] == [m.RunStatus.COMPLETED] * 7
    in_arrays = sorted(r.hpc_job_id for r in done if "_" in (r.hpc_job_id or ""))
    base = in_arrays[0].split("_")[0]
    assert in_arrays == [f"{base}_{i}" for i in range(4)]  # the limit's worth, together
    assert all((r.hpc_job_id or "").isdigit() for r in done if "_" not in (r.hpc_job_id or ""))
    assert peak_in_flight(engine) == 4
    assert history(engine, done[0].id) == [
        "PENDING", "STAGING_DATA", "SUBMITTED", "RUNNING", "COLLECTING_RESULTS", "COMPLETED",
    ]  # fmt: skip
    ahead = next(r for r in done if r.hpc_job_id == f"{base}_0")
    lines = task_run_log_lines(
        task_run_named(result.flow_run_id, task_run_name("reduce", ahead.sub_group_key)).id
    )
    assert any(f"submitted with its wave as job {base}_0" in line for line in lines), lines
    assert "reduce: submitted 4 of 7 first run(s) together" in submit_ahead_log(result.flow_run_id)


def test_a_wave_sbatch_refuses_fails_its_runs_as_not_started_and_they_are_retried(
    engine: Engine, tmp_path: Path
) -> None:
    """The submission together fails each run with sbatch's answer; the retry goes alone."""
    setup_pipeline(
        engine,
        tmp_path,
        [tool_step("reduce", max_retries=1)],
        scans=2,
        location=slurm_location(tmp_path, slurm_extra_args=["--constraint=nosuchfeature"]),
    )

    result = run_pipeline(engine, "t")

    assert result.state == "Failed"
    done = [r.ExecutedReductionStep for r in runs(engine)]
    for run in done:
        assert (run.status, run.failure_kind) == (m.RunStatus.FAILED, m.FailureKind.NOT_STARTED)
        assert run.retry_count == 1 and run.hpc_job_id is None
        assert "could not start" in (run.failure_reason or "")
        assert "Invalid feature specification" in (run.failure_reason or "")
        assert history(engine, run.id) == [
            "PENDING", "STAGING_DATA", "FAILED", "PENDING", "STAGING_DATA", "FAILED",
        ]  # fmt: skip
    assert "2 of 2 sub-group run(s) failed" in (result.message or ""), result.message
    assert "reduce: submitted 0 of 2 first run(s) together" in submit_ahead_log(result.flow_run_id)


def submit_ahead_log(flow_run_id: str) -> str:
    """What the flow run's submit-ahead task run logged."""
    task_run = wait_until(
        f"the submit-ahead task run of flow run {flow_run_id}",
        lambda: next(
            (
                t
                for t in flow_task_runs(flow_run_id)
                if t.name.startswith("[bookkeeping] submit-ahead")
            ),
            None,
        ),
        timeout=30,
    )

    def submitted(lines: list[str]) -> bool:
        return any("submitted" in line for line in lines)

    return "\n".join(task_run_log_lines(task_run.id, until=submitted))


def test_cancel_runs_scancel_and_marks_the_run_cancelled(
    engine: Engine, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    setup_pipeline(
        engine,
        tmp_path,
        [tool_step("reduce", parameters={"sleep": 120})],
        scans=1,
        location=slurm_location(tmp_path),
    )
    worker = threading.Thread(target=lambda: run_pipeline(engine, "t"))
    worker.start()
    wait_until(
        "the run to be RUNNING on SLURM",
        lambda: [
            r for r in runs(engine)[:1] if r.ExecutedReductionStep.status is m.RunStatus.RUNNING
        ],
        timeout=60,
    )
    run = runs(engine)[0].ExecutedReductionStep

    cancelled = run_cli(cli_env, "cancel", str(run.id))

    assert cancelled.returncode == 0, cancelled.stderr
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert runs(engine)[0].ExecutedReductionStep.status is m.RunStatus.CANCELLED
    wait_until(
        f"SLURM job {run.hpc_job_id} CANCELLED by 0 in accounting",
        lambda: sacct(run.hpc_job_id, "JobID,State")[0][1] == "CANCELLED by 0",
        timeout=30,
        every=0.5,
    )


@pytest.mark.prefect_ephemeral
def test_a_flow_killed_while_its_slurm_job_runs_is_recovered_exactly_once(
    engine: Engine, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """SIGKILL `ccat-wm run` (and its Prefect server) mid-job; the next flow run adopts it."""
    setup_pipeline(
        engine,
        tmp_path,
        [tool_step("reduce", parameters={"sleep": 6})],
        scans=1,
        location=slurm_location(tmp_path),
    )
    env = {**cli_env, "PREFECT_HOME": str(tmp_path / "prefect")}
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    output = tmp_path / "first-run.log"
    with output.open("w") as out:
        first = subprocess.Popen(
            [str(Path(sys.executable).with_name("ccat-wm")), "run", "t"],
            env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while (
            not (rows := runs(engine))
            or rows[0].ExecutedReductionStep.status is not m.RunStatus.RUNNING
        ):
            assert first.poll() is None, f"ccat-wm run ended early:\n{output.read_text()}"
            assert time.monotonic() < deadline, "the run never started on SLURM"
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    run = runs(engine)[0].ExecutedReductionStep
    assert run.status is m.RunStatus.RUNNING  # left in flight by the dead process

    result = run_pipeline(engine, "t")

    assert result.state == "Completed", result.message
    run = runs(engine)[0].ExecutedReductionStep
    assert (run.status, run.retry_count) == (m.RunStatus.COMPLETED, 0)
    assert history(engine, run.id).count("SUBMITTED") == 1
    # One SLURM job, never resubmitted (a second job never goes away: still fails).
    jobs = reread_accounting(
        lambda: [
            r[0] for r in sacct_by_name(f"ccat-run-{run.id}-", since, tmp_path) if "." not in r[0]
        ],
        lambda found: found == [run.hpc_job_id],
    )
    assert jobs == [run.hpc_job_id]
    with Session(engine) as session:
        paths = session.scalars(
            select(m.DataProduct.file_path).where(
                m.DataProduct.executed_reduction_step_id == run.id
            )
        ).all()
    assert len(paths) == len(set(paths)) >= 3 and all(f"run-{run.id}" in p for p in paths)


def sacct_by_name(prefix: str, since: str, under: Path) -> list[list[str]]:
    """Accounting rows of the jobs since `since` whose name starts with `prefix` and whose
    working directory is under `under` (another test's database has the same run ids)."""
    out = subprocess.run(
        ["sacct", "-n", "-P", "-a", f"--starttime={since}", "--format=JobID,JobName,WorkDir"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = [line.split("|") for line in out.splitlines()]
    return [r for r in rows if r[1].startswith(prefix) and r[2].startswith(str(under))]
