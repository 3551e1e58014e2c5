"""The trigger flow: one tick for a processing location's pipelines.

Its deployment (`trigger-<location>`, rendered by `ccat-wm deploy`) runs on every
`ccat.raw-data.registered` event, which starts the CONTINUOUS work, and on a safety-net
interval (`trigger_interval_s`, default 10 minutes). A tick:

1. marks Crashed the flow runs whose heartbeats stopped (`flows.liveness`), and stops
   the ops DB runs of pipeline flow runs that were cancelled in Prefect (from the UI,
   say), with their backend jobs, whatever state the flow's own process is in;
2. creates PENDING runs for the eligible gaps of the location's CONTINUOUS pipelines
   (and of its CRON pipelines whose cron tick is due, for `ccat-wm trigger`, which a
   site may run from the system's cron instead of a Prefect server);
3. starts a flow run of every pipeline with runs waiting (new ones, or runs left by a
   flow run whose process died): through the pipeline's deployment when it exists (a
   worker of the location's pool picks it up), else in this process;
4. if a gap's cooldown ends before the next scheduled tick, waits for it and ticks
   again, so that a short cooldown is not lengthened by the interval.

Ticks keep the Runs view for the pipelines: a tick that found nothing to do is named
`trigger <location>: idle` and tagged `ccat-idle`, and the next tick deletes such idle
ticks (so at most the latest one is listed); scheduled ticks that never started (Late:
a location without a worker) are deleted by any later tick, since one tick does the
work of all of them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterId,
    FlowRunFilterNextScheduledStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run as prefect_flow_run

from ccat_wm.execution.control import cancel_flow_run
from ccat_wm.execution.trigger import in_flight_owners, trigger_tick_now
from ccat_wm.settings import DEFAULT_TRIGGER_INTERVAL_S, load_settings
from flows.liveness import crash_silent_flow_runs
from flows.pipeline import flow_for
from tasks.artifacts import publish_overview
from tasks.runs import executor

STOPPED = (StateType.CANCELLED, StateType.CANCELLING)
WAITING = (StateType.SCHEDULED, StateType.PENDING)
IDLE_TAG = "ccat-idle"
"""Tag of a trigger flow run that found nothing to do."""
TRIGGER_TAG = "trigger"
"""Tag of every trigger deployment (and so of its flow runs)."""
CLEANUP_LIMIT = 200
"""Idle or Late trigger flow runs deleted per tick at most."""


def pipeline_deployment(pipeline: str) -> str:
    """Return a pipeline's deployment name (`<pipeline>/<pipeline>`: flow and deployment)."""
    return f"{pipeline}/{pipeline}"


LOG = logging.getLogger(__name__)


def _logger() -> Any:
    try:
        return get_run_logger()
    except Exception:  # called outside a flow run (tests of the helpers)
        return LOG


def stop_cancelled_flow_runs() -> list[int]:
    """Cancel the ops DB runs (and jobs) of pipeline flow runs cancelled in Prefect."""
    owners = in_flight_owners(executor().engine)
    ids = []
    for owner in owners:
        try:
            ids.append(UUID(owner))
        except ValueError:
            continue  # a claim that is not a Prefect flow run id (tests, tools)
    if not ids:
        return []
    with get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids))
        )
    stopped = [str(r.id) for r in flow_runs if r.state is not None and r.state.type in STOPPED]
    cancelled: list[int] = []
    for owner in stopped:  # cancelled flow runs: a handful
        results = cancel_flow_run(executor().engine, owner)
        cancelled += [r.run_id for r in results]
        if results:
            _logger().info(
                "flow run %s was cancelled in Prefect: cancelled runs %s",
                owner, ", ".join(str(r.run_id) for r in results),
            )  # fmt: skip
    return cancelled


def start_pipeline(pipeline: str) -> str:
    """Start a flow run of the pipeline: its deployment's if any, else here; return how."""
    name = pipeline_deployment(pipeline)
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            deployment = None
        if deployment is not None:
            waiting = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[pipeline])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(WAITING))),
                    # due now: a CRON schedule's future runs do not count
                    expected_start_time=FlowRunFilterExpectedStartTime(
                        before_=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
                    ),
                ),
                limit=1,
            )
            if waiting:  # one not yet started will claim the waiting runs
                return f"flow run {waiting[0].name} already waiting"
    if deployment is not None:
        run = run_deployment(
            name, parameters={"pipeline": pipeline, "manual": False, "started_by": "trigger"},
            timeout=0, as_subflow=False,
        )  # fmt: skip
        assert isinstance(run, FlowRun)  # called from sync code: not a coroutine
        return f"flow run of deployment {name} scheduled"
    flow_for(pipeline)(pipeline=pipeline, started_by="trigger", return_state=True)
    return "ran in the trigger's process (no deployment)"


