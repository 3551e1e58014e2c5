"""The local backend: a run's job is a subprocess of this machine.

The job starts in its own session (process group), so that cancelling it stops the whole
process tree. The job runs under GNU `time` (Debian package `time`), a small process
whose own children's maximum resident set size is exact: `ru_maxrss` of a child forked
directly from this (large) Python process would count the forked copy of it. A monitor
thread in the submitting process also samples the resident memory of the whole tree
(the job and all its descendants, when the thread gets the CPU) and reaps the job with
`wait4`, whose resource usage covers every waited-for descendant (CPU-hours). Peak
memory is the larger of the sampled tree sum and the largest single process (`time`'s
`%M`, and each sampled process's `VmHWM`). Without GNU `time`, only the samples count.
The job's start and its outcome are also written to state files (`<pid>.json`,
`<pid>.end.json`) under the location's job-state directory, so that another process
(`ccat-wm cancel`, a restarted flow) can read them; job ids are process ids, and
`<job name>.job` holds the id of the job started under a name (`find`: the flow run
that adopts a run whose process died before it recorded the job finds it there).

Nothing a job started outlives it: the job runs in its own PID namespace (`unshare
--pid --fork --kill-child --mount-proc`, with `--user --map-current-user` when not
root), whose first process is GNU `time`; when the job's own process ends, `time` ends,
and the kernel kills every process left in the namespace, a daemonized grandchild
included (podman's `conmon` and the container it watches), before the run's outputs
are collected. Where no namespace can be made (no `unshare`, user
namespaces disabled) the job's process group is killed when the job ends, and a
descendant that made its own session can outlive it; collection then still detects any
product that changes while it is registered. A job killed by a signal is reported by
the signal's name (`killed by SIGKILL`), read from `time`'s record.

A job whose supervising process died (a killed `ccat-wm run`) keeps running; when it
ends, its outcome is read from GNU `time`'s record (exit status or signal, peak memory),
so the flow run that adopts its run collects it as usual. Without GNU `time` such a job
is reported UNKNOWN once it ends. Descendants that detach from the tree are not sampled.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import psutil

from infra.backends.base import Backend, BackendError, JobInfo, JobSpec, JobState, exit_reason
from infra.backends.local_launch import append_log, namespace_prefix, which
from infra.backends.process_measure import (
    EXITED,
    TERMINATED,
    largest_process,
    process_tree,
    signalled,
    tree_memory,
)

GIB = 1024**3
GNU_TIME = shutil.which("time", path="/usr/bin:/bin")
"""GNU time, which measures the job's largest process (None: not installed)."""
CANCEL_GRACE_S = 5.0
"""Seconds between SIGTERM and SIGKILL when a job is cancelled."""
FIRST_SAMPLE_S = 0.02
"""Delay of the first memory sample of the tree (shorter jobs: GNU time's figure counts)."""
MAX_SAMPLE_INTERVAL_S = 0.5
"""Longest pause between two memory samples of a running job (the interval doubles)."""


@dataclass(slots=True)
class _Record:
    """The state file's content."""

    pid: int
    create_time: float
    started: float
    log_path: str
    rusage_path: str = ""
    state: str = JobState.RUNNING.value
    exit_code: int | None = None
    wall_time_s: float | None = None
    cpu_hours: float | None = None
    peak_memory_gb: float | None = None
    reason: str | None = None
    cancel_requested: bool = False
    isolated: bool = False
    """The job runs in its own PID namespace under `unshare` and `time`."""

    def info(self) -> JobInfo:
        return JobInfo(
            JobState(self.state),
            self.exit_code,
            self.wall_time_s,
            self.cpu_hours,
            self.peak_memory_gb,
            self.reason,
        )


_LIVE: dict[str, _Record] = {}
"""Jobs submitted by this process, by job id (shared by every LocalBackend instance)."""
_ENDED: dict[str, threading.Event] = {}
"""Set by a job's monitor once its outcome is recorded (for `wait`)."""
_LIVE_LOCK = threading.Lock()


