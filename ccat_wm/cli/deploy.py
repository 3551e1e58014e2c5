"""`ccat-wm deploy`: pipelines into Prefect deployments, locations into work pools."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click
from sqlalchemy.orm import Session

from ccat_wm.cli.common import engine


@click.command()
@click.option(
    "--prefect-yaml",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("prefect.yaml"),
    show_default=True,
    help="Prefect project file whose ccat-wm deployments are rendered.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Show what would be created, changed and deleted; change nothing.",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
def deploy(prefect_yaml: Path, dry_run: bool, as_json: bool) -> None:
    """Sync the pipelines into prefect.yaml and the locations into Prefect work pools."""
    from deployments.sync import deploy as deploy_pipelines

    with Session(engine()) as session:
        result = deploy_pipelines(session, prefect_yaml, dry_run=dry_run)
    if as_json:
        payload = {
            "dry_run": dry_run,
            "prefect_yaml": str(result.prefect_yaml),
            "prefect_yaml_action": result.prefect_yaml_action,
            "deployments": result.deployments,
            "work_pools": [asdict(p) for p in result.pools],
            "crash_automation": result.crash_automation,
            "reconciled": asdict(result.reconciled) if result.reconciled else None,
        }
        click.echo(json.dumps(payload, indent=2))
        return
    would = "would be " if dry_run else ""
    for pool in result.pools:
        click.echo(f"work pool {pool.name} ({pool.type}): {would}{_past(pool.action, dry_run)}")
    if result.crash_automation == "removed":
        click.echo(
            f"heartbeat automation of earlier versions {would}removed "
            "(the trigger tick marks dead flow runs Crashed)"
        )
    if result.reconciled:
        done = result.reconciled
        for name in done.deleted_deployments:
            click.echo(f"deployment {name} {would}deleted (its pipeline is gone)")
        for label in done.deleted_schedules:
            click.echo(f"schedule {would}deleted: {label}")
        for label in done.paused:
            click.echo(f"schedule {would}paused: {label}")
        for label in done.resumed:
            click.echo(f"schedule {would}resumed: {label}")
    if dry_run:
        click.echo(
            f"{result.prefect_yaml}: {len(result.deployments)} deployment(s), file would be "
            f"{_past(result.prefect_yaml_action, True)}; dry run: nothing was changed"
        )
        return
    click.echo(
        f"{len(result.deployments)} deployment(s) rendered into {result.prefect_yaml}; "
        "register them with: prefect deploy --all"
    )


def _past(action: str, dry_run: bool) -> str:
    """`create` -> `created` for a dry run's sentence; a real run prints the action as is."""
    if not dry_run:
        return action
    return {"create": "created", "update": "updated"}.get(action, action)
