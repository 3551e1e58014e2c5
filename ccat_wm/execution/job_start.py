"""Starting an attempt: size it, stage its inputs, write its manifest, submit its job.

A run in STAGING_DATA gets what its attempt asks for (refused at once if the location
can never give it), its inputs staged, its manifest written and its job built; the
backend takes the job, and SUBMITTED is recorded with the job id and the first
attempt's command (RUNNING too, in the same commit, for a backend whose jobs start at
once). An attempt that cannot start ends FAILED with the reason, kind NOT_STARTED (or
OVER_LIMIT, or CONTRACT for a run tree an earlier job tampered with).
"""

from __future__ import annotations

from sqlalchemy import Connection

from ccat_ops_db.models import FailureKind, RunStatus, Runtime
from ccat_wm.errors import CcatWmError
from ccat_wm.execution.backends import location_backend
from ccat_wm.execution.collect import reset_output
from ccat_wm.execution.context import RunContext
from ccat_wm.execution.launch import (
    build_job,
    build_manifest,
    display_command,
    image_ref,
    sif_cache_dir,
    write_manifest,
)
from ccat_wm.execution.lifecycle import TransitionError
from ccat_wm.execution.outcome import (
    RunOutcome,
    StagedJob,
    Started,
    Submitted,
    Unrecorded,
    announce,
    run_log,
    who,
)
from ccat_wm.execution.recorder import RunRecorder
from ccat_wm.execution.runtree import UnsafeEntryError, create_log
from ccat_wm.execution.sizing import (
    ImpossibleRequestError,
    attempt_request,
    check_request,
    combined_limits,
    resources_json,
)
from ccat_wm.execution.staging import CopyRecord, stage_inputs
from ccat_wm.execution.stopping import StopRequestedError, stop_requested
from ccat_wm.settings import Settings
from infra.backends import Backend, BackendError, JobSpec, ResourceLimits, Resources
from infra.sif_cache import ImagePullError, ensure_sif

S = RunStatus
NOT_STARTED_ERRORS = (CcatWmError, BackendError, OSError, ValueError)
"""What staging or submitting raises when an attempt's job cannot start."""


def backend_for(ctx: RunContext, settings: Settings | None = None) -> Backend:
    """Return the backend of the run's processing location (job state under its path)."""
    location = ctx.location
    return location_backend(location.backend, location.path, location.settings, settings)


def submission(ctx: RunContext, job: StagedJob, job_id: str, *, running: bool) -> Unrecorded:
    """Return the moves of a submitted job (and its staging's copies), from STAGING_DATA.

    SUBMITTED sets the job id, what it asks for and the first attempt's command;
    RUNNING follows for a job that runs already.
    """
    unrecorded = Unrecorded(S.STAGING_DATA, copies=job.copies)
    unrecorded.add(
        S.SUBMITTED, hpc_job_id=job_id, requested_resources=resources_json(job.request),
        **first_command(ctx, job.spec),
    )  # fmt: skip
    if running:
        unrecorded.add(S.RUNNING)
    return unrecorded


def first_command(ctx: RunContext, spec: JobSpec) -> dict[str, str]:
    """`execution_command` to record: the first attempt's; the database keeps it from then on."""
    if ctx.execution_command:
        return {}
    return {"execution_command": display_command(spec, ctx.secret_env)}


