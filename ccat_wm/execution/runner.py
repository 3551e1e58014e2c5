"""One run from PENDING to a final status (docs/concepts.md section 2), written to the ops DB.

Each step commits its own short transaction: PENDING -> STAGING_DATA (stage inputs,
write the manifest, build the command) -> SUBMITTED (job id and command stored with the
status) -> RUNNING -> COLLECTING_RESULTS (exit code and metrics) -> COMPLETED (products
and lineage in the same transaction) or FAILED (logs kept as LOG products), then
FAILED -> PENDING while `retry_count < max_retries`. Every move goes through
`transition()`, so a person's cancel (CANCELLED) wins over the next move and the job is
stopped. The ops DB is read for a cancel at most every `CANCEL_CHECK_S` while polling;
a cancel that lands after the job finished still wins, since the next move fails.

A run checks out one ops DB connection for its start (claim, context, staging record,
SUBMITTED, and RUNNING in the same commit for a backend whose jobs start at once, as
local processes do) and one for its end (RUNNING, COLLECTING_RESULTS, products, final
status), and none while the job runs: each checkout pings the server, and for short jobs the
database round trips are most of what a run costs the flow process.

`start_many` starts the first attempts of many runs together (same moves, same
transactions per run) and hands their jobs to the backend in one `submit_many` (SLURM:
job arrays); each run's `attempt` then follows its job from there.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from ccat_ops_db.models import (
    UNRETRYABLE_FAILURES,
    DataProductType,
    FailureKind,
    RunStatus,
    Runtime,
)
from ccat_wm.db import Db
from ccat_wm.errors import CcatWmError
from ccat_wm.execution.backends import location_backend
from ccat_wm.execution.collect import (
    ContractViolationError,
    OutputFile,
    checksum_outputs,
    preserve_failed_logs,
    register_products,
    reset_output,
    scan_outputs,
    verify_unchanged,
)
from ccat_wm.execution.context import RunContext, load_run_context
from ccat_wm.execution.failures import task_run_name
from ccat_wm.execution.launch import (
    build_job,
    build_manifest,
    display_command,
    image_ref,
    job_name,
    sif_cache_dir,
    write_manifest,
)
from ccat_wm.execution.layout import RunLayout
from ccat_wm.execution.lifecycle import TransitionError, current_status, transition
from ccat_wm.execution.ownership import IN_FLIGHT
from ccat_wm.execution.runtree import (
    UnsafeEntryError,
    create_log,
    make_read_only,
    shown,
    unexpected_kind,
)
from ccat_wm.execution.sizing import (
    DEFAULT_PENDING_GRACE_S,
    ImpossibleRequestError,
    attempt_request,
    check_request,
    classify_failure,
    combined_limits,
    configured_resources,
    describe,
    pending_grace_s,
    resources_json,
)
from ccat_wm.execution.snapshot import record_snapshot
from ccat_wm.execution.staging import stage_inputs
from ccat_wm.execution.stopping import StopRequestedError, stop_requested
from ccat_wm.settings import Settings
from infra.backends import (
    Backend,
    BackendError,
    JobInfo,
    JobSpec,
    JobState,
    ResourceLimits,
    Resources,
)
from infra.sif_cache import ImagePullError, ensure_sif

S = RunStatus
LOG = logging.getLogger(__name__)
RunLogger = logging.Logger | logging.LoggerAdapter[Any]
_RUN_LOG: ContextVar[RunLogger] = ContextVar("ccat_wm_run_log", default=LOG)
AHEAD_THREADS = 4
"""Threads `start_many` stages and records runs on (each holds an ops DB connection)."""
CANCEL_CHECK_S = 0.25
"""How often a watched run looks in the ops DB for a person's cancel."""
UNKNOWN_GRACE_S = 60.0
"""A job the backend does not know for this long is failed (it may lag behind at first)."""


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


@dataclass(frozen=True, slots=True)
class _StagedJob:
    """An attempt's job, ready to submit: its spec, the inputs staged, what it asks for."""

    spec: JobSpec
    staged: int
    request: Resources


