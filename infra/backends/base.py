"""The backend interface every execution backend implements, and the records it exchanges.

Records crossing this boundary are frozen dataclasses with units in their field names;
the interface is an abstract base class, so a backend missing a method fails when it is
instantiated, not when the method is first called.
"""

from __future__ import annotations

import enum
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infra.runtimes import Mount


class BackendError(Exception):
    """A backend could not do what was asked (submit, cancel, read logs)."""


class JobState(enum.StrEnum):
    """State of a backend job as the workflow manager needs it."""

    PENDING = "PENDING"
    """Accepted, not started (queued)."""
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    """Finished with exit code 0."""
    FAILED = "FAILED"
    """Finished otherwise (non-zero exit, signal, out of memory, time limit, node failure)."""
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    """The backend does not (or not yet) know the job."""

    @property
    def finished(self) -> bool:
        """True for states a job never leaves."""
        return self in {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}


@dataclass(frozen=True, slots=True)
class Resources:
    """Resources a job asks for; informational for the local backend."""

    cpu: int = 1
    """CPU cores."""
    memory_gb: float = 1.0
    """Memory in GiB."""
    time_hours: float = 1.0
    """Wall-time limit in hours."""
    gpu: int = 0
    """Number of GPUs."""


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything a backend needs to start one run's job."""

    name: str
    """Job name; carries the run id so an operator can find the run from the job."""
    argv: tuple[str, ...]
    """The command as an argument list (never a shell string)."""
    env: Mapping[str, str]
    """The complete environment of the job."""
    cwd: Path
    """Working directory."""
    log_path: Path
    """File that receives the job's stdout and stderr."""
    resources: Resources = field(default_factory=Resources)
    image: str | None = None
    """Image the backend runs itself (Kubernetes), pinned by digest; None: `argv` is complete
    (it already wraps the container runtime, or runs on the host)."""
    mounts: tuple[Mount, ...] = ()
    """The contract's directories as the image sees them (with `image` only)."""
    shown_env: tuple[str, ...] = ()
    """Names in `env` that make up what the software's environment is (the step's and the
    contract's variables, as the runtime passes them), shown in the stored command."""
    priority: int = 0
    """The pipeline's priority (higher first); backends map it to the scheduler's own."""


@dataclass(frozen=True, slots=True)
class JobInfo:
    """What a backend knows about a job."""

    state: JobState
    exit_code: int | None = None
    """Exit code once finished; negative: killed by that signal."""
    wall_time_s: float | None = None
    """Elapsed wall-clock seconds (so far, while running)."""
    cpu_hours: float | None = None
    """User plus system CPU time of the whole process tree, in hours."""
    peak_memory_gb: float | None = None
    """Peak resident memory of the whole process tree, in GiB."""
    reason: str | None = None
    """Why it failed, in the backend's words (e.g. OUT_OF_MEMORY, exit code 3); for a
    queued job, why the scheduler holds it."""
    stuck: bool = False
    """A queued job is held for a reason that does not clear by itself (a partition limit,
    down or drained nodes, an invalid account or QOS): someone must change the cluster."""


@dataclass(frozen=True, slots=True)
class ResourceLimits:
    """The most one job may ask for at a location (None: no known limit)."""

    cpu: int | None = None
    memory_gb: float | None = None
    time_hours: float | None = None
    gpu: int | None = None
    source: str = ""
    """Where the limits come from, for messages (e.g. `SLURM partition debug`)."""


class Backend(ABC):
    """Submit, watch, cancel and read the logs of jobs at one processing location."""

    name: str = ""
    """Registry key: the `backend` value of a processing location."""
    starts_at_once: bool = False
    """A submitted job is already running (a local process), not queued: the runner then
    records RUNNING in the same commit as SUBMITTED."""
    submits_in_bulk: bool = False
    """`submit_many` hands many jobs to the scheduler in a few calls (SLURM job arrays), so a
    wave's first attempts are submitted together ahead of their task runs."""

    @abstractmethod
    def submit(self, spec: JobSpec) -> str:
        """Start the job; return the backend's job id."""

    def submit_many(self, specs: Sequence[JobSpec]) -> list[str | BackendError]:
        """Submit many jobs at once; return, in order, each one's job id or why it was not.

        One job's failure does not stop the others. Backends without a bulk call submit
        one by one.
        """
        results: list[str | BackendError] = []
        for spec in specs:
            try:
                results.append(self.submit(spec))
            except BackendError as exc:
                results.append(exc)
            except (OSError, ValueError) as exc:
                results.append(BackendError(str(exc)))
        return results

    @abstractmethod
    def status(self, job_id: str) -> JobInfo:
        """Return what the backend knows about one job."""

    def status_many(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """Return the state of many jobs; backends override this with one batched query."""
        return {job_id: self.status(job_id) for job_id in job_ids}

    @abstractmethod
    def cancel(self, job_id: str) -> None:
        """Stop the job; a job that already finished is left alone."""

    @abstractmethod
    def logs(self, job_id: str) -> str:
        """Return the job's captured output so far."""

    def limits(self) -> ResourceLimits:
        """Return what the scheduler can ever give one job; backends that cannot tell: none."""
        return ResourceLimits()

    def find(self, name: str) -> str | None:
        """Return the id of a job submitted under `name` by any process, or None.

        Used after a crash, for a run whose job may have been submitted just before its
        job id could be recorded. Backends that cannot tell return None.
        """
        del name
        return None

    def forget(self, job_id: str) -> None:
        """Drop what this process keeps about a finished job whose outcome has been read."""
        del job_id  # backends that keep nothing per job have nothing to drop

    def wait(self, job_id: str, timeout_s: float) -> None:
        """Return when the job may have changed state, at the latest after `timeout_s`.

        Backends that poll a scheduler just sleep; one that learns at once when a job
        ends (local) returns then, so a short job is not held up by the polling interval.
        """
        del job_id
        time.sleep(timeout_s)


def by_threshold(table: Mapping[int, str], priority: int) -> str | None:
    """Return the value of the highest threshold at or below `priority` (None below all)."""
    eligible = [threshold for threshold in table if int(threshold) <= priority]
    return table[max(eligible)] if eligible else None


SHELL_SIGNAL_BASE = 128
"""Shells and container runtimes exit with 128 + N when their command died of signal N."""


def exit_reason(code: int) -> str:
    """Say how a job ended in words: `killed by SIGKILL`, or `exit code 3`.

    A negative code is the signal itself; 129-192 is how shells, wrappers and container
    runtimes report a command killed by signal `code - 128`, so that is named too.
    """
    if code < 0:
        return f"killed by {_signal_name(-code)}"
    if SHELL_SIGNAL_BASE < code <= SHELL_SIGNAL_BASE + 64 and _is_signal(code - SHELL_SIGNAL_BASE):
        return f"killed by {_signal_name(code - SHELL_SIGNAL_BASE)} (exit code {code})"
    return f"exit code {code}"


def _is_signal(number: int) -> bool:
    try:
        signal.Signals(number)
    except ValueError:
        return False
    return True


def _signal_name(number: int) -> str:
    return signal.Signals(number).name if _is_signal(number) else f"signal {number}"
