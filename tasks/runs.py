"""Prefect tasks of a pipeline flow: thin wrappers around `ccat_wm.execution`.

Tasks take ids and plain values, never ORM objects or sessions; none is cached (they
write to the ops DB). A sub-group's run holds one slot of its step's global concurrency
limit (`ccat-step:<pipeline>:<step>`, created by `ensure_concurrency_limits`, acquired
strictly so that a missing limit is an error) for each attempt; slots are leases
pooled per flow run (see `tasks.slots`), so a task that raises gives its slot back at
once and a process that dies gives it back when the lease expires. What the runner
says about a run goes to Prefect's run logger, so it shows in the task run's Logs tab.
"""

from __future__ import annotations

import datetime as dt
import logging
from functools import lru_cache
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.runtime import task_run
from prefect.states import Cancelled, Completed, Failed
from sqlalchemy.exc import SQLAlchemyError

from ccat_ops_db.models import RunStatus
from ccat_wm.db import get_engine, resolve_db_url
from ccat_wm.errors import CcatWmError, describe
from ccat_wm.execution.claims import live_other_claims
from ccat_wm.execution.failure import FailedRun, failure_markdown, failure_message
from ccat_wm.execution.failures import retry_command, task_run_name
from ccat_wm.execution.outcome import RunOutcome, run_logging
from ccat_wm.execution.retry import RetryResult, retry_flow_run_failures
from ccat_wm.execution.runner import RunExecutor
from ccat_wm.execution.stopping import StopRequestedError, stop_requested
from ccat_wm.execution.waves import Wave, WaveItem, claim_follow_up, first_runs, prepare_wave
from ccat_wm.settings import load_settings
from tasks.not_run import not_run
from tasks.slots import pool_for, reclaim_dead_slots, uses_ephemeral_server

__all__ = [  # what flows use; `WaveItem` and `first_runs` pass on the wave's records
    "ATTEMPT_FAILED",
    "BOOKKEEPING",
    "RunFailedError",
    "WaveItem",
    "ensure_concurrency_limits",
    "executor",
    "first_runs",
    "limit_name",
    "prepare_wave_task",
    "retry_failures_task",
    "run_sub_group",
    "run_tags",
    "sub_group_task",
    "submit_ahead_task",
]


class RunFailedError(CcatWmError):
    """A sub-group's run ended FAILED after its retries (fails the task run in Prefect)."""


def limit_name(pipeline: str, step: str) -> str:
    """Name of a step's global concurrency limit."""
    return f"ccat-step:{pipeline}:{step}"


@lru_cache(maxsize=1)
def executor() -> RunExecutor:
    """Return the process's run executor (one engine per process)."""
    settings = load_settings()
    return RunExecutor(get_engine(resolve_db_url(settings)), settings)


BOOKKEEPING = "[bookkeeping] "
"""Prefix of the flow's own task runs, so an operator tells them from sub-group runs."""


