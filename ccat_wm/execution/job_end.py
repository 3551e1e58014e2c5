"""Following an attempt's job to its end, and recording what it left.

The job is polled (from a few milliseconds up to `poll_max_s`) until it ends; the ops
DB is read for a person's cancel at most every `CANCEL_CHECK_S`. A job the backend no
longer knows for `UNKNOWN_GRACE_S`, or one held for a reason that cannot clear for
longer than the location's `pending_grace_s`, ends FAILED. The end is recorded
(RUNNING if never seen, COLLECTING_RESULTS with exit code and metrics) in one commit;
then the products and lineage are registered with COMPLETED in one transaction, or the
attempt's logs are kept as LOG products with FAILED.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from ccat_ops_db.models import DataProductType, FailureKind, RunStatus
from ccat_wm.execution.collect import (
    ContractViolationError,
    OutputFile,
    ProductRecord,
    checksum_outputs,
    register_products,
    scan_outputs,
    verify_unchanged,
)
from ccat_wm.execution.context import RunContext
from ccat_wm.execution.layout import RunLayout
from ccat_wm.execution.lifecycle import TransitionError, current_status
from ccat_wm.execution.outcome import RunOutcome, Started, Unrecorded, run_log
from ccat_wm.execution.recorder import RunRecorder
from ccat_wm.execution.runtree import (
    UnsafeEntryError,
    make_read_only,
    open_regular,
    shown,
    unexpected_kind,
)
from ccat_wm.execution.sizing import DEFAULT_PENDING_GRACE_S, classify_failure, pending_grace_s
from ccat_wm.execution.stopping import StopRequestedError, stop_requested
from ccat_wm.quality.decide import Judgement, judge, qa_columns, record_judgement
from ccat_wm.quality.metrics import QaMetricsError, run_metrics
from ccat_wm.quality.propagate import follow_rejection
from infra.backends import Backend, JobInfo, JobState

S = RunStatus
CANCEL_CHECK_S = 0.25
"""How often a watched run looks in the ops DB for a person's cancel."""
RECORD_RUNNING_AFTER_S = 1.0
"""A job that started at once is recorded SUBMITTED and RUNNING once it has run this long
(a shorter one: with its end, in one commit)."""
QUICK_COLLECTION_BYTES = 64 << 20
"""Outputs up to this size are collected in the commit that records the job's end; for
larger ones COLLECTING_RESULTS is committed first, so that the run shows it while the
files are hashed."""
UNKNOWN_GRACE_S = 60.0
"""A job the backend does not know for this long is failed (it may lag behind at first)."""


@dataclass(frozen=True, slots=True)
class JobEnd:
    """How a watched job ended, as far as the watch knows."""

    info: JobInfo | None
    """The job's end; None: the run was cancelled (and the job stopped)."""
    running_recorded: bool
    """RUNNING is recorded for the run."""


