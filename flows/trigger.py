"""The trigger flow: one tick for a processing location's pipelines.

Its deployment (`trigger-<location>`, rendered by `ccat-wm deploy`) runs on a short
interval and on every `ccat.raw-data.registered` event. A tick:

1. stops the ops DB runs of pipeline flow runs that were cancelled in Prefect (from the
   UI, say), with their backend jobs, whatever state the flow's own process is in;
2. creates PENDING runs for the eligible gaps of the location's CONTINUOUS pipelines;
3. starts a flow run of every pipeline with runs waiting (new ones, or runs left by a
   flow run whose process died): through the pipeline's deployment when it exists (a
   worker of the location's pool picks it up), else in this process;
4. if a gap's cooldown ends before the next scheduled tick, waits for it and ticks
   again, so that a short cooldown is not lengthened by the interval.
"""

from __future__ import annotations

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
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from ccat_wm.execution.control import cancel_flow_run
from ccat_wm.execution.trigger import in_flight_owners, trigger_tick_now
from flows.pipeline import flow_for
from tasks.runs import executor

PIPELINE_FLOW = "ccat-pipeline"
"""Flow name of the pipeline deployments (`ccat-pipeline/<pipeline>`)."""
STOPPED = (StateType.CANCELLED, StateType.CANCELLING)
WAITING = (StateType.SCHEDULED, StateType.PENDING)

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
    name = f"{PIPELINE_FLOW}/{pipeline}"
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            deployment = None
        if deployment is not None:
            waiting = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[pipeline])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(WAITING)))
                ),
                limit=1,
            )
            if waiting:  # one not yet started will claim the waiting runs
                return f"flow run {waiting[0].name} already waiting"
    if deployment is not None:
        run = run_deployment(name, parameters={"pipeline": pipeline}, timeout=0, as_subflow=False)
        assert isinstance(run, FlowRun)  # called from sync code: not a coroutine
        return f"flow run {run.name} of deployment {name}"
    flow_for(pipeline)(pipeline=pipeline, return_state=True)
    return "ran in the trigger's process (no deployment)"


@flow(name="ccat-trigger", flow_run_name="trigger {location}")
def trigger_flow(location: str | None = None, interval_s: float = 60.0) -> dict[str, Any]:
    """One trigger tick for `location` (None: every location); see the module docstring.

    `interval_s` is the deployment's interval: a tick waits out a cooldown that ends
    sooner than that (0: never waits, as `ccat-wm trigger` uses it).
    """
    logger = _logger()
    started = time.monotonic()
    cancelled = stop_cancelled_flow_runs()
    created: dict[str, int] = {}
    launched: dict[str, str] = {}
    while True:
        now = dt.datetime.now(dt.UTC)
        result = trigger_tick_now(executor().engine, now, location=location)
        for name, count in result.created.items():
            created[name] = created.get(name, 0) + count
            logger.info("%s: %d new run(s)", name, count)
        for pipeline in result.to_start:
            launched[pipeline] = start_pipeline(pipeline)
            logger.info("%s: %s", pipeline, launched[pipeline])
        if result.next_eligible_at is None:
            break
        wait_s = (result.next_eligible_at - dt.datetime.now(dt.UTC)).total_seconds()
        if time.monotonic() - started + wait_s >= interval_s:
            break  # the next scheduled tick comes first
        time.sleep(max(wait_s, 0.0) + 0.5)
    return {"created": created, "started": launched, "cancelled": cancelled}
