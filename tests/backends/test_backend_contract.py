"""One contract every backend passes, run for real against local processes and SLURM."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.backends import Backend, JobInfo, JobSpec, JobState, Resources, get_backend
from tests.helpers import SLURM_TEST_SETTINGS, wait_gone, wait_until


@pytest.fixture(params=["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A backend with its job state under the test's directory."""
    if request.param == "slurm":
        request.getfixturevalue("slurm_cluster")
        yield get_backend("slurm", tmp_path / ".jobs", SLURM_TEST_SETTINGS)
    else:
        yield get_backend("local", tmp_path / ".jobs", {})


def job(tmp_path: Path, name: str, *argv: str, memory_gb: float = 0.5) -> JobSpec:
    """A job running `argv` with a small environment and its log under `tmp_path`."""
    return JobSpec(
        name=name,
        argv=argv,
        env={"PATH": os.environ["PATH"], "CCAT_TEST_VALUE": "spaces and $(dollar)"},
        cwd=tmp_path,
        log_path=tmp_path / f"{name}.log",
        resources=Resources(cpu=1, memory_gb=memory_gb, time_hours=0.1),
    )


def wait(backend: Backend, job_id: str, timeout_s: float = 90.0) -> JobInfo:
    """Poll until the job finished (as the run executor does)."""
    return wait_until(
        f"job {job_id} to finish",
        lambda: (info := backend.status(job_id)).state.finished and info,
        timeout_s,
        every=0.1,
    )


def wait_running(backend: Backend, job_id: str, timeout_s: float = 60.0) -> None:
    wait_until(
        f"job {job_id} to run",
        lambda: backend.status(job_id).state is JobState.RUNNING,
        timeout_s,
        every=0.1,
    )


HOLD_MEMORY = (
    "import os, sys, time\n"
    "block = bytearray(96 * 1024 * 1024)\n"
    "for i in range(0, len(block), 4096): block[i] = 1\n"
    "end = time.process_time() + 0.3\n"
    "while time.process_time() < end: pass\n"
    "time.sleep(2.5)\n"
    "print('held', os.environ['CCAT_TEST_VALUE'], sys.argv[1:], flush=True)\n"
)


def test_a_completed_job_reports_exit_code_metrics_and_logs(
    backend: Backend, tmp_path: Path
) -> None:
    job_id = backend.submit(job(tmp_path, "ok", sys.executable, "-c", HOLD_MEMORY, "a b"))
    info = wait(backend, job_id)
    assert info.state is JobState.COMPLETED
    assert info.exit_code == 0
    assert info.wall_time_s is not None and 2.0 <= info.wall_time_s < 30
    assert info.cpu_hours is not None and info.cpu_hours * 3600 >= 0.25
    assert info.peak_memory_gb is not None and 0.09 <= info.peak_memory_gb < 1.0
    assert "held spaces and $(dollar) ['a b']" in backend.logs(job_id)


def test_a_failing_job_reports_its_exit_code(backend: Backend, tmp_path: Path) -> None:
    job_id = backend.submit(job(tmp_path, "fail", "sh", "-c", "echo about to fail >&2; exit 3"))
    info = wait(backend, job_id)
    assert (info.state, info.exit_code, info.reason) == (JobState.FAILED, 3, "exit code 3")
    assert "about to fail" in backend.logs(job_id)


def test_arguments_reach_the_program_literally(backend: Backend, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    argv = ("printf", "[%s]\\n", f"$(touch {pwned})", "; rm -rf /nonexistent", "`id`", "*")
    job_id = backend.submit(job(tmp_path, "literal", *argv))
    assert wait(backend, job_id).state is JobState.COMPLETED
    assert backend.logs(job_id).splitlines()[:4] == [
        f"[$(touch {pwned})]", "[; rm -rf /nonexistent]", "[`id`]", "[*]",
    ]  # fmt: skip
    assert not pwned.exists()


def test_cancel_stops_a_running_job(backend: Backend, tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    job_id = backend.submit(job(tmp_path, "long", "sh", "-c", f"sleep 60; touch {marker}"))
    wait_running(backend, job_id)
    started = time.monotonic()
    backend.cancel(job_id)
    info = wait(backend, job_id, timeout_s=45)
    assert info.state is JobState.CANCELLED
    assert time.monotonic() - started < 40
    assert not marker.exists()


def test_local_a_job_is_found_by_its_name_from_another_process(tmp_path: Path) -> None:
    """After a crash the adopting process knows the job's name only (`resume`)."""
    submitter = get_backend("local", tmp_path / ".jobs", {})
    job_id = submitter.submit(job(tmp_path, "ccat-run-7-a0-reduce", "sleep", "0.2"))
    elsewhere = get_backend("local", tmp_path / ".jobs", {})  # reads the state files only

    assert elsewhere.find("ccat-run-7-a0-reduce") == job_id
    assert elsewhere.find("ccat-run-7-a1-reduce") is None
    assert wait(elsewhere, job_id).state is JobState.COMPLETED


def test_an_unknown_job_is_unknown(backend: Backend, tmp_path: Path) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # SLURM: squeue and sacct were both asked
        info = backend.status("987654")
        time.sleep(0.2)
    assert info.state is JobState.UNKNOWN


def test_a_job_killed_by_a_signal_is_reported_by_the_signal_name(
    backend: Backend, tmp_path: Path
) -> None:
    killed = backend.submit(job(tmp_path, "killed", "sh", "-c", "kill -KILL $$"))
    info = wait(backend, killed)
    assert (info.state, info.exit_code, info.reason) == (
        JobState.FAILED, -9, "killed by SIGKILL",
    )  # fmt: skip
    # A shell whose command died of a signal exits 128 + N: named too, not "exit code 143"
    # (Slurm 22.05's accounting records such an exit as code N itself: plain local only).
    if backend.name == "local":
        wrapped = backend.submit(job(tmp_path, "wrapped", "sh", "-c", "sleep 9 & kill $!; wait $!"))
        assert wait(backend, wrapped).reason == "killed by SIGTERM (exit code 143)"


def test_local_nothing_a_job_started_outlives_it(tmp_path: Path) -> None:
    """A daemonized grandchild and a child left in the job's process group both end with it."""
    backend = get_backend("local", tmp_path / ".jobs", {})
    late, pids = tmp_path / "late", tmp_path / "pids"
    script = (
        f"setsid sh -c 'echo $$ >> {pids}; sleep 2; echo daemon >> {late}' & "
        f"sh -c 'echo $$ >> {pids}; sleep 2; echo child >> {late}' & "
        f"while [ $(cat {pids} 2>/dev/null | wc -l) -lt 2 ]; do sleep 0.05; done; "
        "echo started"
    )
    info = wait(backend, backend.submit(job(tmp_path, "leaves", "sh", "-c", script)))
    assert info.state is JobState.COMPLETED
    # Once both are gone (killed, or done writing two seconds after the job), a write of
    # theirs cannot be missed. (Their pids, written inside the job's PID namespace, only
    # tell that both had started before the job ended.)
    wait_gone(str(late))
    assert not late.exists(), late.read_text()