class JobFollower:
    """Watches submitted jobs and records their ends, products and failures."""

    def __init__(self, recorder: RunRecorder, *, poll_max_s: float) -> None:
        """Record with `recorder`; poll a job at most every `poll_max_s` seconds."""
        self.recorder = recorder
        self.poll_max_s = poll_max_s

    def follow_started(self, ctx: RunContext, attempt: int, started: Started) -> RunOutcome:
        """Follow what a start gave (after its connection went back to the pool)."""
        if isinstance(started, RunOutcome):
            return started
        return self.follow(
            ctx, attempt, started.backend, started.job_id, running=started.running,
            unrecorded=started.unrecorded,
        )  # fmt: skip

    def follow(
        self,
        ctx: RunContext,
        attempt: int,
        backend: Backend,
        job_id: str,
        *,
        running: bool,
        unrecorded: Unrecorded | None = None,
    ) -> RunOutcome:
        """Watch the job to its end, note it (COLLECTING_RESULTS) and collect its results.

        `unrecorded`: moves of the attempt not written yet (a job that started at once);
        the end is written with them and the products in one commit (`collect`).
        """
        grace = pending_grace_s(ctx.location.settings)
        end = self.watch(
            ctx.run_id, backend, job_id, running=running, grace_s=grace, unrecorded=unrecorded
        )
        if end.info is None:
            return RunOutcome(ctx.run_id, S.CANCELLED, attempt, "cancelled")
        info = end.info
        if unrecorded is None:
            unrecorded = Unrecorded(S.RUNNING if end.running_recorded else S.SUBMITTED)
        if unrecorded.status is not S.RUNNING:
            unrecorded.add(S.RUNNING)
        unrecorded.add(
            S.COLLECTING_RESULTS, exit_code=info.exit_code, processing_time_s=info.wall_time_s,
            cpu_hours=info.cpu_hours, peak_memory_gb=info.peak_memory_gb,
        )  # fmt: skip
        with self.recorder.engine.connect() as conn:
            outcome = self.collect(ctx, attempt, info, conn, job_id=job_id, unrecorded=unrecorded)
        backend.forget(job_id)
        return outcome

    def watch(
        self,
        run_id: int,
        backend: Backend,
        job_id: str,
        *,
        running: bool = False,
        grace_s: float = DEFAULT_PENDING_GRACE_S,
        unrecorded: Unrecorded | None = None,
    ) -> JobEnd:
        """Poll until the job ends, is cancelled by a person, or is stuck for `grace_s`.

        A job the backend reports stuck (held for a reason that cannot clear by itself)
        for longer than `grace_s` is cancelled and ends FAILED with reason STUCK_PENDING.
        The `unrecorded` moves of a job that runs longer than `RECORD_RUNNING_AFTER_S`
        are written then, so that a long job shows RUNNING.
        """
        # long: one polling loop; its branches are the ways a job ends, read best side by side
        interval, marked_running, unknown_since, stuck_since = 0.002, running, None, None
        next_check = time.monotonic() + CANCEL_CHECK_S
        record_at = time.monotonic() + RECORD_RUNNING_AFTER_S
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
                    with self.recorder.engine.connect() as conn:
                        if current_status(conn, run_id) is S.CANCELLED:
                            backend.cancel(job_id)
                            return JobEnd(None, marked_running)
                if info.state is JobState.RUNNING and not marked_running:
                    self.recorder.move_now(run_id, S.RUNNING, expected=S.SUBMITTED)
                    marked_running = True
                if unrecorded is not None and time.monotonic() >= record_at:
                    self.recorder.write_unrecorded_now(run_id, unrecorded)
                if info.state is JobState.UNKNOWN:
                    unknown_since = unknown_since or time.monotonic()
                    if time.monotonic() - unknown_since > UNKNOWN_GRACE_S:
                        info = JobInfo(
                            JobState.FAILED, reason=f"backend lost the job: {info.reason}"
                        )
                stuck_since = (stuck_since or time.monotonic()) if info.stuck else None
                if stuck_since is not None and time.monotonic() - stuck_since > grace_s:
                    backend.cancel(job_id)
                    stuck = JobInfo(JobState.FAILED, reason=_stuck_reason(job_id, info, grace_s))
                    return JobEnd(stuck, marked_running)
                if info.state.finished:
                    return JobEnd(info, marked_running)
                backend.wait(job_id, interval)
                interval = min(interval * 2, self.poll_max_s)
        except TransitionError as exc:
            if exc.current is S.CANCELLED:
                backend.cancel(job_id)
                return JobEnd(None, marked_running)
            raise

    def collect(
        self,
        ctx: RunContext,
        attempt: int,
        info: JobInfo,
        conn: Connection | None = None,
        *,
        job_id: str | None = None,
        unrecorded: Unrecorded | None = None,
    ) -> RunOutcome:
        """Register the finished job's products (COMPLETED) or keep its logs (FAILED).

        `unrecorded`: the attempt's moves since its last commit (up to COLLECTING_RESULTS),
        written in the same transaction; None: the run is COLLECTING_RESULTS already.
        """
        # long: both ends of a job (its products, or its kept logs) write the attempt's
        # unrecorded moves in their one transaction; read best together
        job_id = job_id or ctx.hpc_job_id  # resumed: the job recorded before the process died
        layout = ctx.layout
        unrecorded = unrecorded or Unrecorded(S.COLLECTING_RESULTS)
        captured, log_problem = _captured_log(layout, attempt)
        if info.state is not JobState.COMPLETED:
            reason = info.reason or f"exit code {info.exit_code}"
            if log_problem:
                reason = f"{reason}; {log_problem}"
            return self.recorder.fail(
                ctx, attempt, reason, captured=captured, conn=conn, job_id=job_id,
                kind=classify_failure(reason, info.exit_code), unrecorded=unrecorded,
            )  # fmt: skip
        try:
            if log_problem:
                raise ContractViolationError([log_problem])
            outputs = [*scan_outputs(layout), *captured]
            if unrecorded.moves and _bytes(outputs) > QUICK_COLLECTION_BYTES:
                self.recorder.write_unrecorded_now(ctx.run_id, unrecorded)
            records = checksum_outputs(outputs)
            metrics, judgement = _read_qa(ctx, records)
            with self.recorder.transaction(conn) as db:
                self.recorder.write_unrecorded(db, ctx.run_id, unrecorded)
                register_products(db, ctx.run_id, records)
                verify_unchanged(records)  # nothing may have changed since it was hashed
                if judgement is not None:  # with the products, in the same transaction
                    record_judgement(db, ctx.run_id, judgement)
                self.recorder.move(
                    db, ctx.run_id, S.COMPLETED, expected=S.COLLECTING_RESULTS,
                    **qa_columns(metrics, judgement),
                )  # fmt: skip
                if judgement is not None and not judgement.decision.accepted:
                    with Session(bind=db) as session:  # in this transaction
                        follow_rejection(session, ctx.run_id)  # a re-run's downstream runs
        except ContractViolationError as exc:
            return self.recorder.fail(
                ctx, attempt, str(exc), captured=captured, conn=conn, job_id=job_id,
                kind=FailureKind.CONTRACT, unrecorded=unrecorded,
            )  # fmt: skip
        except TransitionError as exc:  # cancelled while it was collected
            return RunOutcome(ctx.run_id, exc.current or S.CANCELLED, attempt, str(exc))
        for record in records:
            _make_read_only(ctx.run_id, record.root or layout.root, record.path)
        return _completed(ctx, attempt, info, job_id, products=len(records), judgement=judgement)


