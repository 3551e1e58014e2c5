"""Pipelines of the ops DB as `prefect.yaml` deployment entries (pure functions).

One deployment per pipeline, named after it, on its processing location's work pool.
Every deployment runs the one pipeline flow (`ccat-pipeline`, entrypoint
`flows/pipeline.py:pipeline_flow`) with the pipeline's name as parameter; its flow runs
are named after the pipeline. CRON pipelines get their cron schedule with its
timezone; MANUAL and CONTINUOUS pipelines have none (CONTINUOUS ones are started by
their location's trigger deployment). A disabled pipeline keeps its deployment with the
schedule paused (`active: false`), so that enabling it again needs no redeploy of
anything else. Priority selects the work queue of the pool (`priority-<n>`): the sync
gives queues of more important pipelines the better Prefect queue priority.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

PIPELINE_ENTRYPOINT = "flows/pipeline.py:pipeline_flow"
MANAGED_TAG = "ccat-wm"
"""Tag on every deployment `ccat-wm deploy` renders (how the sync recognises its own)."""


@dataclass(frozen=True, slots=True)
class PipelineDeploymentInfo:
    """What a pipeline's deployment is made from (plain data read from the ops DB)."""

    name: str
    location: str
    trigger_type: str
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
            f"CCAT pipeline {pipeline.name} ({pipeline.trigger_type.lower()} trigger): "
            f"steps {', '.join(pipeline.steps) or '-'} over data grouping "
            f"{pipeline.data_grouping or '-'}"
        ),
        "entrypoint": PIPELINE_ENTRYPOINT,
        "parameters": {"pipeline": pipeline.name},
        "tags": [MANAGED_TAG, f"pipeline:{pipeline.name}", f"location:{pipeline.location}"],
        "work_pool": {
            "name": pipeline.location,
            "work_queue_name": queue_name(pipeline.priority),
            "job_variables": {},
        },
        "schedules": [],
    }
    if pipeline.trigger_type == "CRON":
        entry["schedules"] = [
            {
                "cron": pipeline.trigger_config["cron"],
                "timezone": pipeline.trigger_config.get("timezone", "UTC"),
                "active": pipeline.enabled,
            }
        ]
    return entry


def render_deployments(pipelines: Iterable[PipelineDeploymentInfo]) -> list[dict[str, Any]]:
    """Return the deployment entries of all pipelines, sorted by name (stable YAML)."""
    return [deployment_entry(p) for p in sorted(pipelines, key=lambda p: p.name)]


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
