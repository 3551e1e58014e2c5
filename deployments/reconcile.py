"""Keep the server's deployments what `prefect.yaml` says: what `prefect deploy` does not.

`prefect deploy --all` creates and updates the deployments of the file, but leaves a
deployment whose entry disappeared, and a schedule that disappeared from an entry,
on the server. `reconcile_deployments` therefore deletes, among the deployments tagged
`ccat-wm`, those not rendered any more (removed pipelines, a location's trigger), with
the automations of their event triggers (Prefect keeps those), deletes every server
schedule an entry no longer has (a changed cron, a pipeline turned MANUAL), and sets
`active` of the others as rendered (disabled pipelines: paused). Deployments without
the tag are never touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deployments.render import MANAGED_TAG


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """What the reconciliation changed on the server."""

    deleted_deployments: list[str] = field(default_factory=list)
    deleted_schedules: list[str] = field(default_factory=list)
    """`<deployment>: <schedule>` of each deleted schedule."""
    paused: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)


def schedule_key(schedule: Mapping[str, Any] | Any) -> tuple[Any, ...]:
    """Identity of a schedule, from a rendered entry (mapping) or a server schedule object."""
    if isinstance(schedule, Mapping):
        if "cron" in schedule:
            return ("cron", schedule["cron"], schedule.get("timezone") or "UTC")
        return ("interval", float(schedule["interval"]))
    if getattr(schedule, "cron", None):
        return ("cron", schedule.cron, schedule.timezone or "UTC")
    interval = getattr(schedule, "interval", None)
    if interval is not None:
        return ("interval", float(interval.total_seconds()))
    return ("other", repr(schedule))


def reconcile_deployments(
    rendered: Sequence[Mapping[str, Any]], *, dry_run: bool = False
) -> ReconcileResult:
    """Make the server's ccat-wm deployments and schedules match the rendered entries.

    `dry_run`: only read, and report what would be deleted, paused and resumed.
    """
    from prefect.client.orchestration import get_client  # noqa: PLC0415 - heavy
    from prefect.client.schemas.filters import (  # noqa: PLC0415
        DeploymentFilter,
        DeploymentFilterTags,
    )

    wanted = {entry["name"]: entry for entry in rendered}
    result = ReconcileResult()
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(
            deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[MANAGED_TAG]))
        )
        for deployment in deployments:
            entry = wanted.get(deployment.name)
            if entry is None:
                if not dry_run:
                    # Its event triggers are automations that outlive it: left behind,
                    # every raw-data event would fire one at a deployment that is gone.
                    client.delete_resource_owned_automations(f"prefect.deployment.{deployment.id}")
                    client.delete_deployment(deployment.id)
                result.deleted_deployments.append(deployment.name)
                continue
            active = {schedule_key(s): bool(s.get("active", True)) for s in entry["schedules"]}
            for schedule in client.read_deployment_schedules(deployment.id):
                key = schedule_key(schedule.schedule)
                label = f"{deployment.name}: {' '.join(str(k) for k in key)}"
                if key not in active:
                    if not dry_run:
                        client.delete_deployment_schedule(deployment.id, schedule.id)
                    result.deleted_schedules.append(label)
                elif schedule.active != active[key]:
                    if not dry_run:
                        client.update_deployment_schedule(
                            deployment.id, schedule.id, active=active[key]
                        )
                    (result.resumed if active[key] else result.paused).append(label)
    return result
