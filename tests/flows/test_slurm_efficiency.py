"""Using the cluster well, on the real single-node SLURM cluster (infra/slurm/start-cluster.sh).

Retries that ask for more after OUT_OF_MEMORY or TIMEOUT, requests the cluster can
never satisfy failing at once, jobs held for a reason that cannot clear cancelled after
a grace period, and a pipeline's priority reaching SLURM's scheduler.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from ccat_ops_db import models as m
from ccat_wm.cli.driver import run_pipeline
from infra.backends import JobSpec, JobState, Resources
from infra.backends.slurm import SlurmBackend
from infra.backends.slurm_settings import settings_from
from tests.backends.test_backend_contract import wait
from tests.flows.conftest import setup_pipeline, tool_step
from tests.flows.test_pipeline_flow import history, runs
from tests.flows.test_slurm_pipeline import accounted_job, reread_accounting, sacct, slurm_location
from tests.helpers import SLURM_TEST_SETTINGS, cli_json, run_cli

pytestmark = [pytest.mark.db, pytest.mark.usefixtures("prefect_server", "slurm_cluster")]


def attempts(engine: Engine, run_id: int) -> list[Any]:
    """The run's attempts as recorded, first first."""
    a = m.RunAttempt
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(a).where(a.executed_reduction_step_id == run_id).order_by(a.attempt)
            )
        )


def scontrol(*args: str) -> str:
    """Run `scontrol` (an operator's change to the cluster) and return its output."""
    return subprocess.run(
        ["scontrol", *args], capture_output=True, text=True, check=True
    ).stdout  # fmt: skip


