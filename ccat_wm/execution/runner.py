"""One run from PENDING to a final status (docs/concepts.md section 2), written to the ops DB.

PENDING -> STAGING_DATA (stage inputs, write the manifest, build the command) ->
SUBMITTED (job id and command stored with the status) -> RUNNING -> COLLECTING_RESULTS
(exit code and metrics) -> COMPLETED (products and lineage in the same transaction) or
FAILED (logs kept as LOG products), then FAILED -> PENDING while `retry_count <
max_retries`. Every move goes through `transition()`, so a person's cancel (CANCELLED)
wins over the next move and the job is stopped. The ops DB is read for a cancel at most
every `CANCEL_CHECK_S` while polling; a cancel that lands after the job finished still
wins, since the next move fails.

A run commits twice: its start (claim, context, snapshot) and its end; the moves in
between wait in `Unrecorded` and go out, each its own UPDATE, with the end's commit,
unless the job runs long or its outputs are large (docs/execution.md, "Two commits per
run"). A run holds an ops DB connection only for those commits, none while its job runs.

`start_many` starts the first attempts of many runs together (same moves, same
transactions per run) and hands their jobs to the backend in one `submit_many` (SLURM:
job arrays); each run's `attempt` then follows its job from there.

The parts, one per module, in the order an attempt meets them: `job_start` (size,
stage, submit, record SUBMITTED), `ahead` (a wave's first attempts started together),
`job_end` (watch the job, record its end, collect products or keep logs), `resume` (a
run a dead process left in flight), with `recorder` (status moves, failures) and
`outcome` (the records they pass on) under them all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ccat_ops_db.models import IN_FLIGHT_STATUSES, FailureKind, RunStatus
from ccat_wm.execution.ahead import AheadError, AheadStarts
from ccat_wm.execution.context import load_run_context
from ccat_wm.execution.job_end import JobFollower
from ccat_wm.execution.job_start import JobStarter, backend_for
from ccat_wm.execution.lifecycle import TransitionError, transition
from ccat_wm.execution.outcome import RunOutcome, Submitted, announce, run_log, who
from ccat_wm.execution.recorder import RunRecorder
from ccat_wm.execution.resume import resume
from ccat_wm.execution.snapshot import record_snapshot
from ccat_wm.execution.stopping import StopRequestedError, stop_requested
from ccat_wm.settings import Settings

S = RunStatus
LOG = logging.getLogger(__name__)


class RunExecutor:
    """Executes runs against one ops DB with the given settings."""

    def __init__(self, engine: Engine, settings: Settings, *, poll_max_s: float = 2.0) -> None:
        """`poll_max_s` caps the polling interval (it starts at a few milliseconds)."""
        self.engine = engine
        self.settings = settings
        self.recorder = RunRecorder(engine)
        self.starter = JobStarter(self.recorder, settings)
        self.follower = JobFollower(self.recorder, poll_max_s=poll_max_s)
        self.ahead = AheadStarts(self.starter)

    def session(self) -> Session:
        """Return a new session on the ops DB."""
        return Session(self.engine)

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
        with self.recorder.transaction() as conn:
            ctx = load_run_context(conn, run_id)
            outcome = replace(outcome, job_id=ctx.hpc_job_id)
            if ctx.retry_count >= ctx.max_retries or outcome.final:
                return outcome
            try:
                self.recorder.move(conn, run_id, S.PENDING, expected=S.FAILED)
            except TransitionError:
                return outcome
        run_log().info("%s: retrying (attempt %s of %s)", who(ctx), ctx.retry_count + 2,
                       ctx.max_retries + 1)  # fmt: skip
        return replace(outcome, status=S.PENDING, retry_count=ctx.retry_count + 1, will_retry=True)

    def attempt(self, run_id: int) -> RunOutcome:
        """One attempt of a PENDING run, or the rest of one that a dead process left in flight.

        An attempt that `start_many` started in this process is followed from its job.
        """
        ahead = self.ahead.take(run_id)
        if ahead is None and stop_requested():
            raise StopRequestedError("not started: the command is stopping")
        if isinstance(ahead, AheadError):
            raise ahead.error
        if ahead is not None:
            attempt = ahead.ctx.retry_count
            if isinstance(ahead.started, Submitted) and ahead.job is not None:
                announce(ahead.ctx, attempt, ahead.job, ahead.started.job_id, " with its wave")
            return self.follower.follow_started(ahead.ctx, attempt, ahead.started)
        with self.engine.connect() as conn:
            with conn.begin():
                try:
                    self.recorder.move(conn, run_id, S.STAGING_DATA, expected=S.PENDING)
                except TransitionError as exc:
                    if exc.current not in IN_FLIGHT_STATUSES:
                        return RunOutcome(run_id, exc.current or S.CANCELLED, 0, str(exc))
                    resumed = True
                else:
                    resumed = False
                ctx = load_run_context(conn, run_id)
                if not resumed and not ctx.snapshot_recorded:
                    record_snapshot(conn, ctx)  # what this run uses, for good
            if not resumed:
                started = self.starter.submit(ctx, ctx.retry_count, conn)
        if resumed:
            return resume(ctx, self.starter, self.follower)
        return self.follower.follow_started(ctx, ctx.retry_count, started)

    def start_many(self, run_ids: Sequence[int]) -> int:
        """Start the first attempts of many PENDING runs together (`ahead`); jobs submitted."""
        return self.ahead.start_many(run_ids)

    def _fail_after_error(self, run_id: int, exc: Exception) -> None:
        """Do not leave a run in flight after an unexpected error: stop its job, fail it."""
        reason = f"internal error: {type(exc).__name__}: {exc}"[:2000]
        try:
            with self.recorder.transaction() as conn:
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