@task(name=f"{BOOKKEEPING}prepare-wave", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def prepare_wave_task(
    pipeline: str, sub_groups: list[str] | None, manual: bool, force: bool, claim_as: str
) -> Wave:
    """Create runs for due gaps and claim this flow run's wave."""
    try:
        with executor().session() as session, session.begin():
            wave = prepare_wave(
                session, pipeline, dt.datetime.now(dt.UTC), claim_as=claim_as,
                sub_groups=sub_groups, manual=manual, force=force,
            )  # fmt: skip
    except SQLAlchemyError as exc:  # nothing was written; say why without the SQL
        raise CcatWmError(f"preparing the runs of {pipeline}: {describe(exc)}") from None
    follow_ups = sum(1 for i in wave.items if i.run_id is None)
    get_run_logger().info(
        "%s: %s run(s) to execute, %s follow-up(s) waiting for them",
        pipeline, len(wave.items) - follow_ups, follow_ups,
    )  # fmt: skip
    return wave


@task(name=f"{BOOKKEEPING}submit-ahead", cache_policy=NO_CACHE)
def submit_ahead_task(pipeline: str, claim_as: str, runs: dict[str, list[int]]) -> int:
    """Submit the wave's first runs together (SLURM job arrays), before their task runs.

    Each step's runs first get slots of the step's limit, in one lease, as many as it
    allows now; those runs are staged and submitted in a few `sbatch` calls, and their
    task runs follow the jobs. The others start one by one as slots come back. Returns
    how many jobs were submitted.
    """
    logger = get_run_logger()
    submitted = 0
    for step, run_ids in runs.items():
        taken = pool_for(claim_as, step, limit_name(pipeline, step)).reserve(run_ids)
        if not taken:
            continue
        with run_logging(logger):
            count = executor().start_many(taken)
        submitted += count
        notes = ""
        if count < len(taken):
            notes += f"; {len(taken) - count} not submitted (see their task runs)"
        if len(taken) < len(run_ids):
            notes += f"; {len(run_ids) - len(taken)} start as slots come back"
        logger.info(
            "%s: submitted %s of %s first run(s) together%s", step, count, len(run_ids), notes
        )
    return submitted


@task(
    name=f"{BOOKKEEPING}ensure-concurrency-limits",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
)
def ensure_concurrency_limits(pipeline: str, limits: dict[str, int], claim_as: str) -> None:
    """Create or update one global concurrency limit per step (`max_concurrent_runs`).

    On Prefect's ephemeral server, slots that a killed `ccat-wm run` held are given back
    here when no other flow run of the pipeline is alive (tasks/slots.py says why).
    """
    with get_client(sync_client=True) as client:
        for step, limit in limits.items():
            client.upsert_global_concurrency_limit_by_name(limit_name(pipeline, step), limit)
    if not uses_ephemeral_server():
        return
    with executor().session() as session, session.begin():
        others = live_other_claims(session, pipeline, claim_as)
    if not others:
        reclaim_dead_slots([limit_name(pipeline, step) for step in limits])


def _sub_group_task_run_name() -> str:
    """Name a `run_sub_group` task run from its parameters (no per-run task copy)."""
    parameters = task_run.parameters
    return task_run_name(parameters["step"], parameters["sub_group_key"])


class _NoEmptyExceptionInfo(logging.Filter):
    """Drop the `exc_info` of a record logged outside any exception.

    Prefect logs a task run that ends Failed by returning a state (as a run that failed
    does) with `exc_info=True`, which would print a stray `NoneType: None` line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info == (None, None, None):
            record.exc_info = None
        return True


logging.getLogger("prefect.task_runs").addFilter(_NoEmptyExceptionInfo())

ATTEMPT_FAILED = "AttemptFailed"
"""Name of the Failed state of an attempt after which the run is PENDING again."""


def _retry_when_the_run_is_pending_again(task: Any, task_run: Any, state: State[Any]) -> bool:
    """Prefect retries a sub-group's task run only when the runner gave its run another attempt.

    The ops DB's `retry_count` and `max_retries` decide (they survive the process);
    Prefect's retry counter follows them, so the UI counts the attempts.
    """
    del task, task_run
    return state.name == ATTEMPT_FAILED


def run_tags(pipeline: str, step: str, location: str) -> list[str]:
    """Tags of a sub-group's task run, shared by every run of its step.

    No tag unique to one run (such as its id): Prefect's task engine takes a slot of a
    `tag:<tag>` concurrency limit for every tag of every task run, with a client service
    thread per distinct set of tags; a unique tag cost 52 ms and one leaked thread per
    task run, three shared ones 1.8 ms (`bench/task_tags_bench.py`). The run id is in
    every log line of the task run and in its failure message.
    """
    return [f"pipeline:{pipeline}", f"step:{step}", f"location:{location}"]


@task(
    cache_policy=NO_CACHE,
    task_run_name=_sub_group_task_run_name,
    retry_condition_fn=_retry_when_the_run_is_pending_again,
)
def run_sub_group(
    pipeline: str,
    step: str,
    sub_group_key: str,
    run_id: int | None,
    *,
    claim_as: str,
    manual: bool = False,
    force: bool = False,
) -> RunOutcome | State[Any]:
    """Execute one attempt of a sub-group's run (a follow-up's is created first).

    A failed attempt with retries left ends this task run attempt `AttemptFailed`, and
    Prefect runs the task again (the run is PENDING and still claimed by this flow run).
    A run that failed for good ends the task run Failed with its reason and the end of
    its job's log as the message.
    """
    logger = get_run_logger()
    if stop_requested():  # a claimed run stays PENDING: the next flow run adopts it
        return Cancelled(message=f"run {run_id}: not started; the command was stopped")
    blocked: tuple[tuple[str, str], ...] = ()
    if run_id is None:
        run_id, blocked = _claim_follow_up(
            pipeline, step, sub_group_key, claim_as=claim_as, manual=manual, force=force
        )
    slots = pool_for(claim_as, step, limit_name(pipeline, step))
    if run_id is None:
        slots.skip()
        return not_run(step, sub_group_key, blocked)
    try:
        with slots.slot(run_id) as held, run_logging(logger):
            try:
                outcome = executor().run_attempt(run_id)
            except StopRequestedError as exc:  # a job in flight runs on; so does its slot
                held.kept = exc.in_flight
                raise
            except SQLAlchemyError as exc:  # the run is marked FAILED; say why without the SQL
                raise RunFailedError(f"run {run_id}: {describe(exc)}") from None
            held.done = not outcome.will_retry
    except StopRequestedError as exc:  # left for the next flow run of the pipeline to adopt
        logger.warning("run %s: %s", run_id, exc)
        return Cancelled(message=f"run {run_id}: {exc}")
    return _task_run_end(pipeline, step, sub_group_key, run_id, outcome)


def _claim_follow_up(
    pipeline: str, step: str, key: str, *, claim_as: str, manual: bool, force: bool
) -> tuple[int | None, tuple[tuple[str, str], ...]]:
    """Create (if due) and claim a follow-up's run; else say which failures upstream block it."""
    with executor().session() as session, session.begin():
        follow_up = claim_follow_up(
            session, pipeline, step, key, dt.datetime.now(dt.UTC),
            claim_as=claim_as, manual=manual, force=force,
        )  # fmt: skip
    if follow_up.run_id is not None:
        get_run_logger().info(
            "claimed run %s now that its upstream runs are done", follow_up.run_id
        )
    return follow_up.run_id, follow_up.failed_upstream