def _completed(
    ctx: RunContext,
    attempt: int,
    info: JobInfo,
    job_id: str | None,
    *,
    products: int,
    judgement: Judgement | None,
) -> RunOutcome:
    """Say that the run completed (and what its QA gate decided); return its outcome."""
    # One record for a successful attempt of a job that started at once: each record
    # goes to the Prefect server and cost about 2 ms per run here (bench/README.md).
    run_log().info(
        "run %s (%s[%s]) attempt %s of %s: %s input(s) staged, job %s (%s) ran %.1f s; "
        "COMPLETED with %s product(s) under %s", ctx.run_id, ctx.step, ctx.sub_group_key,
        attempt + 1, ctx.max_retries + 1, len(ctx.raw_inputs) + len(ctx.product_inputs),
        job_id, ctx.location.backend.value, info.wall_time_s or 0.0,
        products, ctx.layout.root,
    )  # fmt: skip
    if judgement is not None and not judgement.decision.accepted:
        rejection = judgement.decision.message()
        run_log().info(
            "run %s (%s[%s]): %s by the step's QA gate; its products feed no downstream "
            "step", ctx.run_id, ctx.step, ctx.sub_group_key, rejection,
        )  # fmt: skip
        return RunOutcome(ctx.run_id, S.COMPLETED, attempt, qa_rejection=rejection)
    return RunOutcome(ctx.run_id, S.COMPLETED, attempt)


def _read_qa(
    ctx: RunContext, records: Sequence[ProductRecord]
) -> tuple[dict[str, float] | None, Judgement | None]:
    """Return the run's QA metrics (None: no QA file) and its gate's judgement (None: no gate).

    The QA files are the QA_METRIC products ending in `.json`, read from the run's tree
    following no link. Of a gated step, files that cannot give the metrics are a
    contract violation; of a step without a gate, they are logged and give no metrics.
    """
    output = ctx.layout.output
    files: dict[str, bytes] = {}
    for record in records:
        if record.data_product_type is DataProductType.QA_METRIC and record.path.suffix == ".json":
            with open_regular(record.root or ctx.layout.root, record.path) as handle:
                files[str(record.path.relative_to(output))] = handle.read()
    if not ctx.qa_gate:
        if not files:
            return None, None
        try:
            return run_metrics(files), None
        except QaMetricsError as exc:
            run_log().warning("run %s: its QA files give no metrics: %s", ctx.run_id, exc)
            return None, None
    try:
        judgement = judge(ctx.qa_gate, files)
    except QaMetricsError as exc:
        raise ContractViolationError([str(exc)]) from None
    return judgement.metrics, judgement


def _bytes(outputs: Sequence[OutputFile]) -> int:
    """Size of the outputs on disk (links not followed; a file gone counts nothing)."""
    total = 0
    for output in outputs:
        with contextlib.suppress(OSError):
            total += os.lstat(output.path).st_size
    return total


def _stuck_reason(job_id: str, info: JobInfo, grace_s: float) -> str:
    """Say why a job held for a reason that cannot clear was cancelled (kind STUCK_PENDING)."""
    return (
        f"STUCK_PENDING: job {job_id} was held for more than {grace_s:g} s (location setting "
        f"pending_grace_s) for a reason that does not clear by itself: {info.reason}; "
        "it was cancelled"
    )


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
        run_log().warning("run %s: product not made read-only: %s", run_id, exc)
