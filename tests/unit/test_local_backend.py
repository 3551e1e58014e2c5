"""The local backend on real processes: metrics of the whole tree, cancel, state across processes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from infra.backends import BackendError, JobSpec, JobState, get_backend
from infra.backends.local import LocalBackend
from tests.helpers import wait_until

TREE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import time; b = bytearray(300 * 1024 * 1024); time.sleep(0.6)"])
block = bytearray(100 * 1024 * 1024)
end = time.process_time() + 0.5
while time.process_time() < end:
    pass
child.wait()
print("done")
"""


def spec(tmp_path: Path, code: str, name: str = "job") -> JobSpec:
    return JobSpec(
        name=name,
        argv=(sys.executable, "-c", code),
        env={"PATH": os.environ["PATH"]},
        cwd=tmp_path,
        log_path=tmp_path / f"{name}.log",
    )


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def wait(backend: LocalBackend, job_id: str, timeout: float = 30) -> JobState:
    info = wait_until(
        f"job {job_id} to finish",
        lambda: (found := backend.status(job_id)).state.finished and found,
        timeout,
        every=0.05,
    )
    return info.state


def test_metrics_cover_the_whole_process_tree(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "jobs")
    job_id = backend.submit(spec(tmp_path, TREE))
    assert wait(backend, job_id) is JobState.COMPLETED
    info = backend.status(job_id)
    assert info.exit_code == 0
    assert info.peak_memory_gb is not None and info.peak_memory_gb > 0.38  # 100 MB + 300 MB child
    assert info.cpu_hours is not None and info.cpu_hours * 3600 >= 0.45
    assert info.wall_time_s is not None and info.wall_time_s >= 0.6
    assert backend.logs(job_id).strip() == "done"
    # Another process (a new backend object, no shared memory) reads the same outcome.
    assert LocalBackend(tmp_path / "jobs").status(job_id).exit_code == 0


def test_failures_report_exit_code_and_reason(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "jobs")
    job_id = backend.submit(spec(tmp_path, "import sys; sys.exit(7)"))
    assert wait(backend, job_id) is JobState.FAILED
    info = backend.status(job_id)
    assert (info.exit_code, info.reason) == (7, "exit code 7")


def test_cancel_from_another_backend_instance_kills_the_process_group(tmp_path: Path) -> None:
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    backend = LocalBackend(tmp_path / "jobs")
    job_id = backend.submit(spec(tmp_path, code))

    def child_started() -> bool:  # the program runs: the child it starts is there
        return any(
            p.info["cmdline"] == [sys.executable, "-c", "import time; time.sleep(60)"]
            and _pgid(p.pid) == int(job_id)
            for p in psutil.process_iter(["cmdline"])
        )

    wait_until("the job's child process", child_started, timeout=30, every=0.05)
    LocalBackend(tmp_path / "jobs").cancel(job_id)
    assert wait(backend, job_id, timeout=10) is JobState.CANCELLED
    assert backend.status(job_id).exit_code == -15
    survivors = [
        p for p in psutil.process_iter(["status"])
        if _pgid(p.pid) == int(job_id) and p.info["status"] != psutil.STATUS_ZOMBIE
    ]  # fmt: skip
    assert survivors == []


def test_unknown_jobs_and_backends(tmp_path: Path) -> None:
    assert LocalBackend(tmp_path).status("999999999").state is JobState.UNKNOWN
    with pytest.raises(
        BackendError,
        match="unknown backend 'pbs'; known backends: kubernetes, local, slurm",
    ):
        get_backend("pbs", tmp_path, {})
    with pytest.raises(BackendError, match="cannot start"):
        LocalBackend(tmp_path).submit(
            JobSpec("x", ("/nonexistent/prog",), {}, tmp_path, tmp_path / "x.log")
        )


def test_wait_returns_when_the_job_ends_not_after_the_timeout(tmp_path: Path) -> None:
    """The watcher is woken by the job's end (a short job is not held up by polling)."""
    backend = LocalBackend(tmp_path / "jobs")
    job_id = backend.submit(spec(tmp_path, "import time; time.sleep(0.3)"))
    start = time.monotonic()
    backend.wait(job_id, 20.0)
    waited = time.monotonic() - start
    assert backend.status(job_id).state is JobState.COMPLETED
    assert waited < 10.0, f"wait slept {waited:.1f} s of its 20 s timeout after the job ended"
    backend.forget(job_id)
    # forgotten by this process, the outcome is still read from the job's state file
    assert backend.status(job_id).state is JobState.COMPLETED


def test_wait_for_a_job_of_another_process_sleeps_its_interval(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "jobs")
    start = time.monotonic()
    backend.wait("999999999", 0.2)
    assert time.monotonic() - start >= 0.2


def test_the_end_record_is_a_second_file_and_replaces_none(tmp_path: Path) -> None:
    """Start and end are two files: no state write deletes an inode (see `_write`)."""
    backend = LocalBackend(tmp_path / "jobs")
    job_id = backend.submit(spec(tmp_path, "import time; time.sleep(0.3)"))
    start_record = tmp_path / "jobs" / f"{job_id}.json"
    inode = start_record.stat().st_ino
    assert wait(backend, job_id) is JobState.COMPLETED
    assert start_record.stat().st_ino == inode
    # GNU time's record is in the backend's own directory too, not beside the job's log
    # (which the job can write): `<job name>.rusage`; `<job name>.job` names the job's id.
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == [
        f"{job_id}.end.json",
        f"{job_id}.json",
        "job.job",
        "job.rusage",
    ]
    # Another process reads the end record, not the start record (which says RUNNING).
    assert LocalBackend(tmp_path / "jobs").status(job_id).state is JobState.COMPLETED


def test_a_job_ends_even_when_the_process_holds_descriptors_above_1024(tmp_path: Path) -> None:
    """A wide flow holds many sockets: the job's exit is still seen (select() would fail
    on a descriptor above 1024 and, before, left the run RUNNING forever)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        backend = LocalBackend(tmp_path / "jobs")
        job_id = backend.submit(spec(tmp_path, "print('done')"))
        assert wait(backend, job_id, timeout=10) is JobState.COMPLETED
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_job_whose_end_cannot_be_read_fails_instead_of_running_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's exit status cannot be read (as when something else reaped the
    process): the job is recorded FAILED with the reason, never left RUNNING."""

    def reaped_elsewhere(pid: int, options: int) -> None:
        raise ChildProcessError(10, "No child processes")

    monkeypatch.setattr("infra.backends.local.os.wait4", reaped_elsewhere)
    backend = LocalBackend(tmp_path / "jobs")
    job_id = backend.submit(spec(tmp_path, "import time; time.sleep(0.2)"))
    assert wait(backend, job_id, timeout=10) is JobState.FAILED
    assert "lost track of the job" in (backend.status(job_id).reason or "")