def _task_run_end(
    pipeline: str, step: str, key: str, run_id: int, outcome: RunOutcome
) -> RunOutcome | State[Any]:
    """Return how the task run of an attempt ends: the outcome, or a state saying why not."""
    if outcome.will_retry:
        return Failed(
            name=ATTEMPT_FAILED,
            message=f"run {run_id}: attempt {outcome.retry_count} of {outcome.attempts} "
            f"(job {outcome.job_id}) failed: {outcome.message}; retrying",
        )
    if outcome.status is RunStatus.FAILED:
        failed = FailedRun(
            run_id, task_run_name(step, key), outcome.retry_count + 1,
            outcome.message, outcome.log_path, outcome.job_id,
            f"fix the cause, then press Retry on the flow run, or run "
            f"`{retry_command(pipeline, key, step)}`",
        )  # fmt: skip
        create_markdown_artifact(
            markdown=failure_markdown(failed), description=f"Why {failed.name} failed"
        )
        return Failed(message=failure_message(failed))
    if outcome.status is RunStatus.CANCELLED:
        return Cancelled(message=f"run {run_id} was cancelled")
    if outcome.qa_rejection:  # the software worked: Completed, saying what the gate found
        return Completed(
            message=f"run {run_id} ({task_run_name(step, key)}) {outcome.qa_rejection} by "
            "the step's QA gate; its products feed no downstream step",
            data=outcome,
        )
    return outcome


@lru_cache(maxsize=64)
def sub_group_task(retries: int) -> Any:
    """`run_sub_group` with Prefect retries for a step's `max_retries`.

    No delay: the runner already waited for the job, and a retry is a new job.
    """
    return run_sub_group.with_options(retries=retries, retry_delay_seconds=0)


@task(name=f"{BOOKKEEPING}retry-failed-sub-groups", cache_policy=NO_CACHE)
def retry_failures_task(pipeline: str, claim_as: str) -> RetryResult:
    """Prefect's Retry of this flow run: a fresh budget for the sub-groups it failed."""
    retried = retry_flow_run_failures(executor().engine, pipeline, claim_as)
    logger = get_run_logger()
    if retried.created:
        logger.info(
            "Retry: %s failed sub-group run(s) get a fresh budget (reason retry): %s",
            len(retried.created),
            ", ".join(task_run_name(c.step, c.sub_group_key) for c in retried.created),
        )
    else:
        logger.info("Retry: no sub-group this flow run failed is failed any more; nothing to do")
    return retried