class JobStarter:
    """Stages and submits attempts' jobs, and records that they went out."""

    def __init__(self, recorder: RunRecorder, settings: Settings) -> None:
        """Record with `recorder`; build jobs with `settings`."""
        self.recorder = recorder
        self.settings = settings

    def submit(self, ctx: RunContext, attempt: int, conn: Connection) -> Started:
        """Stage, submit, record SUBMITTED (and RUNNING if it runs already).

        A job that starts at once is not recorded here: SUBMITTED and RUNNING go out
        with the next commit of the run (`Unrecorded`), which for a short job is the
        one that records its end. Until then the run shows STAGING_DATA; a process that
        dies meanwhile leaves it so, and the run that adopts it finds the job by name.
        """
        backend = backend_for(ctx, self.settings)
        job = self.stage_job(ctx, attempt, conn, backend)
        if isinstance(job, RunOutcome):
            return job
        if stop_requested():  # staged, never submitted: the adopting run submits it
            raise StopRequestedError("staged, not submitted: the command is stopping")
        try:
            job_id = backend.submit(job.spec)
        except NOT_STARTED_ERRORS as exc:
            return self.not_started(ctx, attempt, conn, job.request, exc, copies=job.copies)
        if backend.starts_at_once:
            return Submitted(backend, job_id, True, submission(ctx, job, job_id, running=True))
        return self.record_submitted(ctx, attempt, conn, backend, job=job, job_id=job_id)

    def stage_job(
        self, ctx: RunContext, attempt: int, conn: Connection, backend: Backend
    ) -> RunOutcome | StagedJob:
        """Size the attempt, stage its inputs, write its manifest and build its job."""
        try:
            request = self.request(ctx, backend)
        except ImpossibleRequestError as exc:
            return self.recorder.fail(
                ctx, attempt, str(exc), expected=S.STAGING_DATA, conn=conn,
                kind=FailureKind.OVER_LIMIT, requested=exc.request,
            )  # fmt: skip
        copies: list[CopyRecord] = []
        try:
            spec, staged = self._prepare(ctx, attempt, conn, request, copies)
        except UnsafeEntryError as exc:  # an earlier attempt's job planted it: no retry mends it
            return self.recorder.fail(
                ctx, attempt, f"could not start: {exc}", expected=S.STAGING_DATA, conn=conn,
                kind=FailureKind.CONTRACT, requested=request,
            )  # fmt: skip
        except NOT_STARTED_ERRORS as exc:
            return self.not_started(ctx, attempt, conn, request, exc, copies=copies)
        return StagedJob(spec, staged, request, copies)

    def not_started(
        self, ctx: RunContext, attempt: int, conn: Connection | None, request: Resources,
        exc: Exception, *, copies: list[CopyRecord] | None = None,
    ) -> RunOutcome:  # fmt: skip
        """FAILED (NOT_STARTED): the attempt's job could not be staged or submitted."""
        return self.recorder.fail(
            ctx, attempt, f"could not start: {exc}", expected=S.STAGING_DATA, conn=conn,
            kind=FailureKind.NOT_STARTED, requested=request,
            unrecorded=Unrecorded(S.STAGING_DATA, copies=copies or []),
        )  # fmt: skip

    def record_submitted(
        self,
        ctx: RunContext,
        attempt: int,
        conn: Connection | None,
        backend: Backend,
        *,
        job: StagedJob,
        job_id: str,
        announced: bool = True,
    ) -> Started:
        """Record SUBMITTED with the job id (and RUNNING for a job that starts at once).

        `announced`: log the submission of a queued job now (`start_many` leaves it to the
        run's own task run, whose Logs tab tells the run's story).
        """
        run_id, running = ctx.run_id, backend.starts_at_once
        if announced and not running:  # a queued job: say which while it waits and runs
            announce(ctx, attempt, job, job_id)
        try:
            with self.recorder.transaction(conn) as db:
                unrecorded = submission(ctx, job, job_id, running=running)
                self.recorder.write_unrecorded(db, run_id, unrecorded)
        except TransitionError as exc:
            backend.cancel(job_id)
            return RunOutcome(run_id, exc.current or S.CANCELLED, attempt, str(exc))
        return Submitted(backend, job_id, running)

    def request(self, ctx: RunContext, backend: Backend) -> Resources:
        """Return what this attempt asks for, refused if the location can never give it."""
        try:
            scheduler = backend.limits()
        except BackendError as exc:  # not knowing the partition's limits must not stop runs
            run_log().warning("%s: could not read the scheduler's limits: %s", who(ctx), exc)
            scheduler = ResourceLimits()
        limits = combined_limits(ctx.location.settings, scheduler)
        request = attempt_request(ctx, limits)
        check_request(request, limits, ctx.location.name)
        return request

    def _prepare(
        self,
        ctx: RunContext,
        attempt: int,
        conn: Connection,
        request: Resources,
        copies: list[CopyRecord],
    ) -> tuple[JobSpec, int]:
        """Stage the inputs, write the manifest, build the job; return it with the inputs' count.

        The staged packages' copies are added to `copies`, recorded with the next commit.
        """
        layout = ctx.layout
        reset_output(layout)
        create_log(layout.root, layout.attempt_log(attempt))
        staged = stage_inputs(lambda: self.recorder.transaction(conn), ctx, copies=copies)
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