def test_retries_after_out_of_memory_and_timeout_ask_for_more_and_complete(
    engine: Engine, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """A program that always needs 300 MB, asked 100 MB; one that always sleeps 75 s, asked 1 min."""
    setup_pipeline(
        engine,
        tmp_path,
        [
            tool_step(
                "hog",
                max_retries=2,
                parameters={"mode": "hog", "arg": 300},
                config_resources={"cpu": 1, "memory_gb": 0.1, "time_hours": 1},
            ),
            tool_step(
                "slow",
                max_retries=1,
                parameters={"sleep": 75},
                config_resources={"cpu": 1, "memory_gb": 0.5, "time_hours": 1 / 60},
            ),
        ],
        scans=1,
        location=slurm_location(tmp_path),
        priority=30,
    )

    result = run_pipeline(engine, "t")

    assert result.state == "Completed", result.message
    by_step = {r.step: r.ExecutedReductionStep for r in runs(engine)}
    hog, slow = by_step["hog"], by_step["slow"]
    assert (hog.status, hog.retry_count) == (m.RunStatus.COMPLETED, 2)
    memory = [
        (a.attempt, a.requested_resources["memory_gb"], a.status, a.failure_kind)
        for a in attempts(engine, hog.id)
    ]
    assert memory == [
        (0, 0.1, m.RunStatus.FAILED, m.FailureKind.OUT_OF_MEMORY),
        (1, 205 / 1024, m.RunStatus.FAILED, m.FailureKind.OUT_OF_MEMORY),
        (2, 410 / 1024, m.RunStatus.COMPLETED, None),
    ]
    jobs = [a.hpc_job_id for a in attempts(engine, hog.id)]
    assert len(set(jobs)) == 3  # a job per attempt, each asking SLURM for its own memory
    assert [accounted_job(j, "JobID,JobName,ReqMem")[2] for j in jobs] == ["103M", "205M", "410M"]
    assert attempts(engine, hog.id)[2].peak_memory_gb > 0.29  # it did need the 300 MB
    assert (slow.status, slow.retry_count) == (m.RunStatus.COMPLETED, 1)
    limits = [
        (a.requested_resources["time_hours"], a.failure_kind, a.hpc_job_id)
        for a in attempts(engine, slow.id)
    ]
    assert [(h * 60, kind) for h, kind, _ in limits] == [
        (1.0, m.FailureKind.TIMEOUT),
        (2.0, None),
    ]
    assert [accounted_job(j, "JobID,JobName,Timelimit")[2] for _, _, j in limits] == [
        "00:01:00", "00:02:00",
    ]  # fmt: skip
    # The pipeline's priority 30 reached SLURM as nice 100 - 30.
    assert "Nice=70" in scontrol("show", "job", jobs[2])

    # Operators see each attempt's request: `status` shows the latest, `logs` each one.
    shown = {r["step"]: r for r in cli_json(cli_env, "status", "t", "--json")}
    assert shown["hog"]["requested_resources"]["memory_gb"] == 410 / 1024
    assert shown["hog"]["failure_kind"] == "OUT_OF_MEMORY"  # the failed attempts' kind is kept
    table = run_cli(cli_env, "status", "t")
    assert "1c 0.4G 1h" in table.stdout and "1c 0.5G 0.0333h" in table.stdout
    first = run_cli(cli_env, "logs", str(hog.id), "--attempt", "1")
    assert first.returncode == 0, first.stderr
    assert f"# attempt 1: asked for 1 CPU, 0.1 GB, 1 h; job {jobs[0]}; " in first.stderr
    assert "FAILED (OUT_OF_MEMORY): OUT_OF_MEMORY" in first.stderr
    last = run_cli(cli_env, "logs", str(hog.id))
    assert "asked for 1 CPU, 0.4 GB, 1 h" in last.stderr and "COMPLETED; used 0.3" in last.stderr


def test_a_request_the_location_can_never_give_fails_at_once_without_a_job(
    engine: Engine, tmp_path: Path
) -> None:
    """64 GB on a 16 GB partition, 3 h where the location allows 2 h: no job, no retry."""
    setup_pipeline(
        engine,
        tmp_path,
        [
            tool_step(
                "huge",
                max_retries=2,
                config_resources={"cpu": 1, "memory_gb": 64, "time_hours": 1},
            ),
            tool_step(
                "long",
                max_retries=2,
                config_resources={"cpu": 1, "memory_gb": 0.5, "time_hours": 3},
            ),
        ],
        scans=1,
        location=slurm_location(tmp_path, max_time_hours=2),
    )

    run_pipeline(engine, "t")

    by_step = {r.step: r.ExecutedReductionStep for r in runs(engine)}
    for run in by_step.values():
        assert (run.status, run.failure_kind) == (m.RunStatus.FAILED, m.FailureKind.OVER_LIMIT)
        assert (run.retry_count, run.hpc_job_id) == (0, None)  # no retry, no job
        assert history(engine, run.id).count("PENDING") == 1
        (attempt,) = attempts(engine, run.id)
        assert attempt.hpc_job_id is None and attempt.status is m.RunStatus.FAILED
    huge, long = by_step["huge"], by_step["long"]
    assert "memory_gb 64 GB exceeds the limit 15.62 GB (SLURM partition debug)" in (
        huge.failure_reason
    )
    assert attempts(engine, huge.id)[0].requested_resources["memory_gb"] == 64
    assert "time_hours 3 h exceeds the limit 2 h (location setting max_time_hours)" in (
        long.failure_reason
    )
    # The sub-groups are failed (retries used up): the next flow run creates no new run.
    run_pipeline(engine, "t")
    assert len(runs(engine)) == 2


def test_a_job_held_for_a_reason_that_cannot_clear_is_cancelled_after_the_grace_period(
    engine: Engine, tmp_path: Path
) -> None:
    """PartitionDown may clear (the job waits); PartitionTimeLimit cannot (cancelled, failed)."""
    partition = f"ccatstuck{os.getpid()}"
    scontrol("create", f"PartitionName={partition}", "Nodes=ALL", "MaxTime=10", "State=DOWN")
    try:
        setup_pipeline(
            engine,
            tmp_path,
            [
                tool_step(
                    "wait",
                    max_retries=2,
                    config_resources={"cpu": 1, "memory_gb": 0.1, "time_hours": 5 / 60},
                )
            ],
            scans=1,
            location=slurm_location(tmp_path, slurm_partition=partition, pending_grace_s=3),
        )
        worker = threading.Thread(target=lambda: run_pipeline(engine, "t"))
        worker.start()
        deadline = time.monotonic() + 60
        while not (found := runs(engine)) or found[0].ExecutedReductionStep.hpc_job_id is None:
            assert time.monotonic() < deadline, "the run was never submitted"
            time.sleep(0.2)
        job_id = found[0].ExecutedReductionStep.hpc_job_id
        time.sleep(5)  # longer than the grace period: a down partition may come back
        run = runs(engine)[0].ExecutedReductionStep
        assert run.status is m.RunStatus.SUBMITTED
        assert "PartitionDown" in subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%r"], capture_output=True, text=True, check=True
        ).stdout  # fmt: skip

        # An operator shortens the partition's time limit below the job's: it cannot run.
        scontrol("update", f"PartitionName={partition}", "MaxTime=1", "State=UP")
        worker.join(timeout=60)

        assert not worker.is_alive()
        run = runs(engine)[0].ExecutedReductionStep
        assert (run.status, run.failure_kind) == (m.RunStatus.FAILED, m.FailureKind.STUCK_PENDING)
        assert run.retry_count == 0  # not retried: the same job would wait the same way
        assert "PartitionTimeLimit" in run.failure_reason
        assert f"job {job_id} was held for more than 3 s" in run.failure_reason
        state = reread_accounting(
            lambda: sacct(job_id, "JobID,State")[0][1], lambda s: s.startswith("CANCELLED")
        )
        assert state.startswith("CANCELLED")
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["scancel", f"--partition={partition}"], check=True)
            scontrol("delete", f"PartitionName={partition}")


