"""What an attempt of a run gives back, and how the runner tells a run's story.

Named records pass between the runner's parts: `StagedJob` (ready to submit),
`Submitted` (the job went out), `RunOutcome` (how the run, or one attempt of it, ended).
What the runner says goes to the logger of `run_logging`: the pipeline flow's task
passes Prefect's run logger, so a run's story shows in its task run's Logs tab.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccat_ops_db.models import RunStatus
from ccat_wm.execution.context import RunContext
from ccat_wm.execution.failures import task_run_name
from ccat_wm.execution.sizing import describe
from infra.backends import Backend, JobSpec, Resources

LOG = logging.getLogger("ccat_wm.execution.runner")
RunLogger = logging.Logger | logging.LoggerAdapter[Any]
_RUN_LOG: ContextVar[RunLogger] = ContextVar("ccat_wm_run_log", default=LOG)


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How one run ended in this execution (or one attempt of it)."""

    run_id: int
    status: RunStatus
    retry_count: int
    message: str = ""
    will_retry: bool = False
    """The attempt failed and the run is PENDING again for its next attempt."""
    log_path: Path | None = None
    """The failed attempt's log file (stdout and stderr of its job)."""
    attempts: int = 1
    """Attempts the run may make in all (`max_retries + 1`)."""
    job_id: str | None = None
    """The backend job of the (last) attempt, when one was submitted."""
    final: bool = False
    """The failure cannot be mended by retrying (`UNRETRYABLE_FAILURES`): no retry follows."""
    qa_rejection: str | None = None
    """Why the step's quality gate rejected the COMPLETED run (its products then feed no
    downstream step): `rejected: tsys_k = 2000 (needs tsys_k < 400)`."""


@dataclass(frozen=True, slots=True)
class StagedJob:
    """An attempt's job, ready to submit: its spec, the inputs staged, what it asks for."""

    spec: JobSpec
    staged: int
    request: Resources
    copies: list[dict[str, Any]] = field(default_factory=list)
    """Packages staged into the location's cache, recorded with the next commit."""


@dataclass(slots=True)
class Unrecorded:
    """What an attempt did that the ops DB does not hold yet: written with the run's next commit.

    A job that starts at once (a local process) is not recorded SUBMITTED and RUNNING in
    a commit of its own: the moves wait here, with the staged packages' copies, and go
    out with the commit that records its end, or once the job has run for
    `RECORD_RUNNING_AFTER_S` (so a long job shows RUNNING). Likewise its end
    (COLLECTING_RESULTS) goes out with its products unless they take long to collect.
    Every status is still recorded, each by its own UPDATE (the status history and
    the attempt record are kept by triggers), in fewer commits.
    """

    recorded: RunStatus
    """The status the ops DB holds."""
    moves: list[tuple[RunStatus, dict[str, Any]]] = field(default_factory=list)
    """Moves made since, in order, each with the columns it sets."""
    copies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> RunStatus:
        """The run's status once the moves are written."""
        return self.moves[-1][0] if self.moves else self.recorded

    def add(self, status: RunStatus, **values: Any) -> None:
        """Note a move to `status` setting `values`."""
        self.moves.append((status, values))


@dataclass(frozen=True, slots=True)
class Submitted:
    """An attempt whose job the backend accepted."""

    backend: Backend
    job_id: str
    running: bool
    """RUNNING is recorded already, or in `unrecorded` (a backend whose jobs start at once)."""
    unrecorded: Unrecorded | None = None
    """SUBMITTED and RUNNING (and the staging's copies) not written yet."""


Started = RunOutcome | Submitted
"""What starting an attempt gave: its job, or how the run ended before one ran."""


@contextmanager
def run_logging(logger: RunLogger) -> Iterator[None]:
    """Send what the runner says about runs executed in this context to `logger`.

    The pipeline flow's task passes Prefect's run logger, so that a run's story shows in
    its task run's Logs tab; elsewhere the runner logs to its module's logger.
    """
    token = _RUN_LOG.set(logger)
    try:
        yield
    finally:
        _RUN_LOG.reset(token)


def run_log() -> RunLogger:
    """Return the logger of the current `run_logging` context."""
    return _RUN_LOG.get()


def who(ctx: RunContext) -> str:
    """Name a run the way people find it: `run 12 (calibrate[executed_obs_unit=scan-1])`."""
    return f"run {ctx.run_id} ({task_run_name(ctx.step, ctx.sub_group_key)})"


def announce(ctx: RunContext, attempt: int, job: StagedJob, job_id: str, how: str = "") -> None:
    """Log which queued job runs the attempt, what it asks for and where its inputs are."""
    run_log().info(
        "run %s (%s[%s]) attempt %s of %s: %s input(s) staged in %s; submitted%s as "
        "job %s (%s) asking for %s", ctx.run_id, ctx.step, ctx.sub_group_key, attempt + 1,
        ctx.max_retries + 1, job.staged, ctx.layout.root, how, job_id,
        ctx.location.backend.value, describe(job.request),
    )  # fmt: skip
