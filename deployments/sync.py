"""`ccat-wm deploy`: the ops DB's processing locations and pipelines into Prefect.

Reads what is to be deployed (two set-based queries), syncs the work pools and their
priority queues through the Prefect API (and removes the heartbeat automation of
earlier versions: `deployments.automations`), removes what
`prefect deploy` would leave behind (deployments of removed pipelines, schedules that
disappeared) and renders `prefect.yaml` (written atomically; keys other than the
rendered deployments are kept). `prefect deploy --all` then registers exactly the
rendered deployments.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.errors import DeployError
from deployments.automations import remove_crash_automation
from deployments.reconcile import ReconcileResult, reconcile_deployments
from deployments.render import (
    PipelineDeploymentInfo,
    merge_prefect_yaml,
    render_deployments,
)
from deployments.work_pools import (
    PoolChange,
    PoolSpec,
    ProcessingLocation,
    pool_spec,
    sync_work_pools,
)

HEADER = (
    "# Prefect project file. `ccat-wm deploy` renders one deployment per pipeline of the\n"
    "# ops DB into `deployments` (entries tagged ccat-wm); edit pipelines in their YAML spec,\n"
    "# `ccat-wm apply` them and deploy again, not here. Then: prefect deploy --all\n"
)
DEFAULT_DOCUMENT: dict[str, Any] = {
    "name": "ccat-workflow-manager",
    "prefect-version": None,
    "build": None,
    "push": None,
    "pull": None,
    "deployments": [],
}


@dataclass(frozen=True, slots=True)
class DeployInputs:
    """Everything deploy renders, read from the ops DB."""

    locations: list[ProcessingLocation]
    pipelines: list[PipelineDeploymentInfo]


@dataclass(frozen=True, slots=True)
class DeployResult:
    """What `ccat-wm deploy` did."""

    prefect_yaml: Path
    deployments: list[str]
    pools: list[PoolChange]
    crash_automation: str = ""
    """`removed` when the heartbeat automation of earlier versions was (would be) deleted."""
    reconciled: ReconcileResult | None = None
    """Deployments and schedules removed or paused on the server."""
    prefect_yaml_action: str = ""
    """create, update or unchanged: what rendering did (would do) to the file."""


def load_deploy_inputs(session: Session) -> DeployInputs:
    """Read the active processing locations and every pipeline with its steps."""
    # long: two queries whose rows map one to one onto the records they fill
    locations = [
        ProcessingLocation(row.name, row.backend, row.runtime, Path(row.path), dict(row.settings))
        for row in session.execute(
            select(
                m.DataLocation.name,
                m.DataLocation.backend,
                m.DataLocation.runtime,
                m.DataLocation.path,
                m.DataLocation.settings,
            )
            .where(
                m.DataLocation.location_type == m.LocationType.PROCESSING,
                m.DataLocation.active,
            )
            .order_by(m.DataLocation.name)
        )
    ]
    steps = (
        select(
            m.ReductionStep.pipeline_id,
            func.array_agg(
                aggregate_order_by(m.ReductionStep.name, m.ReductionStep.step_order)
            ).label("steps"),
        )
        .group_by(m.ReductionStep.pipeline_id)
        .subquery()
    )
    rows = session.execute(
        select(
            m.Pipeline.name,
            m.DataLocation.name.label("location"),
            m.Pipeline.trigger_type,
            m.Pipeline.trigger_config,
            m.Pipeline.enabled,
            m.Pipeline.priority,
            m.DataGrouping.name.label("grouping"),
            steps.c.steps,
        )
        .join(m.Pipeline.processing_location)
        .join(m.DataGrouping, m.DataGrouping.id == m.Pipeline.data_grouping_id)
        .outerjoin(steps, steps.c.pipeline_id == m.Pipeline.id)
        .order_by(m.Pipeline.name)
    )
    pipelines = [
        PipelineDeploymentInfo(
            name=row.name,
            location=row.location,
            trigger_type=row.trigger_type,
            trigger_config=dict(row.trigger_config or {}),
            enabled=row.enabled,
            priority=row.priority,
            data_grouping=row.grouping,
            steps=tuple(row.steps or ()),
        )
        for row in rows
    ]
    return DeployInputs(locations, pipelines)


def pool_specs(inputs: DeployInputs) -> list[PoolSpec]:
    """Return the work pool of every processing location, with its pipelines' priorities."""
    return [
        pool_spec(loc, [p.priority for p in inputs.pipelines if p.location == loc.name])
        for loc in inputs.locations
    ]


def prefect_yaml_change(path: Path, deployments: list[dict[str, Any]]) -> str:
    """Whether rendering would create `path`, update its deployments, or leave them."""
    if not path.exists():
        return "create"
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise DeployError(f"{path}: expected a YAML mapping (a Prefect project file)")
    merged = merge_prefect_yaml(dict(loaded), deployments)
    return "unchanged" if merged == loaded else "update"


def write_prefect_yaml(path: Path, deployments: list[dict[str, Any]]) -> None:
    """Replace the rendered deployments of `path` (created if missing), atomically."""
    document = dict(DEFAULT_DOCUMENT)
    if path.exists():
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise DeployError(f"{path}: expected a YAML mapping (a Prefect project file)")
        document = loaded
    if document.get("prefect-version") is None:
        from importlib.metadata import version  # noqa: PLC0415

        document["prefect-version"] = version("prefect")
    text = HEADER + yaml.safe_dump(
        merge_prefect_yaml(document, deployments), sort_keys=False, width=100
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".prefect.yaml.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    Path(tmp).replace(path)


def deploy(
    session: Session, prefect_yaml: Path, *, sync_pools: bool = True, dry_run: bool = False
) -> DeployResult:
    """Render the pipelines into `prefect_yaml` and sync the locations' work pools.

    `dry_run`: read the server and the file, report what would be created, changed and
    deleted, and change nothing.
    """
    inputs = load_deploy_inputs(session)
    known = {loc.name for loc in inputs.locations}
    orphans = sorted(p.name for p in inputs.pipelines if p.location not in known)
    if orphans:
        raise DeployError(
            f"pipeline(s) {', '.join(orphans)} run at a processing location that is inactive; "
            "activate the location or move the pipelines first"
        )
    specs = pool_specs(inputs)  # validates every location before anything is written
    intervals = {
        loc.name: int(loc.settings["trigger_interval_s"])
        for loc in inputs.locations
        if loc.settings.get("trigger_interval_s")
    }
    deployments = render_deployments(inputs.pipelines, intervals)
    automation = ""
    reconciled = None
    try:
        pools = sync_work_pools(specs, dry_run=dry_run) if sync_pools else []
        if sync_pools:
            automation = remove_crash_automation(dry_run=dry_run)
            reconciled = reconcile_deployments(deployments, dry_run=dry_run)
    except httpx.HTTPError as exc:
        raise DeployError(
            f"the Prefect API refused or could not be reached ({type(exc).__name__}: {exc}); "
            "check PREFECT_API_URL and that the server runs"
        ) from None
    yaml_change = prefect_yaml_change(prefect_yaml, deployments)
    if not dry_run:
        write_prefect_yaml(prefect_yaml, deployments)
    return DeployResult(
        prefect_yaml, [d["name"] for d in deployments], pools, automation, reconciled,
        yaml_change,
    )  # fmt: skip
