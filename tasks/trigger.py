"""Prefect tasks of the trigger flow: one per chore of a tick.

Each is a bookkeeping task run of the tick's flow run, so that the Prefect UI shows
what a tick did step by step and where it failed. The ops DB is written in the tick's
own transaction (`trigger_tick`); the Prefect API is asked through `tasks.ticks` and
`tasks.liveness`.
"""

from __future__ import annotations

import datetime as dt

from prefect import task
from prefect.cache_policies import NO_CACHE

from ccat_wm.execution.trigger import TickResult, trigger_tick
from tasks.liveness import crash_silent_flow_runs
from tasks.runs import BOOKKEEPING, executor
from tasks.ticks import (
    delete_idle_and_late_ticks,
    mark_idle,
    start_deployment_run,
    stop_cancelled_flow_runs,
)

__all__ = [  # TickResult: the record the flow reads
    "TickResult",
    "crash_silent_task",
    "delete_ticks_task",
    "mark_idle_task",
    "start_deployment_task",
    "stop_cancelled_task",
    "tick_task",
]


@task(name=f"{BOOKKEEPING}crash-silent-flow-runs", cache_policy=NO_CACHE)
def crash_silent_task(liveness_s: float) -> list[str]:
    """Mark Crashed the Running flow runs whose heartbeats stopped; return their ids."""
    return crash_silent_flow_runs(missed_s=liveness_s)


@task(name=f"{BOOKKEEPING}delete-idle-ticks", cache_policy=NO_CACHE)
def delete_ticks_task(interval_s: float) -> int:
    """Delete earlier idle ticks and Late ones that never started; return how many."""
    return delete_idle_and_late_ticks(interval_s)


@task(name=f"{BOOKKEEPING}stop-cancelled-flow-runs", cache_policy=NO_CACHE)
def stop_cancelled_task() -> list[int]:
    """Cancel the runs (and jobs) of pipeline flow runs cancelled in Prefect; return run ids."""
    return stop_cancelled_flow_runs()


@task(name=f"{BOOKKEEPING}tick", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def tick_task(location: str | None, include_cron: bool) -> TickResult:
    """Create the runs that are due now, in one committed transaction; say what to start."""
    with executor().session() as session, session.begin():
        return trigger_tick(
            session, dt.datetime.now(dt.UTC), location=location, include_cron=include_cron
        )


@task(name=f"{BOOKKEEPING}start-deployment-run", cache_policy=NO_CACHE)
def start_deployment_task(pipeline: str) -> str | None:
    """Start a flow run of the pipeline's deployment; None when it has no deployment."""
    return start_deployment_run(pipeline)


@task(name=f"{BOOKKEEPING}mark-idle", cache_policy=NO_CACHE)
def mark_idle_task(location: str | None) -> None:
    """Name and tag this tick idle (the next tick deletes it)."""
    mark_idle(location)
