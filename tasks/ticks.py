"""What a trigger tick asks of the Prefect API.

It starts a pipeline's deployment, keeps the Runs view for the pipelines (idle and Late
ticks deleted), and stops the ops DB runs of flow runs cancelled in Prefect.

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
from typing import Any
from uuid import UUID

from prefect import get_run_logger
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

from tasks.claim import cancel_claimed_runs, unfinished_claims

STOPPED = (StateType.CANCELLED, StateType.CANCELLING)
WAITING = (StateType.SCHEDULED, StateType.PENDING)
IDLE_TAG = "ccat-idle"
"""Tag of a trigger flow run that found nothing to do."""
TRIGGER_TAG = "trigger"
"""Tag of every trigger deployment (and so of its flow runs)."""
CLEANUP_LIMIT = 200
"""Idle or Late trigger flow runs deleted per tick at most."""

LOG = logging.getLogger(__name__)


def pipeline_deployment(pipeline: str) -> str:
    """Return a pipeline's deployment name (`<pipeline>/<pipeline>`: flow and deployment)."""
    return f"{pipeline}/{pipeline}"


def _logger() -> Any:
    try:
        return get_run_logger()
    except Exception:  # called outside a flow or task run (tests of the helpers)
        return LOG


def stop_cancelled_flow_runs() -> list[int]:
    """Cancel the ops DB runs (and jobs) of pipeline flow runs cancelled in Prefect."""
    ids = []
    for claim in unfinished_claims():
        try:
            ids.append(UUID(claim))
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
    for claim in stopped:  # cancelled flow runs: a handful
        results = cancel_claimed_runs(claim)
        cancelled += [r.run_id for r in results]
        if results:
            _logger().info(
                "flow run %s was cancelled in Prefect: cancelled runs %s",
                claim, ", ".join(str(r.run_id) for r in results),
            )  # fmt: skip
    return cancelled


def start_deployment_run(pipeline: str) -> str | None:
    """Start a flow run of the pipeline's deployment and say how; None without a deployment.

    A flow run of the deployment that waits to start (due now) claims the waiting runs
    when it starts, so none is added then.
    """
    name = pipeline_deployment(pipeline)
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None
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
    run = run_deployment(
        name, parameters={"pipeline": pipeline, "manual": False, "started_by": "trigger"},
        timeout=0, as_subflow=False,
    )  # fmt: skip
    assert isinstance(run, FlowRun)  # called from sync code: not a coroutine
    return f"flow run of deployment {name} scheduled"


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