Started = RunOutcome | tuple[Backend, str, bool]
"""What starting an attempt gave: how the run ended, or its backend, job id and whether
RUNNING is recorded."""


@dataclass(frozen=True, slots=True)
class _StartedAhead:
    """A first attempt `start_many` started, kept until the run's `attempt` follows it."""

    ctx: RunContext
    started: Started
    job: _StagedJob | None = None


@contextmanager
def run_logging(logger: RunLogger) -> Iterator[None]:
    """Send what the runner says about runs executed in this context to `logger`.

    The pipeline flow's task passes Prefect's run logger, so that a run's story shows in
    its task run's Logs tab; elsewhere the runner logs to this module's logger.
    """
    token = _RUN_LOG.set(logger)
    try:
        yield
    finally:
        _RUN_LOG.reset(token)


def _log() -> RunLogger:
    return _RUN_LOG.get()


def backend_for(ctx: RunContext, settings: Settings | None = None) -> Backend:
    """Return the backend of the run's processing location (job state under its path)."""
    location = ctx.location
    return location_backend(location.backend, location.path, location.settings, settings)


class RunExecutor:
    """Executes runs against one ops DB with the given settings."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        poll_max_s: float = 2.0,
    ) -> None:
        """`poll_max_s` caps the polling interval (it starts at a few milliseconds)."""
        self.engine = engine
        self.settings = settings
        self.poll_max_s = poll_max_s
        self._ahead: dict[int, _StartedAhead | BaseException] = {}
        """First attempts `start_many` started (or the error it met), until `attempt` takes them."""
        self._ahead_lock = threading.Lock()

    def session(self) -> Session:
        """Return a new session on the ops DB."""
        return Session(self.engine)

    @contextmanager
    def _transaction(self, conn: Connection | None = None) -> Iterator[Connection]:
        """Open a transaction on `conn` (the caller's checkout), or on a connection of its own."""
        if conn is None:
            with self.engine.begin() as own:
                yield own
        else:
            with conn.begin():
                yield conn

    def execute(self, run_id: int) -> RunOutcome:
        """Run `run_id` through its attempts until COMPLETED, CANCELLED or out of retries."""
        while True:
            outcome = self.run_attempt(run_id)
            if not outcome.will_retry:
                return outcome

    def run_attempt(self, run_id: int) -> RunOutcome:
        """One attempt of `run_id`; a failed one with retries left is PENDING again after it.

        The pipeline flow calls this once per Prefect task run attempt, so that Prefect
        counts and shows the attempts; `will_retry` says whether another one is due.
        """
        try:
            outcome = self.attempt(run_id)
        except StopRequestedError:  # left as it is, for the next flow run to adopt
            raise
        except Exception as exc:
            self._fail_after_error(run_id, exc)
            raise
        if outcome.status is not S.FAILED:
            return outcome
        with self._transaction() as conn:
            ctx = load_run_context(conn, run_id)
            outcome = replace(outcome, job_id=ctx.hpc_job_id)
            if ctx.retry_count >= ctx.max_retries or outcome.final:
                return outcome
            try:
                self._move(conn, run_id, S.PENDING, expected=S.FAILED)
            except TransitionError:
                return outcome
        _log().info("%s: retrying (attempt %s of %s)", _who(ctx), ctx.retry_count + 2,
                    ctx.max_retries + 1)  # fmt: skip
        return replace(outcome, status=S.PENDING, retry_count=ctx.retry_count + 1, will_retry=True)

    def attempt(self, run_id: int) -> RunOutcome:
        """One attempt of a PENDING run, or the rest of one that a dead process left in flight.

        An attempt that `start_many` started in this process is followed from its job.
        """
        with self._ahead_lock:
            ahead = self._ahead.pop(run_id, None)
        if ahead is None and stop_requested():
            raise StopRequestedError("not started: the command is stopping")
        if isinstance(ahead, BaseException):
            raise ahead
        if ahead is not None:
            if isinstance(ahead.started, tuple) and ahead.job is not None:
                _announce(ahead.ctx, ahead.ctx.retry_count, ahead.job, ahead.started[1],
                          " with its wave")  # fmt: skip
            return self._follow_submitted(ahead.ctx, ahead.ctx.retry_count, ahead.started)
        with self.engine.connect() as conn:
            with conn.begin():
                try:
                    self._move(conn, run_id, S.STAGING_DATA, expected=S.PENDING)
                except TransitionError as exc:
                    if exc.current not in IN_FLIGHT:
                        return RunOutcome(run_id, exc.current or S.CANCELLED, 0, str(exc))
                    resume = True
                else:
                    resume = False
                ctx = load_run_context(conn, run_id)
                if not resume and not ctx.snapshot_recorded:
                    record_snapshot(conn, ctx)  # what this run uses, for good
            if not resume:
                started = self._submit(ctx, ctx.retry_count, conn)
        if resume:
            return self._resume(ctx)
        return self._follow_submitted(ctx, ctx.retry_count, started)

    def start_many(self, run_ids: Sequence[int]) -> int:
        """Start the attempts of many PENDING runs together, ahead of their `attempt` calls.

        For backends that submit in bulk (SLURM job arrays), a wave's runs then reach the
        scheduler in a few calls as soon as they are staged, instead of one by one as their
        task runs get going. Each run moves and is staged in its own transactions, exactly
        as `attempt` does it; the jobs of a backend go out in one `submit_many`. What started
        (or how the attempt ended, or the error it met) is kept for the run's next `attempt`
        in this process, which follows the job from there. Runs no longer PENDING are left
        to `attempt`. Returns how many jobs were submitted.
        """
        if stop_requested():
            return 0
        staged = self._in_threads(self._stage_ahead, list(run_ids))
        groups: dict[int, list[tuple[RunContext, Backend, _StagedJob]]] = {}
        for entry in staged:
            if entry is not None:
                groups.setdefault(id(entry[1]), []).append(entry)
        submitted = 0
        for group in groups.values():
            if stop_requested():  # staged, not submitted: the adopting run submits them
                break
            backend = group[0][1]
            try:
                results = backend.submit_many([job.spec for _, _, job in group])
            except Exception as exc:  # every job of the group failed to start
                results = [BackendError(f"submission failed: {exc}")] * len(group)
            submitted += sum(1 for r in results if isinstance(r, str))
            self._in_threads(self._record_ahead, list(zip(group, results, strict=True)))
        return submitted

    def _in_threads(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """`fn` over `items` on a few threads (database round trips overlap), in order.

        Each call runs in a copy of the caller's context, so what it logs goes where the
        caller's logs go (the Prefect run logger of the task that called `start_many`).
        """
        with ThreadPoolExecutor(AHEAD_THREADS, thread_name_prefix="ccat-start") as pool:
            futures = [pool.submit(contextvars.copy_context().run, fn, i) for i in items]
            return [f.result() for f in futures]

    def _keep_ahead(self, run_id: int, kept: _StartedAhead | BaseException) -> None:
        with self._ahead_lock:
            self._ahead[run_id] = kept

    def _stage_ahead(self, run_id: int) -> tuple[RunContext, Backend, _StagedJob] | None:
        """Move to STAGING_DATA, record the snapshot, stage; None: nothing to submit for it."""
        try:
            with self.engine.connect() as conn:
                with conn.begin():
                    try:
                        self._move(conn, run_id, S.STAGING_DATA, expected=S.PENDING)
                    except TransitionError:
                        return None  # cancelled, or in flight: its `attempt` decides
                    ctx = load_run_context(conn, run_id)
                    if not ctx.snapshot_recorded:
                        record_snapshot(conn, ctx)
                backend = backend_for(ctx, self.settings)
                job = self._stage_job(ctx, ctx.retry_count, conn, backend)
        except Exception as exc:  # raised by the run's `attempt`, which fails it
            self._keep_ahead(run_id, exc)
            return None
        if isinstance(job, RunOutcome):
            self._keep_ahead(run_id, _StartedAhead(ctx, job))
            return None
        return ctx, backend, job

    def _record_ahead(
        self, entry: tuple[tuple[RunContext, Backend, _StagedJob], str | BackendError]
    ) -> None:
        """Record one `start_many` submission (SUBMITTED, or FAILED: could not start)."""
        (ctx, backend, job), result = entry
        try:
            if isinstance(result, BackendError):
                started: Started = self._not_started(
                    ctx, ctx.retry_count, None, job.request, result
                )
            else:
                started = self._record_submitted(
                    ctx, ctx.retry_count, None, backend, job=job, job_id=result, announce=False
                )
        except Exception as exc:  # raised by the run's `attempt`, which fails it
            self._keep_ahead(ctx.run_id, exc)
            return
        self._keep_ahead(ctx.run_id, _StartedAhead(ctx, started, job))

    def _start(self, ctx: RunContext, attempt: int) -> RunOutcome:
        """Stage, submit and record the job of a run in STAGING_DATA, then follow it."""
        with self.engine.connect() as conn:
            started = self._submit(ctx, attempt, conn)
        return self._follow_submitted(ctx, attempt, started)

    def _follow_submitted(self, ctx: RunContext, attempt: int, started: Started) -> RunOutcome:
        """Follow what `_submit` started (after its connection went back to the pool)."""
        if isinstance(started, RunOutcome):
            return started
        backend, job_id, running = started
        return self._follow(ctx, attempt, backend, job_id, running=running)

    def _submit(self, ctx: RunContext, attempt: int, conn: Connection) -> Started:
        """Stage, submit, record SUBMITTED (and RUNNING if it runs already).

        Returns the backend, the job id and whether RUNNING is recorded, or how the run ended.
        """
        backend = backend_for(ctx, self.settings)
        job = self._stage_job(ctx, attempt, conn, backend)
        if isinstance(job, RunOutcome):
            return job
        if stop_requested():  # staged, never submitted: the adopting run submits it
            raise StopRequestedError("staged, not submitted: the command is stopping")
        try:
            job_id = backend.submit(job.spec)
        except (CcatWmError, BackendError, OSError, ValueError) as exc:
            return self._not_started(ctx, attempt, conn, job.request, exc)
        return self._record_submitted(ctx, attempt, conn, backend, job=job, job_id=job_id)

    def _stage_job(
        self, ctx: RunContext, attempt: int, conn: Connection, backend: Backend
    ) -> RunOutcome | _StagedJob:
        """Size the attempt, stage its inputs, write its manifest and build its job."""
        try:
            request = self._request(ctx, backend)
        except ImpossibleRequestError as exc:
            return self._fail(
                ctx, attempt, str(exc), expected=S.STAGING_DATA, conn=conn,
                kind=FailureKind.OVER_LIMIT, requested=exc.request,
            )  # fmt: skip
        try:
            spec, staged = self._prepare(ctx, attempt, conn, request)
        except UnsafeEntryError as exc:  # an earlier attempt's job planted it: no retry mends it
            return self._fail(
                ctx, attempt, f"could not start: {exc}", expected=S.STAGING_DATA, conn=conn,
                kind=FailureKind.CONTRACT, requested=request,
            )  # fmt: skip
        except (CcatWmError, BackendError, OSError, ValueError) as exc:
            return self._not_started(ctx, attempt, conn, request, exc)
        return _StagedJob(spec, staged, request)

    def _not_started(
        self, ctx: RunContext, attempt: int, conn: Connection | None, request: Resources,
        exc: Exception,
    ) -> RunOutcome:  # fmt: skip
        """FAILED (NOT_STARTED): the attempt's job could not be staged or submitted."""
        return self._fail(
            ctx, attempt, f"could not start: {exc}", expected=S.STAGING_DATA, conn=conn,
            kind=FailureKind.NOT_STARTED, requested=request,
        )  # fmt: skip

    def _record_submitted(
        self,
        ctx: RunContext,
        attempt: int,
        conn: Connection | None,
        backend: Backend,
        *,
        job: _StagedJob,
        job_id: str,
        announce: bool = True,
    ) -> Started:
        """Record SUBMITTED with the job id (and RUNNING for a job that starts at once).

        `announce`: log the submission of a queued job now (`start_many` leaves it to the
        run's own task run, whose Logs tab tells the run's story).
        """
        run_id, running = ctx.run_id, backend.starts_at_once
        if announce and not running:  # a queued job: say which while it waits and runs
            _announce(ctx, attempt, job, job_id)
        try:
            with self._transaction(conn) as db:
                self._move(
                    db, run_id, S.SUBMITTED, expected=S.STAGING_DATA, hpc_job_id=job_id,
                    requested_resources=resources_json(job.request),
                    **_first_command(ctx, job.spec),
                )  # fmt: skip
                if running:
                    self._move(db, run_id, S.RUNNING, expected=S.SUBMITTED)
        except TransitionError as exc:
            backend.cancel(job_id)
            return RunOutcome(run_id, exc.current or S.CANCELLED, attempt, str(exc))
        return backend, job_id, running

    def _follow(
        self, ctx: RunContext, attempt: int, backend: Backend, job_id: str, *, running: bool
    ) -> RunOutcome:
        """Watch the job to its end, record it (COLLECTING_RESULTS) and collect its results."""
        grace = pending_grace_s(ctx.location.settings)
        info, marked_running = self._watch(
            ctx.run_id, backend, job_id, running=running, grace_s=grace
        )
        if info is None:
            return RunOutcome(ctx.run_id, S.CANCELLED, attempt, "cancelled")
        with self.engine.connect() as conn:
            try:
                with self._transaction(conn):  # one commit if never seen running
                    if not marked_running:
                        self._move(conn, ctx.run_id, S.RUNNING, expected=S.SUBMITTED)
                    self._move(
                        conn, ctx.run_id, S.COLLECTING_RESULTS, expected=S.RUNNING,
                        exit_code=info.exit_code, processing_time_s=info.wall_time_s,
                        cpu_hours=info.cpu_hours, peak_memory_gb=info.peak_memory_gb,
                    )  # fmt: skip
            except TransitionError as exc:
                if exc.current is S.CANCELLED:
                    backend.cancel(job_id)
                    return RunOutcome(ctx.run_id, S.CANCELLED, attempt, "cancelled")
                raise
            backend.forget(job_id)
            return self._collect(ctx, attempt, info, conn, job_id=job_id)

    def _resume(self, ctx: RunContext) -> RunOutcome:
        """Drive on a run that a process which died left in flight (see `ownership`)."""
        attempt, backend = ctx.retry_count, backend_for(ctx, self.settings)
        _log().warning("%s was left %s by a process that died; resuming it", _who(ctx), ctx.status)
        if ctx.status is S.STAGING_DATA:
            job_id = backend.find(job_name(ctx, attempt))
            if job_id is None:  # never submitted: stage and submit (staging is idempotent)
                return self._start(ctx, attempt)
            try:
                request = self._request(ctx, backend)
            except ImpossibleRequestError:  # the limits changed since; the job runs anyway
                request = configured_resources(ctx.resources)  # recorded as the best known
            spec = build_job(ctx, self.settings, attempt, request)
            try:
                self._move_now(
                    ctx.run_id, S.SUBMITTED, expected=S.STAGING_DATA, hpc_job_id=job_id,
                    requested_resources=resources_json(request), **_first_command(ctx, spec),
                )  # fmt: skip
            except TransitionError as exc:
                backend.cancel(job_id)
                return RunOutcome(ctx.run_id, exc.current or S.CANCELLED, attempt, str(exc))
            return self._follow(ctx, attempt, backend, job_id, running=False)
        if ctx.status in (S.SUBMITTED, S.RUNNING) and ctx.hpc_job_id:
            running = ctx.status is S.RUNNING
            return self._follow(ctx, attempt, backend, ctx.hpc_job_id, running=running)
        # COLLECTING_RESULTS: the job's end was recorded; collect what it left.
        state = JobState.COMPLETED if ctx.exit_code == 0 else JobState.FAILED
        return self._collect(ctx, attempt, JobInfo(state, exit_code=ctx.exit_code))

    def _fail_after_error(self, run_id: int, exc: Exception) -> None:
        """Do not leave a run in flight after an unexpected error: stop its job, fail it."""
        reason = f"internal error: {type(exc).__name__}: {exc}"[:2000]
        try:
            with self._transaction() as conn:
                ctx = load_run_context(conn, run_id)
                if ctx.status in (S.STAGING_DATA, S.SUBMITTED, S.RUNNING, S.COLLECTING_RESULTS):
                    transition(
                        conn, run_id, S.FAILED, failure_reason=reason,
                        failure_kind=FailureKind.INTERNAL,
                    )  # fmt: skip
            if ctx.hpc_job_id:
                backend_for(ctx, self.settings).cancel(ctx.hpc_job_id)
        except Exception:  # the original error is what matters; this is best effort
            LOG.exception("could not mark run %s FAILED after %s", run_id, reason)

    def _request(self, ctx: RunContext, backend: Backend) -> Resources:
        """Return what this attempt asks for, refused if the location can never give it."""
        try:
            scheduler = backend.limits()
        except BackendError as exc:  # not knowing the partition's limits must not stop runs
            _log().warning("%s: could not read the scheduler's limits: %s", _who(ctx), exc)
            scheduler = ResourceLimits()
        limits = combined_limits(ctx.location.settings, scheduler)
        request = attempt_request(ctx, limits)
        check_request(request, limits, ctx.location.name)
        return request

    def _prepare(
        self, ctx: RunContext, attempt: int, conn: Connection, request: Resources
    ) -> tuple[JobSpec, int]:
        """Stage the inputs, write the manifest, build the job; return it with the inputs' count."""
        layout = ctx.layout
        reset_output(layout)
        create_log(layout.root, layout.attempt_log(attempt))
        staged = stage_inputs(lambda: self._transaction(conn), ctx)
        write_manifest(layout, build_manifest(ctx, staged))
        spec = build_job(ctx, self.settings, attempt, request)
        if ctx.location.runtime is Runtime.APPTAINER:
            self._ensure_image(ctx)
        return spec, len(staged)

    def _ensure_image(self, ctx: RunContext) -> None:
        """Pull the image into the SIF cache once per digest, verified before use."""
        try:
            ensure_sif(image_ref(ctx), sif_cache_dir(ctx, self.settings))
        except ImagePullError as exc:
            raise BackendError(str(exc)) from None

    def _watch(
        self,
        run_id: int,
        backend: Backend,
        job_id: str,
        *,
        running: bool = False,
        grace_s: float = DEFAULT_PENDING_GRACE_S,
    ) -> tuple[JobInfo | None, bool]:
        """Poll until the job ends; return its end (None: cancelled), and if RUNNING is recorded.

        A job the backend reports stuck (held for a reason that cannot clear by itself)
        for longer than `grace_s` is cancelled and ends FAILED with reason STUCK_PENDING.
        """
        interval, marked_running, unknown_since, stuck_since = 0.002, running, None, None
        next_check = time.monotonic() + CANCEL_CHECK_S
        try:
            while True:
                if stop_requested():
                    raise StopRequestedError(
                        f"left in flight with job {job_id} running, "
                        "for the next run of the pipeline to adopt",
                        in_flight=True,
                    )
                info = backend.status(job_id)
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + CANCEL_CHECK_S
                    with self.engine.connect() as conn:
                        if current_status(conn, run_id) is S.CANCELLED:
                            backend.cancel(job_id)
                            return None, marked_running
                if info.state is JobState.RUNNING and not marked_running:
                    self._move_now(run_id, S.RUNNING, expected=S.SUBMITTED)
                    marked_running = True
                if info.state is JobState.UNKNOWN:
                    unknown_since = unknown_since or time.monotonic()
                    if time.monotonic() - unknown_since > UNKNOWN_GRACE_S:
                        info = JobInfo(
                            JobState.FAILED, reason=f"backend lost the job: {info.reason}"
                        )
                stuck_since = (stuck_since or time.monotonic()) if info.stuck else None
                if stuck_since is not None and time.monotonic() - stuck_since > grace_s:
                    backend.cancel(job_id)
                    return JobInfo(JobState.FAILED, reason=_stuck_reason(job_id, info, grace_s)), (
                        marked_running
                    )
                if info.state.finished:
                    return info, marked_running
                backend.wait(job_id, interval)
                interval = min(interval * 2, self.poll_max_s)
        except TransitionError as exc:
            if exc.current is S.CANCELLED:
                backend.cancel(job_id)
                return None, marked_running
            raise

    def _collect(
        self,
        ctx: RunContext,
        attempt: int,
        info: JobInfo,
        conn: Connection | None = None,
        *,
        job_id: str | None = None,
    ) -> RunOutcome:
        """Register the finished job's products (COMPLETED) or keep its logs (FAILED)."""
        job_id = job_id or ctx.hpc_job_id  # resumed: the job recorded before the process died
        layout = ctx.layout
        captured, log_problem = _captured_log(layout, attempt)
        if info.state is not JobState.COMPLETED:
            reason = info.reason or f"exit code {info.exit_code}"
            if log_problem:
                reason = f"{reason}; {log_problem}"
            return self._fail(
                ctx, attempt, reason, captured=captured, conn=conn, job_id=job_id,
                kind=classify_failure(reason, info.exit_code),
            )  # fmt: skip
        try:
            if log_problem:
                raise ContractViolationError([log_problem])
            records = checksum_outputs([*scan_outputs(layout), *captured])
            with self._transaction(conn) as db:
                register_products(db, ctx.run_id, records)
                verify_unchanged(records)  # nothing may have changed since it was hashed
                self._move(db, ctx.run_id, S.COMPLETED, expected=S.COLLECTING_RESULTS)
        except ContractViolationError as exc:
            return self._fail(
                ctx, attempt, str(exc), captured=captured, conn=conn, job_id=job_id,
                kind=FailureKind.CONTRACT,
            )  # fmt: skip
        except TransitionError as exc:  # cancelled while it was collected
            return RunOutcome(ctx.run_id, exc.current or S.CANCELLED, attempt, str(exc))
        for record in records:
            _make_read_only(ctx.run_id, record.root or layout.root, record.path)
        # One record for a successful attempt of a job that started at once: each record
        # goes to the Prefect server and cost about 2 ms per run here (bench/README.md).
        _log().info(
            "run %s (%s[%s]) attempt %s of %s: %s input(s) staged, job %s (%s) ran %.1f s; "
            "COMPLETED with %s product(s) under %s", ctx.run_id, ctx.step, ctx.sub_group_key,
            attempt + 1, ctx.max_retries + 1, len(ctx.raw_inputs) + len(ctx.product_inputs),
            job_id, ctx.location.backend.value, info.wall_time_s or 0.0,
            len(records), layout.root,
        )  # fmt: skip
        return RunOutcome(ctx.run_id, S.COMPLETED, attempt)

    def _fail(
        self,
        ctx: RunContext,
        attempt: int,
        reason: str,
        *,
        expected: RunStatus = S.COLLECTING_RESULTS,
        captured: list[OutputFile] | None = None,
        conn: Connection | None = None,
        job_id: str | None = None,
        kind: FailureKind,
        requested: Resources | None = None,
    ) -> RunOutcome:
        """Keep the attempt's logs as LOG products and mark the run FAILED with `reason`.

        `requested`: what an attempt that failed before its submission asked for (a
        submitted one's request is recorded already). A failure of a kind no retry can
        mend ends the run's retries.
        """
        moved, unpreserved = preserve_failed_logs(ctx.layout, attempt)
        if unpreserved:
            reason = "; ".join([reason, *unpreserved])
        records = checksum_outputs([*(captured or []), *moved])
        values: dict[str, object] = {"failure_reason": reason, "failure_kind": kind}
        if requested is not None:
            values["requested_resources"] = resources_json(requested)
        try:
            with self._transaction(conn) as db:
                register_products(db, ctx.run_id, records)
                self._move(db, ctx.run_id, S.FAILED, expected=expected, **values)
        except TransitionError as exc:
            return RunOutcome(ctx.run_id, exc.current or S.CANCELLED, attempt, str(exc))
        final = kind in UNRETRYABLE_FAILURES
        _log().warning(
            "%s: attempt %s of %s%s failed (%s%s): %s", _who(ctx), attempt + 1,
            ctx.max_retries + 1, f" (job {job_id})" if job_id else "", kind.value,
            ", not retried: no retry can mend it" if final else "", reason,
        )  # fmt: skip
        return RunOutcome(
            ctx.run_id, S.FAILED, attempt, reason,
            log_path=ctx.layout.attempt_log(attempt), attempts=ctx.max_retries + 1, final=final,
        )  # fmt: skip

    def _move(
        self,
        session: Db,
        run_id: int,
        target: RunStatus,
        *,
        expected: RunStatus,
        **values: object,
    ) -> None:
        transition(session, run_id, target, expected=expected, **values)

    def _move_now(
        self, run_id: int, target: RunStatus, *, expected: RunStatus, **values: object
    ) -> None:
        with self._transaction() as conn:
            self._move(conn, run_id, target, expected=expected, **values)


def _who(ctx: RunContext) -> str:
    """Name a run the way people find it: `run 12 (calibrate[executed_obs_unit=scan-1])`."""
    return f"run {ctx.run_id} ({task_run_name(ctx.step, ctx.sub_group_key)})"


def _announce(ctx: RunContext, attempt: int, job: _StagedJob, job_id: str, how: str = "") -> None:
    """Log which queued job runs the attempt, what it asks for and where its inputs are."""
    _log().info(
        "run %s (%s[%s]) attempt %s of %s: %s input(s) staged in %s; submitted%s as "
        "job %s (%s) asking for %s", ctx.run_id, ctx.step, ctx.sub_group_key, attempt + 1,
        ctx.max_retries + 1, job.staged, ctx.layout.root, how, job_id,
        ctx.location.backend.value, describe(job.request),
    )  # fmt: skip


def _stuck_reason(job_id: str, info: JobInfo, grace_s: float) -> str:
    """Say why a job held for a reason that cannot clear was cancelled (kind STUCK_PENDING)."""
    return (
        f"STUCK_PENDING: job {job_id} was held for more than {grace_s:g} s (location setting "
        f"pending_grace_s) for a reason that does not clear by itself: {info.reason}; "
        "it was cancelled"
    )


def _first_command(ctx: RunContext, spec: JobSpec) -> dict[str, str]:
    """`execution_command` to record: the first attempt's; the database keeps it from then on."""
    if ctx.execution_command:
        return {}
    return {"execution_command": display_command(spec, ctx.secret_env)}


def _captured_log(layout: RunLayout, attempt: int) -> tuple[list[OutputFile], str | None]:
    """Return the attempt's captured log as a LOG product, or why it is not one (never followed)."""
    log = layout.attempt_log(attempt)
    try:
        kind = unexpected_kind(layout.root, log)
    except UnsafeEntryError as exc:
        return [], f"the attempt log {shown(log)} was not read: {exc}"
    if kind is not None:
        return [], f"the attempt log {shown(log)} was replaced by {kind}; it was not read"
    if not os.path.lexists(log):
        return [], None
    return [OutputFile(log, DataProductType.LOG, root=layout.root)], None


def _make_read_only(run_id: int, root: Path, path: Path) -> None:
    """Drop write permission: registered products are immutable (hard links share it).

    Through a descriptor reached without following links; a product something replaced
    after it was verified is left alone and named.
    """
    try:
        make_read_only(root, path)
    except (UnsafeEntryError, OSError) as exc:
        _log().warning("run %s: product not made read-only: %s", run_id, exc)
