"""The pipeline flow: one flow run executes a wave of a pipeline's sub-group runs.

A pipeline compiles into this flow under the pipeline's name (`flow_for`). Its
parameters are plain values, so the same flow serves CONTINUOUS, CRON and MANUAL runs.
Task runs are named `<step>[<sub_group_key>]`; a follow-up waits (with `allow_failure`)
only for the upstream runs inside its sub-group. Parallelism is bounded by the thread
pool (`CCAT_WM_FLOW_WORKERS`) and per step by global concurrency limits. A wave larger
than `CCAT_WM_MAX_TASK_RUNS` (at most 1,000) runs as consecutive sub-flow runs of that
size, because one Prefect server does not reliably record more task runs per flow run.
A flow run in which any sub-group run failed ends Failed; the others still run.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from prefect import Flow, flow
from prefect.client.schemas.objects import FlowRun, State
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import allow_failure

from ccat_wm.execution.control import cancel_flow_run
from ccat_wm.execution.ownership import hold_ownership
from ccat_wm.execution.waves import WaveItem
from ccat_wm.settings import load_settings
from tasks.runs import (
    ensure_concurrency_limits,
    executor,
    limit_name,
    prepare_wave_task,
    publish_artifacts,
    run_sub_group,
)
from tasks.slots import close_pools, open_pool

BOOKKEEPING_TASKS = 3
"""Task runs of the parent flow besides the sub-group runs (prepare, limits, artifacts)."""
_SETTINGS = load_settings()


def _bounded_runner() -> Any:
    """Return a thread pool of `CCAT_WM_FLOW_WORKERS` threads (Prefect's default is unbounded)."""
    return ThreadPoolTaskRunner(max_workers=_SETTINGS.flow_workers)


def _run_items(
    pipeline: str, items: list[WaveItem], claim_as: str, manual: bool, force: bool
) -> dict[str, int]:
    """Submit the items in order (upstream first) and count how their task runs ended."""
    futures: list[PrefectFuture[Any]] = []
    for item in items:
        waits = [allow_failure(futures[i]) for i in item.upstream if i < len(futures)]
        futures.append(
            run_sub_group.submit(  # type: ignore[call-overload]
                pipeline,
                item.step,
                item.sub_group_key,
                item.run_id,
                claim_as=claim_as,
                manual=manual,
                force=force,
                wait_for=waits,
            )
        )
    counts = {"completed": 0, "failed": 0, "cancelled": 0}
    for future in futures:
        future.wait()
        state = future.state
        if state.is_failed() or state.is_crashed():
            counts["failed"] += 1
        elif state.is_cancelled():
            counts["cancelled"] += 1
        else:
            counts["completed"] += 1
    return counts


@flow(
    name="ccat-pipeline-chunk",
    task_runner=_bounded_runner(),
)
def pipeline_chunk(
    pipeline: str, items: list[dict[str, Any]], claim_as: str, manual: bool, force: bool
) -> State[Any] | dict[str, int]:
    """Run one chunk of a large wave as its own flow run (items after earlier chunks)."""
    wave_items = [WaveItem(**i) for i in items]
    counts = _run_items(pipeline, wave_items, claim_as, manual, force)
    if counts["failed"]:
        return Failed(message=f"{counts['failed']} sub-group run(s) failed", data=counts)
    return counts


def _chunks(items: list[WaveItem], size: int) -> list[list[WaveItem]]:
    """Split in order; upstream indices are remapped into the chunk (earlier chunks are done)."""
    out = []
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        out.append(
            [
                WaveItem(
                    i.step,
                    i.sub_group_key,
                    i.run_id,
                    tuple(u - start for u in i.upstream if u >= start),
                )
                for i in chunk
            ]
        )
    return out


def _cancel_owned_runs(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """On cancellation in Prefect: cancel the flow run's unfinished runs and their jobs.

    Runs where the flow run is cancelled (in the flow's process, or by the worker after it
    stopped the process). When neither can run it, the next trigger tick does the same.
    """
    del flow, state
    cancel_flow_run(executor().engine, str(flow_run.id))


@flow(
    name="ccat-pipeline",
    task_runner=_bounded_runner(),
    flow_run_name="{pipeline}",
    on_cancellation=[_cancel_owned_runs],
)
def pipeline_flow(
    pipeline: str,
    sub_groups: list[str] | None = None,
    force: bool = False,
    manual: bool = False,
) -> State[Any] | dict[str, int]:
    """Run the pipeline's due sub-groups (`manual`: all ready ones; `force`: all of them)."""
    claim_as = str(flow_run.id)
    # Owned while this process lives; a later flow run adopts the runs if it dies.
    with hold_ownership(executor().engine, claim_as):
        wave = prepare_wave_task(pipeline, sub_groups, manual, force, claim_as)
        ensure_concurrency_limits(pipeline, wave.step_limits)
        items = list(wave.items)
        for step, count in Counter(i.step for i in items).items():
            open_pool(claim_as, step, limit_name(pipeline, step), count, wave.step_limits[step])
        try:
            counts = _run_wave(pipeline, items, claim_as, manual, force)
        finally:
            close_pools(claim_as)
        publish_artifacts(pipeline, claim_as)
    if counts["failed"]:
        return Failed(
            message=f"{counts['failed']} of {len(items)} sub-group run(s) failed", data=counts
        )
    return counts


def _run_wave(
    pipeline: str, items: list[WaveItem], claim_as: str, manual: bool, force: bool
) -> dict[str, int]:
    """Run the items in this flow run, or as consecutive sub-flow runs if too many."""
    size = _SETTINGS.max_task_runs - BOOKKEEPING_TASKS
    counts = {"completed": 0, "failed": 0, "cancelled": 0}
    if len(items) <= size:
        counts = _run_items(pipeline, items, claim_as, manual, force)
    else:
        for number, chunk in enumerate(_chunks(items, size), start=1):
            state = pipeline_chunk.with_options(flow_run_name=f"{pipeline} part {number}")(
                pipeline, [_as_dict(i) for i in chunk], claim_as, manual, force,
                return_state=True,
            )  # fmt: skip
            part = state.result(raise_on_failure=False)
            part = part if isinstance(part, dict) else {"failed": len(chunk)}
            for name, value in part.items():
                counts[name] = counts.get(name, 0) + value
    return counts


def _as_dict(item: WaveItem) -> dict[str, Any]:
    return {
        "step": item.step,
        "sub_group_key": item.sub_group_key,
        "run_id": item.run_id,
        "upstream": list(item.upstream),
    }


def flow_for(pipeline: str) -> Flow[..., Any]:
    """Return the pipeline's flow: `pipeline_flow` under the pipeline's name."""
    return pipeline_flow.with_options(name=pipeline)
