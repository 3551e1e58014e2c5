"""The trigger flow: one tick for a processing location's pipelines.

Its deployment (`trigger-<location>`, rendered by `ccat-wm deploy`) runs on every
`ccat.raw-data.registered` event, which starts the CONTINUOUS work, and on a safety-net
interval (`trigger_interval_s`, default 10 minutes). A tick:

1. marks Crashed the flow runs whose heartbeats stopped (`tasks.liveness`), and stops
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

Ticks keep the Runs view for the pipelines (`tasks.ticks`): a tick that found nothing to
do is named `trigger <location>: idle`, and the next tick deletes it; scheduled ticks
that never started (Late) are deleted too. Each chore is a task (`tasks.trigger`).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger

from ccat_wm.settings import DEFAULT_TRIGGER_INTERVAL_S, load_settings
from flows.pipeline import StartedBy, flow_for
from tasks.artifacts import publish_overview
from tasks.trigger import (
    TickResult,
    crash_silent_task,
    delete_ticks_task,
    mark_idle_task,
    start_deployment_task,
    stop_cancelled_task,
    tick_task,
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
    started = time.monotonic()
    crashed = crash_silent_task(load_settings().liveness_s)
    deleted = delete_ticks_task(interval_s)
    cancelled = stop_cancelled_task()
    ticks = _Ticks()
    while True:
        result = tick_task(location, include_cron)
        ticks.add(result)
        if result.next_eligible_at is None:
            break
        wait_s = (result.next_eligible_at - dt.datetime.now(dt.UTC)).total_seconds()
        if time.monotonic() - started + wait_s >= interval_s:
            break  # the next scheduled tick comes first
        time.sleep(max(wait_s, 0.0) + 0.5)
    if not (ticks.created or ticks.launched or cancelled or crashed):
        mark_idle_task(location)
    for pipeline in sorted({*ticks.created, *ticks.launched}):  # the pipelines it touched
        publish_overview(pipeline)
    return {
        "created": ticks.created,
        "started": ticks.launched,
        "cancelled": cancelled,
        "crashed": crashed,
        "deleted_ticks": deleted,
        "errors": ticks.errors,
    }


@dataclass
class _Ticks:
    """What the ticks of one trigger flow run did, summed; each tick's news is logged."""

    created: dict[str, int] = field(default_factory=dict)
    launched: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def add(self, result: TickResult) -> None:
        """Count a tick's new runs and errors, and start the pipelines it asks for."""
        logger = get_run_logger()
        for name, count in result.created.items():
            self.created[name] = self.created.get(name, 0) + count
            logger.info("%s: %d new run(s)", name, count)
        for name, why in result.errors.items():
            if self.errors.get(name) != why:
                logger.error("%s: not evaluated, the other pipelines were: %s", name, why)
            self.errors[name] = why
        for pipeline in result.to_start:
            for claim in result.dead_claims.get(pipeline, []):
                logger.warning(
                    "%s: flow run %s holds runs but its process is gone; a new flow run "
                    "adopts them", pipeline, claim,
                )  # fmt: skip
            self.launched[pipeline] = _start(pipeline)
            logger.info("%s: %s", pipeline, self.launched[pipeline])


def _start(pipeline: str) -> str:
    """Start a flow run of the pipeline: its deployment's if any, else here; say how."""
    how = start_deployment_task(pipeline)
    if how is not None:
        return how
    flow_for(pipeline)(pipeline=pipeline, started_by=StartedBy.TRIGGER, return_state=True)
    return "ran in the trigger's process (no deployment)"
