"""Starting the first attempts of a wave's runs together, ahead of their task runs.

For backends that submit in bulk (SLURM job arrays), a wave's runs reach the scheduler
in a few calls as soon as they are staged, instead of one by one as their task runs get
going. Each run moves and is staged in its own transactions, exactly as a single
attempt does it; the jobs of a backend go out in one `submit_many`. What started (or how
the attempt ended, or the error it met) is kept for the run's next attempt in this
process, which follows the job from there.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ccat_ops_db.models import RunStatus
from ccat_wm.execution.context import RunContext, load_run_context
from ccat_wm.execution.job_start import JobStarter, backend_for
from ccat_wm.execution.lifecycle import TransitionError
from ccat_wm.execution.outcome import RunOutcome, StagedJob, Started
from ccat_wm.execution.snapshot import record_snapshot
from ccat_wm.execution.stopping import stop_requested
from infra.backends import Backend, BackendError

S = RunStatus
AHEAD_THREADS = 4
"""Threads `start_many` stages and records runs on (each holds an ops DB connection)."""


@dataclass(frozen=True, slots=True)
class StartedAhead:
    """A first attempt `start_many` started, kept until the run's attempt follows it."""

    ctx: RunContext
    started: Started
    job: StagedJob | None = None
    """The job submitted (None: the attempt ended before one was)."""


@dataclass(frozen=True, slots=True)
class AheadError:
    """An error met while starting a run ahead: its attempt raises it (and fails the run)."""

    error: Exception


@dataclass(frozen=True, slots=True)
class _ReadyJob:
    """A run staged ahead, its job ready for its backend's `submit_many`."""

    ctx: RunContext
    backend: Backend
    job: StagedJob


class AheadStarts:
    """First attempts started ahead, kept per run until the run's attempt takes them."""

    def __init__(self, starter: JobStarter) -> None:
        """Stage and record with `starter`."""
        self.starter = starter
        self._kept: dict[int, StartedAhead | AheadError] = {}
        self._lock = threading.Lock()

    def take(self, run_id: int) -> StartedAhead | AheadError | None:
        """Return (and forget) what was started ahead for a run; None: nothing was."""
        with self._lock:
            return self._kept.pop(run_id, None)

    def start_many(self, run_ids: Sequence[int]) -> int:
        """Start the attempts of many PENDING runs; return how many jobs were submitted.

        Runs no longer PENDING are left to their attempt.
        """
        if stop_requested():
            return 0
        staged = self._in_threads(self._stage, list(run_ids))
        groups: dict[int, list[_ReadyJob]] = {}
        for ready in staged:
            if ready is not None:
                groups.setdefault(id(ready.backend), []).append(ready)
        submitted = 0
        for group in groups.values():
            if stop_requested():  # staged, not submitted: the adopting run submits them
                break
            backend = group[0].backend
            try:
                results = backend.submit_many([ready.job.spec for ready in group])
            except Exception as exc:  # every job of the group failed to start
                results = [BackendError(f"submission failed: {exc}")] * len(group)
            submitted += sum(1 for r in results if isinstance(r, str))
            self._in_threads(self._record, list(zip(group, results, strict=True)))
        return submitted

    def _in_threads(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """`fn` over `items` on a few threads (database round trips overlap), in order.

        Each call runs in a copy of the caller's context, so what it logs goes where the
        caller's logs go (the Prefect run logger of the task that called `start_many`).
        """
        with ThreadPoolExecutor(AHEAD_THREADS, thread_name_prefix="ccat-start") as pool:
            futures = [pool.submit(contextvars.copy_context().run, fn, i) for i in items]
            return [f.result() for f in futures]

    def _keep(self, run_id: int, kept: StartedAhead | AheadError) -> None:
        with self._lock:
            self._kept[run_id] = kept

    def _stage(self, run_id: int) -> _ReadyJob | None:
        """Move to STAGING_DATA, record the snapshot, stage; None: nothing to submit for it."""
        recorder = self.starter.recorder
        try:
            with recorder.engine.connect() as conn:
                with conn.begin():
                    try:
                        recorder.move(conn, run_id, S.STAGING_DATA, expected=S.PENDING)
                    except TransitionError:
                        return None  # cancelled, or in flight: its attempt decides
                    ctx = load_run_context(conn, run_id)
                    if not ctx.snapshot_recorded:
                        record_snapshot(conn, ctx)
                backend = backend_for(ctx, self.starter.settings)
                job = self.starter.stage_job(ctx, ctx.retry_count, conn, backend)
        except Exception as exc:  # raised by the run's attempt, which fails it
            self._keep(run_id, AheadError(exc))
            return None
        if isinstance(job, RunOutcome):
            self._keep(run_id, StartedAhead(ctx, job))
            return None
        return _ReadyJob(ctx, backend, job)

    def _record(self, entry: tuple[_ReadyJob, str | BackendError]) -> None:
        """Record one `start_many` submission (SUBMITTED, or FAILED: could not start)."""
        ready, result = entry
        ctx, job = ready.ctx, ready.job
        try:
            if isinstance(result, BackendError):
                started: Started = self.starter.not_started(
                    ctx, ctx.retry_count, None, job.request, result
                )
            else:
                started = self.starter.record_submitted(
                    ctx, ctx.retry_count, None, ready.backend, job=job, job_id=result,
                    announced=False,
                )  # fmt: skip
        except Exception as exc:  # raised by the run's attempt, which fails it
            self._keep(ctx.run_id, AheadError(exc))
            return
        self._keep(ctx.run_id, StartedAhead(ctx, started, job))