def started_at(job_id: str) -> str:
    """When SLURM started the job (ISO 8601), once accounting has it."""
    return reread_accounting(
        lambda: sacct(job_id, "JobID,Start")[0][1], lambda start: start != "Unknown"
    )


def whole_node_job(tmp_path: Path, name: str, seconds: int, priority: int) -> JobSpec:
    """A job that takes all 16 CPUs of the test node, so that jobs run one at a time."""
    return JobSpec(
        name=name,
        argv=("sleep", str(seconds)),
        env={"PATH": os.environ["PATH"]},
        cwd=tmp_path,
        log_path=tmp_path / f"{name}.log",
        resources=Resources(cpu=16, memory_gb=0.1, time_hours=0.1),
        priority=priority,
    )


def test_the_higher_priority_pipelines_pending_job_starts_first_on_a_saturated_node(
    tmp_path: Path,
) -> None:
    """Submitted after the low-priority job, the high-priority one still starts before it."""
    backend = SlurmBackend(tmp_path / ".jobs", settings_from(SLURM_TEST_SETTINGS))
    blocker = backend.submit(whole_node_job(tmp_path, "ccat-blocker", 60, 0))
    deadline = time.monotonic() + 30
    while backend.status(blocker).state is not JobState.RUNNING:
        assert time.monotonic() < deadline, "the blocking job never started"
        time.sleep(0.3)
    low = backend.submit(whole_node_job(tmp_path, "ccat-low", 2, priority=0))
    high = backend.submit(whole_node_job(tmp_path, "ccat-high", 2, priority=10))
    assert "Nice=100" in scontrol("show", "job", low) and "Nice=90" in scontrol("show", "job", high)

    backend.cancel(blocker)

    for job_id in (low, high):
        assert wait(backend, job_id).state is JobState.COMPLETED
    starts = {j: started_at(j) for j in (high, low)}
    assert starts[high] < starts[low], starts
