"""The pipeline flow: one flow run executes a wave of a pipeline's sub-group runs.

A pipeline compiles into this flow under the pipeline's name (`flow_for`). Its
parameters are plain values, so the same flow serves CONTINUOUS, CRON and MANUAL runs.
Task runs are named `<step>[<sub_group_key>]`; a follow-up waits (with `allow_failure`)
only for the upstream runs inside its sub-group. Parallelism is bounded by the thread
pool (`CCAT_WM_FLOW_WORKERS`) and per step by global concurrency limits. A wave larger
than `CCAT_WM_MAX_TASK_RUNS` (at most 1,000) runs as sub-flow runs of that size, because
one Prefect server does not reliably record more task runs per flow run; each starts
while the last runs of the one before still run (`flows.parts`).
A flow run in which any sub-group run failed ends Failed; the others still run.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import enum
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from prefect import Flow, flow, get_run_logger, tags
from prefect.client.schemas.objects import FlowRun, State
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import allow_failure

from ccat_wm.errors import CcatWmError
from ccat_wm.execution.stopping import reinstall, stop_requested, stop_signal
from ccat_wm.settings import load_settings
from flows.parts import Part, PartProgress, lead_for, progress_of, run_parts, split_wave
from tasks.artifacts import publish_artifacts
from tasks.claim import cancel_claimed_runs, claimed_runs
from tasks.not_run import NOT_DUE, NOT_READY, UPSTREAM_FAILED, end_not_ready
from tasks.runs import (
    WaveItem,
    ensure_concurrency_limits,
    first_runs,
    limit_name,
    prepare_wave_task,
    retry_failures_task,
    run_tags,
    sub_group_task,
    submit_ahead_task,
)
from tasks.slots import close_pools, open_pool


class SubGroupRunsFailedError(CcatWmError):
    """Some sub-group runs of a pipeline flow run failed (the others ran)."""


class _DataFailureIsNotACrash(logging.Filter):
    """Drop Prefect's "unexpected exception" traceback for a flow run that failed on data.

    A worker runs a flow through Prefect's engine, which asks a Failed flow run for its
    result; that raises the state's exception, and the engine logs it with a traceback as
    "Engine execution exited with unexpected exception", in the flow run's logs and the
    worker's output. For a pipeline whose sub-groups failed this is no crash: the flow run
    is Failed with a message naming each failure and what to do. Any other exception (a
    bug) keeps its traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record but a traceback of `SubGroupRunsFailedError`."""
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, SubGroupRunsFailedError)


for _logger in ("prefect.flow_runs", "prefect.engine"):
    logging.getLogger(_logger).addFilter(_DataFailureIsNotACrash())


BOOKKEEPING_TASKS = 4
"""Task runs of a flow run besides the sub-group runs (prepare, limits, submit-ahead,
artifacts)."""


def _bounded_runner() -> Any:
    """Return a thread pool of `CCAT_WM_FLOW_WORKERS` threads (Prefect's default is unbounded).

    Read when a flow is made for a pipeline (`flow_for`), so that the settings in force
    then count, not those of the moment this module was imported.
    """
    return ThreadPoolTaskRunner(max_workers=load_settings().flow_workers)


@dataclass(frozen=True, slots=True)
class WaveRun:
    """What every task run of a wave shares."""

    pipeline: str
    location: str
    claim_as: str
    manual: bool
    force: bool
    retries: dict[str, int]
    """Prefect retries per step: the step's `max_retries`."""
    tagged: bool = True
    """Tag the task runs (`CCAT_WM_TASK_RUN_TAGS`)."""
    submit_ahead: bool = False
    """Submit the first runs together before their task runs follow them (SLURM)."""


def _run_items(
    wave: WaveRun, items: list[WaveItem], progress: PartProgress | None = None
) -> dict[str, int]:
    """Submit the items in order (upstream first) and count how their task runs ended.

    A bulk-submitting location's first jobs go out together first (if that fails, each
    task run starts its own). `progress` counts a part's task runs down as they end.
    """
    first = first_runs(items) if wave.submit_ahead else {}
    if first:
        ahead = submit_ahead_task(wave.pipeline, wave.claim_as, first, return_state=True)
        if ahead.is_failed():
            get_run_logger().warning(
                "submitting the first runs together failed (%s); each run's task run "
                "submits its own", ahead.message,
            )  # fmt: skip
    futures: list[PrefectFuture[Any]] = []
    for item in items:
        waits = [allow_failure(futures[i]) for i in item.upstream if i < len(futures)]
        task = sub_group_task(wave.retries.get(item.step, 0))
        with tags(*(run_tags(wave.pipeline, item.step, wave.location) if wave.tagged else ())):
            futures.append(
                task.submit(
                    wave.pipeline,
                    item.step,
                    item.sub_group_key,
                    item.run_id,
                    claim_as=wave.claim_as,
                    manual=wave.manual,
                    force=wave.force,
                    wait_for=waits,
                )
            )
        if progress is not None:
            _thread_future(futures[-1]).add_done_callback(lambda _: progress.one_ended())
    counts = _no_counts()
    for future in futures:
        if not _wait(future):  # the command is stopping: task runs not begun never will
            for queued in futures:
                _thread_future(queued).cancel()  # only those a thread has not taken yet
            if not _thread_future(future).cancelled():
                future.wait()  # a begun one sees the stop within a poll and returns
        if _thread_future(future).cancelled():
            counts["cancelled"] += 1
            continue
        future.wait()  # done: keeps the task run's final state
        counts[_outcome(future.state)] += 1
    if counts["not_run"] and not stop_requested():
        end_not_ready(items, futures)
    return counts


def _no_counts() -> dict[str, int]:
    """Return zero counts of how a wave's task runs ended (the flow run's result)."""
    return {"completed": 0, "failed": 0, "cancelled": 0, "not_run": 0, "not_due": 0}


def _outcome(state: State[Any]) -> str:
    """Classify a sub-group task run's end (a key of `_no_counts`).

    A run completed, failed or was cancelled; a follow-up without a run was `not_run`
    (its upstream failed) or `not_due`.
    """
    if state.is_failed() or state.is_crashed():
        return "failed"
    if state.is_cancelled():
        return "not_run" if state.name == UPSTREAM_FAILED else "cancelled"
    if state.is_pending() and state.name == NOT_READY:  # waited for a follow-up not run
        return "not_run"
    return "not_due" if state.name == NOT_DUE else "completed"


@flow(name="ccat-pipeline-chunk")
def pipeline_chunk(  # noqa: PLR0917 - a flow's parameters, passed positionally by _run_wave
    pipeline: str,
    items: list[dict[str, Any]],
    claim_as: str,
    manual: bool,
    force: bool,
    location: str = "",
    retries: dict[str, int] | None = None,
    submit_ahead: bool = False,
    part: int = 0,
) -> State[Any] | dict[str, int]:
    """Run part `part` of a large wave as its own flow run (`flows.parts`)."""
    wave_items = [WaveItem(**i) for i in items]
    wave = WaveRun(
        pipeline, location, claim_as, manual, force, retries or {},
        load_settings().task_run_tags, submit_ahead,
    )  # fmt: skip
    counts = _run_items(wave, wave_items, progress_of(claim_as, part))
    if counts["failed"]:
        return Failed(message=f"{counts['failed']} sub-group run(s) failed", data=counts)
    return counts


def _thread_future(future: PrefectFuture[Any]) -> concurrent.futures.Future[Any]:
    """Return the thread pool's future behind a task run's (the task runner is a thread pool)."""
    wrapped: concurrent.futures.Future[Any] = getattr(future, "wrapped_future")  # noqa: B009
    return wrapped


def _wait(future: PrefectFuture[Any]) -> bool:
    """Wait for a task run; False as soon as the command was asked to stop."""
    while not stop_requested():
        if _thread_future(future).done():
            return True
        future.wait(0.2)
    return _thread_future(future).done()


def _stopped_state(counts: dict[str, int]) -> State[Any]:
    """Return the flow run's end after SIGTERM or Ctrl-C: Cancelled, saying what was left."""
    signal_name = stop_signal().name if stop_signal() else "a signal"  # type: ignore[union-attr]
    return Cancelled(
        message=f"stopped by {signal_name}: {counts['completed']} run(s) completed, "
        f"{counts['cancelled']} left in flight or not started for the next flow run of the "
        "pipeline to adopt (their jobs keep running); `ccat-wm cancel RUN_ID` stops one"
    )


def _cancel_claimed_runs(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """On cancellation in Prefect: cancel the flow run's unfinished runs and their jobs.

    Runs where the flow run is cancelled (in the flow's process, or by the worker after it
    stopped the process). When neither can run it, the next trigger tick does the same.
    """
    del flow, state
    if stop_requested():  # this process stopped on a signal: its runs are left for adoption
        return
    cancel_claimed_runs(str(flow_run.id))


class StartedBy(enum.StrEnum):
    """Who started a pipeline flow run (the second word of its name)."""

    MANUAL = "manual"
    """A person: `ccat-wm run`, or a deployment run from the UI or `prefect deployment run`."""
    RETRY = "retry"
    """`ccat-wm retry`."""
    SCHEDULE = "schedule"
    """The cron schedule of a CRON pipeline's deployment."""
    TRIGGER = "trigger"
    """A trigger tick (`ccat-wm trigger` or a location's trigger deployment)."""


def pipeline_flow_run_name() -> str:
    """Name a pipeline flow run `<pipeline> <started_by> <UTC time> <id>` (distinct per run)."""
    parameters = flow_run.parameters
    started_by = parameters.get("started_by") or StartedBy.MANUAL
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{parameters['pipeline']} {StartedBy(started_by).value} {stamp} {flow_run.id[:6]}"


@flow(
    name="ccat-pipeline",
    flow_run_name=pipeline_flow_run_name,
    on_cancellation=[_cancel_claimed_runs],
)
def pipeline_flow(
    pipeline: str,
    sub_groups: list[str] | None = None,
    force: bool = False,
    manual: bool = False,
    started_by: StartedBy = StartedBy.MANUAL,
) -> State[Any] | dict[str, int]:
    """Run the pipeline's due sub-groups (`manual`: all ready ones; `force`: all of them).

    `started_by` only names the flow run.
    """
    del started_by
    reinstall()  # a foreground command's graceful stop, over the engine's SIGTERM handler
    claim_as = str(flow_run.id)
    # The claim is held while this process lives; a later flow run adopts its runs if it dies.
    with claimed_runs(claim_as):
        if flow_run.run_count > 1:  # Prefect's Retry of this flow run: retry what it failed
            retried = retry_failures_task(pipeline, claim_as)
            if not retried.created:
                return Completed(message="nothing to retry: no sub-group it failed is failed now")
            sub_groups, manual, force = retried.follow_keys, True, False
        wave = prepare_wave_task(pipeline, sub_groups, manual, force, claim_as)
        items = list(wave.items)
        run = WaveRun(
            pipeline, wave.location, claim_as, manual, force, wave.step_retries,
            load_settings().task_run_tags, wave.submit_ahead,
        )  # fmt: skip
        try:
            ensure_concurrency_limits(pipeline, wave.step_limits, claim_as)
            for step, count in Counter(i.step for i in items).items():
                limit = wave.step_limits[step]
                open_pool(claim_as, step, limit_name(pipeline, step), count, limit)
            counts = _run_wave(run, items)
        finally:
            close_pools(claim_as)
        failed_message = publish_artifacts(pipeline, claim_as, counts["not_run"])
    if stop_requested():
        return _stopped_state(counts)
    if counts["failed"]:
        message = failed_message or f"{counts['failed']} of {len(items)} sub-group run(s) failed"
        # An exception as the data: a worker's engine raises it (a dict cannot be raised).
        return Failed(message=message, data=SubGroupRunsFailedError(message))
    return counts


def _run_wave(wave: WaveRun, items: list[WaveItem]) -> dict[str, int]:
    """Run the items in this flow run, or as overlapping sub-flow runs if too many.

    The sub-flow runs (`<flow run name> part N`) appear under the pipeline's flow too;
    `flows.parts` says when each starts.
    """
    size = load_settings().max_task_runs - BOOKKEEPING_TASKS
    if len(items) <= size:
        return _run_items(wave, items)
    chunk_flow = pipeline_chunk.with_options(name=wave.pipeline, task_runner=_bounded_runner())
    name = flow_run.name

    def run_part(part: Part) -> dict[str, int]:
        state = chunk_flow.with_options(flow_run_name=f"{name} part {part.number}")(
            wave.pipeline, [_as_dict(i) for i in part.items], wave.claim_as, wave.manual,
            wave.force, wave.location, wave.retries, wave.submit_ahead, part.number,
            return_state=True,
        )  # fmt: skip
        counts = state.result(raise_on_failure=False)
        return counts if isinstance(counts, dict) else {"failed": len(part.items)}

    counts = _no_counts()
    for part_counts in run_parts(
        wave.claim_as,
        split_wave(items, size),
        run_part,
        lead=lead_for(size, load_settings().flow_workers),
    ):
        for key, value in part_counts.items():
            counts[key] = counts.get(key, 0) + value
    return counts


def _as_dict(item: WaveItem) -> dict[str, Any]:
    return {
        "step": item.step,
        "sub_group_key": item.sub_group_key,
        "run_id": item.run_id,
        "upstream": list(item.upstream),
    }


def flow_for(pipeline: str) -> Flow[..., Any]:
    """Return the pipeline's flow: `pipeline_flow` under the pipeline's name.

    Its task runner has as many threads as the settings give flow workers now.
    """
    return pipeline_flow.with_options(name=pipeline, task_runner=_bounded_runner())
