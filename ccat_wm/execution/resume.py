"""Driving on a run that a process which died left in flight (see `claims`).

STAGING_DATA: the job is looked up by its name; never submitted, the attempt starts
again (staging is idempotent), else SUBMITTED is recorded for it. SUBMITTED or RUNNING:
the job is followed. COLLECTING_RESULTS: its end was recorded; what it left is collected.
"""

from __future__ import annotations

from ccat_ops_db.models import RunStatus
from ccat_wm.execution.context import RunContext
from ccat_wm.execution.job_end import JobFollower
from ccat_wm.execution.job_start import JobStarter, backend_for, first_command
from ccat_wm.execution.launch import build_job, job_name
from ccat_wm.execution.lifecycle import TransitionError
from ccat_wm.execution.outcome import RunOutcome, run_log, who
from ccat_wm.execution.sizing import ImpossibleRequestError, configured_resources, resources_json
from infra.backends import JobInfo, JobState

S = RunStatus


def resume(ctx: RunContext, starter: JobStarter, follower: JobFollower) -> RunOutcome:
    """Take a run left in flight to its end from where it stopped."""
    attempt, backend = ctx.retry_count, backend_for(ctx, starter.settings)
    run_log().warning("%s was left %s by a process that died; resuming it", who(ctx), ctx.status)
    if ctx.status is S.STAGING_DATA:
        job_id = backend.find(job_name(ctx, attempt))
        if job_id is None:  # never submitted: stage and submit (staging is idempotent)
            with starter.recorder.engine.connect() as conn:
                started = starter.submit(ctx, attempt, conn)
            return follower.follow_started(ctx, attempt, started)
        try:
            request = starter.request(ctx, backend)
        except ImpossibleRequestError:  # the limits changed since; the job runs anyway
            request = configured_resources(ctx.resources)  # recorded as the best known
        spec = build_job(ctx, starter.settings, attempt, request)
        try:
            starter.recorder.move_now(
                ctx.run_id, S.SUBMITTED, expected=S.STAGING_DATA, hpc_job_id=job_id,
                requested_resources=resources_json(request), **first_command(ctx, spec),
            )  # fmt: skip
        except TransitionError as exc:
            backend.cancel(job_id)
            return RunOutcome(ctx.run_id, exc.current or S.CANCELLED, attempt, str(exc))
        return follower.follow(ctx, attempt, backend, job_id, running=False)
    if ctx.status in (S.SUBMITTED, S.RUNNING) and ctx.hpc_job_id:
        running = ctx.status is S.RUNNING
        return follower.follow(ctx, attempt, backend, ctx.hpc_job_id, running=running)
    # COLLECTING_RESULTS: the job's end was recorded; collect what it left.
    state = JobState.COMPLETED if ctx.exit_code == 0 else JobState.FAILED
    return follower.collect(ctx, attempt, JobInfo(state, exit_code=ctx.exit_code))