class LocalBackend(Backend):
    """Runs jobs as local subprocesses; see the module docstring."""

    name = "local"
    starts_at_once = True

    def __init__(self, state_dir: Path) -> None:
        """Keep job state files under `state_dir`."""
        self.state_dir = state_dir

    def submit(self, spec: JobSpec) -> str:
        """Start the job in a new session, with its output in `spec.log_path`."""
        # long: one launch: its command line, log, process, state files and monitor, in order
        self.state_dir.mkdir(parents=True, exist_ok=True)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        # GNU time writes here: in the backend's own directory, which no job can write,
        # not beside the log (a link planted there would redirect the write).
        rusage = self.state_dir / f"{spec.name.replace('/', '_')}.rusage"
        rusage.unlink(missing_ok=True)
        argv = list(spec.argv)
        program = which(argv[0], spec.env.get("PATH", os.defpath))
        if program is None:
            raise BackendError(
                f"cannot start {argv[0]!r} for job {spec.name}: no such executable "
                f"(searched PATH of the job)"
            )
        isolation = namespace_prefix() if GNU_TIME is not None else []
        if GNU_TIME is not None:  # not --quiet: it records "Command terminated by signal N"
            argv = [*isolation, GNU_TIME, "--format", "%M", "--output", str(rusage), *argv]
        with append_log(spec.log_path, spec.name) as log:
            try:
                process = subprocess.Popen(  # noqa: S603 - an argument list, no shell
                    argv,
                    cwd=spec.cwd,
                    env=dict(spec.env),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise BackendError(
                    f"cannot start {spec.argv[0]!r} for job {spec.name}: {exc}"
                ) from exc
        job_id = str(process.pid)
        # A reused process id: the end record of an earlier job must not be read as this one's.
        self._path(job_id, ended=True).unlink(missing_ok=True)
        try:
            create_time = psutil.Process(process.pid).create_time()
        except psutil.Error:  # already gone: keep a placeholder, reaping still works
            create_time = 0.0
        record = _Record(process.pid, create_time, time.time(), str(spec.log_path), str(rusage))
        record.isolated = bool(isolation)
        with _LIVE_LOCK:
            _LIVE[job_id] = record
            _ENDED[job_id] = threading.Event()
        self._write(record)
        self._name_path(spec.name).write_text(job_id)  # for `find` after a crash
        threading.Thread(
            target=self._monitor, args=(process, record), name=f"local-job-{job_id}", daemon=True
        ).start()
        return job_id

    def find(self, name: str) -> str | None:
        """Return the job started under `name` by any process (its id may not be recorded)."""
        try:
            job_id = self._name_path(name).read_text().strip()
        except OSError:
            return None
        return job_id if job_id and self._read(job_id) is not None else None

    def status(self, job_id: str) -> JobInfo:
        """Return the job's state from this process's monitor or from its state file."""
        with _LIVE_LOCK:
            live = _LIVE.get(job_id)
        if live is not None:
            if live.state == JobState.RUNNING.value:
                return JobInfo(JobState.RUNNING, wall_time_s=time.time() - live.started)
            return live.info()
        record = self._read(job_id)
        if record is None:
            return JobInfo(JobState.UNKNOWN, reason=f"no local job {job_id}")
        return self._status_from_files(record)

    def _status_from_files(self, record: _Record) -> JobInfo:
        """State of a job this process did not start (another process's, or a dead one's)."""
        if record.state != JobState.RUNNING.value:
            return record.info()
        if _alive(record):
            return JobInfo(JobState.RUNNING, wall_time_s=time.time() - record.started)
        ended = _unwatched_end(record)
        if ended is not None:  # its supervisor died; GNU time recorded how it ended
            self._write(ended)
            return ended.info()
        return JobInfo(
            JobState.UNKNOWN, reason="process ended while no supervising process was watching it"
        )

    def wait(self, job_id: str, timeout_s: float) -> None:
        """Return when this process's monitor has recorded the job's end, or after `timeout_s`."""
        with _LIVE_LOCK:
            ended = _ENDED.get(job_id)
        if ended is None:  # not started by this process: its state file is polled
            time.sleep(timeout_s)
        else:
            ended.wait(timeout_s)

    def forget(self, job_id: str) -> None:
        """Drop a finished job from this process's memory (its state file stays)."""
        with _LIVE_LOCK:
            record = _LIVE.get(job_id)
            if record is not None and record.state != JobState.RUNNING.value:
                del _LIVE[job_id]
                _ENDED.pop(job_id, None)

    def cancel(self, job_id: str) -> None:
        """SIGTERM the job's process group, SIGKILL it after a grace period."""
        with _LIVE_LOCK:
            record = _LIVE.get(job_id)
        record = record or self._read(job_id)
        if record is None or record.state != JobState.RUNNING.value or not _alive(record):
            return
        record.cancel_requested = True  # the monitor reports the exit as CANCELLED
        if record.isolated:  # SIGTERM to the job's processes, not to its wrappers
            for pid in process_tree(record.pid)[2:]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGTERM)
        else:
            _signal_group(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + CANCEL_GRACE_S
        while time.monotonic() < deadline and _alive(record):
            time.sleep(0.05)
        if _alive(record):
            _signal_group(record.pid, signal.SIGKILL)
        if job_id not in _LIVE:  # nobody reaps it here: record the cancellation ourselves
            record.state = JobState.CANCELLED.value
            record.reason = "cancelled"
            self._write(record)

    def logs(self, job_id: str) -> str:
        """Return the job's captured stdout and stderr."""
        with _LIVE_LOCK:
            record = _LIVE.get(job_id)
        record = record or self._read(job_id)
        if record is None:
            raise BackendError(f"no local job {job_id}")
        path = Path(record.log_path)
        return path.read_text(errors="replace") if path.exists() else ""

    def _monitor(self, process: subprocess.Popen[bytes], record: _Record) -> None:
        """Record the job's outcome when it ends; never leave it RUNNING if this fails.

        A monitor that died silently would leave its run RUNNING forever (the job's
        record says so): any error is recorded as the job's failure instead.
        """
        try:
            self._follow_job(process, record)
        except Exception as exc:  # recorded as the job's end, not lost
            record.state = JobState.FAILED.value
            record.reason = f"the local backend lost track of the job: {exc!r}"[:500]
            with contextlib.suppress(OSError):  # its state directory is gone: nobody reads it
                self._write(record)
        with _LIVE_LOCK:
            ended = _ENDED.get(str(record.pid))
        if ended is not None:
            ended.set()

    def _follow_job(self, process: subprocess.Popen[bytes], record: _Record) -> None:
        """Sample the tree's memory until the job ends, then record its outcome."""
        start = time.monotonic()
        peak_rss = 0
        interval = FIRST_SAMPLE_S
        exited = os.pidfd_open(process.pid)  # readable once the job exits: no polling
        waiter = select.poll()  # not select(): a busy process has descriptors above 1024
        waiter.register(exited, select.POLLIN)
        try:
            while not waiter.poll(interval * 1000):
                total, high_water = tree_memory(process.pid)
                peak_rss = max(peak_rss, total, high_water)
                interval = min(interval * 2, MAX_SAMPLE_INTERVAL_S)
        finally:
            os.close(exited)
        # The job's leader is a zombie until reaped, so its process group id cannot be
        # reused yet: whatever of the job is left in its group ends now.
        _signal_group(process.pid, signal.SIGKILL)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - start
        code = signalled(record.rusage_path) or os.waitstatus_to_exitcode(status)
        process.returncode = code
        record.exit_code = code
        record.wall_time_s = wall
        record.cpu_hours = (usage.ru_utime + usage.ru_stime) / 3600.0
        record.peak_memory_gb = max(peak_rss, largest_process(record.rusage_path)) / GIB
        if code == 0:
            state, reason = JobState.COMPLETED.value, record.reason
        elif record.cancel_requested:
            state, reason = JobState.CANCELLED.value, "cancelled"
        else:
            state, reason = JobState.FAILED.value, exit_reason(code)
        # The end record is on disk before this process says the job ended: a status read
        # here and one read by another process from the files never disagree.
        self._write(replace(record, state=state, reason=reason))
        record.state, record.reason = state, reason

    def _name_path(self, name: str) -> Path:
        return self.state_dir / f"{name.replace('/', '_')}.job"

    def _path(self, job_id: str, *, ended: bool = False) -> Path:
        return self.state_dir / f"{job_id}{'.end' if ended else ''}.json"

    def _write(self, record: _Record) -> None:
        """Write the start record, or the end record once the job ended (atomically, by rename).

        Start and end go to two files so that no write replaces (deletes) a file: on an
        ext4 without a journal, as on this project's development machines, every recently
        deleted inode is skipped, one lookup each, by each new file or directory made in its
        block group for the next one to six minutes (`recently_deleted` in the kernel), and
        a thousand jobs' replaced state files made each run directory cost milliseconds.
        """
        path = self._path(str(record.pid), ended=record.state != JobState.RUNNING.value)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(asdict(record)))
        tmp.rename(path)

    def _read(self, job_id: str) -> _Record | None:
        """Read the job's end record, else its start record (None: neither is readable)."""
        for path in (self._path(job_id, ended=True), self._path(job_id)):
            try:
                data: dict[str, Any] = orjson.loads(path.read_bytes())
            except FileNotFoundError:
                continue
            except (OSError, ValueError):
                return None
            return _Record(**data)
        return None


def _alive(record: _Record) -> bool:
    """Tell whether the job's own process still exists (and is not a reused pid)."""
    try:
        process = psutil.Process(record.pid)
        if record.create_time and abs(process.create_time() - record.create_time) > 0.01:
            return False
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _unwatched_end(record: _Record) -> _Record | None:
    """How a job ended that no process reaped (its supervisor died), from GNU time's record.

    `time` writes its record when the job ends: its last line is the peak memory, and a
    line before it says a non-zero exit status or the signal. None: no complete record.
    """
    try:
        text = Path(record.rusage_path).read_text(errors="replace") if record.rusage_path else ""
    except OSError:
        return None
    lines = text.split()
    if not lines or not lines[-1].isdigit():
        return None
    signalled, exited = TERMINATED.search(text), EXITED.search(text)
    code = -int(signalled.group(1)) if signalled else int(exited.group(1)) if exited else 0
    record.exit_code = code
    record.peak_memory_gb = int(lines[-1]) * 1024 / GIB
    if record.cancel_requested:
        record.state, record.reason = JobState.CANCELLED.value, "cancelled"
    elif code == 0:
        record.state = JobState.COMPLETED.value
    else:
        record.state, record.reason = JobState.FAILED.value, exit_reason(code)
    return record


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