def delete_idle_and_late_ticks(interval_s: float, now: dt.datetime | None = None) -> int:
    """Delete earlier idle trigger flow runs and scheduled ticks that never started.

    A tick is Late when no worker took it one interval after it was due; the tick that
    runs now does its work, so it is deleted rather than left to pile up.
    """
    now = now or dt.datetime.now(dt.UTC)
    current = prefect_flow_run.id
    late_before = now - dt.timedelta(seconds=max(interval_s, 60.0))
    with get_client(sync_client=True) as client:
        idle = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[IDLE_TAG]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])),
            ),
            limit=CLEANUP_LIMIT,
        )
        late = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[TRIGGER_TAG]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(before_=late_before),
            ),
            limit=CLEANUP_LIMIT,
        )
        doomed = {r.id for r in [*idle, *late] if str(r.id) != current}
        for flow_run_id in doomed:
            with contextlib.suppress(ObjectNotFound):  # another tick was quicker
                client.delete_flow_run(flow_run_id)
    return len(doomed)


def mark_idle(location: str | None) -> None:
    """Name and tag this tick as one that found nothing to do (the next tick deletes it)."""
    current = prefect_flow_run.id
    if not current:
        return
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(current))
        client.update_flow_run(
            run.id,
            name=f"trigger {location or 'all locations'}: idle",
            tags=sorted({*(run.tags or []), IDLE_TAG}),
        )


@flow(name="ccat-trigger", flow_run_name="trigger {location}")
def trigger_flow(
    location: str | None = None,
    interval_s: float = DEFAULT_TRIGGER_INTERVAL_S,
    include_cron: bool = False,
) -> dict[str, Any]:
    """One trigger tick for `location` (None: every location); see the module docstring.

    `interval_s` is the deployment's interval: a tick waits out a cooldown that ends
    sooner than that (0: never waits, as `ccat-wm trigger` uses it). `include_cron`
    also starts the CRON pipelines whose cron tick is due (`ccat-wm trigger` does; a
    Prefect server's schedules do it otherwise).
    """
    logger = _logger()
    started = time.monotonic()
    crashed = crash_silent_flow_runs(missed_s=load_settings().liveness_s)
    deleted = delete_idle_and_late_ticks(interval_s)
    cancelled = stop_cancelled_flow_runs()
    created: dict[str, int] = {}
    launched: dict[str, str] = {}
    errors: dict[str, str] = {}
    while True:
        now = dt.datetime.now(dt.UTC)
        result = trigger_tick_now(
            executor().engine, now, location=location, include_cron=include_cron
        )
        for name, count in result.created.items():
            created[name] = created.get(name, 0) + count
            logger.info("%s: %d new run(s)", name, count)
        for name, why in result.errors.items():
            if errors.get(name) != why:
                logger.error("%s: not evaluated, the other pipelines were: %s", name, why)
            errors[name] = why
        for pipeline in result.to_start:
            for owner in result.dead_owners.get(pipeline, []):
                logger.warning(
                    "%s: flow run %s holds runs but its process is gone; a new flow run "
                    "adopts them", pipeline, owner,
                )  # fmt: skip
            launched[pipeline] = start_pipeline(pipeline)
            logger.info("%s: %s", pipeline, launched[pipeline])
        if result.next_eligible_at is None:
            break
        wait_s = (result.next_eligible_at - dt.datetime.now(dt.UTC)).total_seconds()
        if time.monotonic() - started + wait_s >= interval_s:
            break  # the next scheduled tick comes first
        time.sleep(max(wait_s, 0.0) + 0.5)
    if not (created or launched or cancelled or crashed):
        mark_idle(location)
    for pipeline in sorted({*created, *launched}):  # the pipelines this tick touched
        publish_overview(pipeline)
    return {
        "created": created,
        "started": launched,
        "cancelled": cancelled,
        "crashed": crashed,
        "deleted_ticks": deleted,
        "errors": errors,
    }
