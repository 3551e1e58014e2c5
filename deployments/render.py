"""Pipelines of the ops DB as `prefect.yaml` deployment entries (pure functions).

One deployment per pipeline, named after it, on its processing location's work pool.
Its entrypoint `flows/pipelines.py:<pipeline>` is the pipeline flow under the
pipeline's name, so every flow run of a pipeline (deployment, schedule, trigger,
`ccat-wm run`) appears under one flow named after the pipeline: the deployment is
`<pipeline>/<pipeline>`. A run started by a person (the UI's Run button, `prefect
deployment run`) does every ready gap now (`manual: true` is the deployment's default
parameter); CRON pipelines get their cron schedule with its timezone, whose own runs
honour the cron tick (`manual: false` as schedule parameters). MANUAL and CONTINUOUS
pipelines have no schedule (CONTINUOUS ones are started by their location's trigger
deployment). A disabled pipeline keeps its deployment with the schedule paused
(`active: false`), so that enabling it again needs no redeploy of anything else.
Priority selects the work queue of the pool (`priority-<n>`): the sync gives queues of
more important pipelines the better Prefect queue priority.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ccat_ops_db.models import TriggerType
from ccat_wm.settings import DEFAULT_TRIGGER_INTERVAL_S, RAW_DATA_EVENT

PIPELINE_ENTRYPOINT = "flows/pipelines.py:{pipeline}"
TRIGGER_ENTRYPOINT = "flows/trigger.py:trigger_flow"
TRIGGER_QUEUE = "trigger"
"""Work queue of the trigger deployments: Prefect priority 1 in every pool."""
MANAGED_TAG = "ccat-wm"
"""Tag on every deployment `ccat-wm deploy` renders (how the sync recognises its own)."""


@dataclass(frozen=True, slots=True)
class PipelineDeploymentInfo:
    """What a pipeline's deployment is made from (plain data read from the ops DB)."""

    name: str
    location: str
    trigger_type: TriggerType
    trigger_config: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True
    priority: int = 0
    data_grouping: str = ""
    steps: tuple[str, ...] = ()


def queue_name(priority: int) -> str:
    """Return the work queue of a priority (`priority-10`; `priority-m5` for -5)."""
    return f"priority-{priority}" if priority >= 0 else f"priority-m{-priority}"


def deployment_entry(pipeline: PipelineDeploymentInfo) -> dict[str, Any]:
    """Return the `prefect.yaml` deployment of one pipeline."""
    entry: dict[str, Any] = {
        "name": pipeline.name,
        "description": (
            f"CCAT pipeline {pipeline.name} ({pipeline.trigger_type.value.lower()} trigger): "
            f"steps {', '.join(pipeline.steps) or '-'} over data grouping "
            f"{pipeline.data_grouping or '-'}"
        ),
        "entrypoint": PIPELINE_ENTRYPOINT.format(pipeline=pipeline.name),
        # A person's run (UI, `prefect deployment run`) does the ready work now, whatever
        # the trigger type: ready gaps are due at once (docs/concepts.md 3.2).
        "parameters": {"pipeline": pipeline.name, "manual": True, "started_by": "manual"},
        "tags": [MANAGED_TAG, f"pipeline:{pipeline.name}", f"location:{pipeline.location}"],
        "work_pool": {
            "name": pipeline.location,
            "work_queue_name": queue_name(pipeline.priority),
            "job_variables": {},
        },
        "schedules": [],
    }
    if pipeline.trigger_type is TriggerType.CRON:
        entry["schedules"] = [
            {
                "cron": pipeline.trigger_config["cron"],
                "timezone": pipeline.trigger_config.get("timezone", "UTC"),
                "active": pipeline.enabled,
                # The schedule's own runs honour the cron tick.
                "parameters": {"manual": False, "started_by": "schedule"},
            }
        ]
    return entry


def trigger_entry(location: str, interval_s: int = DEFAULT_TRIGGER_INTERVAL_S) -> dict[str, Any]:
    """Return the trigger deployment of a processing location.

    It ticks on every raw-data event (which starts the CONTINUOUS work) and every
    `interval_s` as a safety net; ticks queue behind a running one (a tick may wait out a
    short cooldown), never run side by side. Ticks are tagged `trigger`: the trigger flow
    deletes its idle and never-started (Late) ticks, so they do not bury the pipelines'
    runs in the UI.
    """
    parameters = {"location": location, "interval_s": interval_s}
    return {
        "name": f"trigger-{location}",
        "description": (
            f"Trigger tick of the pipelines at {location}: every {interval_s} s "
            f"and on every {RAW_DATA_EVENT} event"
        ),
        "entrypoint": TRIGGER_ENTRYPOINT,
        "parameters": parameters,
        "tags": [MANAGED_TAG, "trigger", f"location:{location}"],
        "work_pool": {"name": location, "work_queue_name": TRIGGER_QUEUE, "job_variables": {}},
        "concurrency_limit": {"limit": 1, "collision_strategy": "ENQUEUE"},
        "schedules": [{"interval": interval_s, "active": True}],
        "triggers": [
            {
                "type": "event",
                "enabled": True,
                "match": {"prefect.resource.id": "ccat.raw-data.*"},
                "expect": [RAW_DATA_EVENT],
                "parameters": dict(parameters),
            }
        ],
    }


def render_deployments(
    pipelines: Iterable[PipelineDeploymentInfo],
    trigger_intervals: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Return the deployments of all pipelines (by name), then the trigger deployments.

    Every location with an enabled pipeline gets a trigger deployment: it starts the
    CONTINUOUS pipelines, and for every pipeline it stops the runs of flow runs cancelled
    in Prefect and restarts those of flow runs that died. `trigger_intervals` gives a
    location's interval in seconds (the location setting `trigger_interval_s`; default
    `DEFAULT_TRIGGER_INTERVAL_S`, 600 s).
    """
    pipelines = sorted(pipelines, key=lambda p: p.name)
    intervals = trigger_intervals or {}
    continuous = sorted({p.location for p in pipelines if p.enabled})
    return [
        *(deployment_entry(p) for p in pipelines),
        *(trigger_entry(loc, intervals.get(loc, DEFAULT_TRIGGER_INTERVAL_S)) for loc in continuous),
    ]


def merge_prefect_yaml(
    document: Mapping[str, Any], deployments: list[dict[str, Any]]
) -> dict[str, Any]:
    """Return `document` with its rendered deployments replaced by `deployments`.

    Deployments a person added by hand (without the `ccat-wm` tag) are kept, after ours.
    """
    kept = [
        d for d in document.get("deployments") or [] if MANAGED_TAG not in (d.get("tags") or [])
    ]
    return {**document, "deployments": [*deployments, *kept]}
