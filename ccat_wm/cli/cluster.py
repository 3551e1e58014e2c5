"""Commands about the cluster's resources and disk: `resources` and `gc`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from sqlalchemy.orm import Session

from ccat_wm.cli import complete
from ccat_wm.cli.common import engine
from ccat_wm.cli.render import render_gc_table, render_resources_table
from ccat_wm.execution.retention import collect_garbage
from ccat_wm.execution.usage import DEFAULT_HEADROOM, step_usage


@click.command()
@click.argument("pipeline", required=False, shell_complete=complete.pipelines)
@click.option("--step", default=None, help="Only this step.", shell_complete=complete.steps)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also draw requested against used per step into this PNG file.",
)
@click.option(
    "--headroom",
    type=click.FloatRange(min=1.0),
    default=DEFAULT_HEADROOM,
    show_default=True,
    help="Suggested request = 95th percentile of use x this.",
)
def resources(
    pipeline: str | None, step: str | None, as_json: bool, plot_path: Path | None, headroom: float
) -> None:
    """Per step: requested vs used (median, p95), CPU efficiency, a suggestion, badput."""
    with Session(engine()) as session:
        report = step_usage(session, pipeline, step, headroom=headroom)
    if plot_path is not None:
        from ccat_wm.execution.usage_plot import plot_usage

        plot_usage(report, plot_path)
    if as_json:
        click.echo(json.dumps([u.as_dict() for u in report], indent=2))
    else:
        click.echo(render_resources_table(report))
    if plot_path is not None:
        click.echo(f"plot written to {plot_path}", err=True)


@click.command()
@click.option(
    "--location",
    default=None,
    help="Only this processing location.",
    shell_complete=complete.locations,
)
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def gc(location: str | None, dry_run: bool, as_json: bool) -> None:
    """Apply the retention policy: staged copies, COMPLETED workspaces, old failed runs."""
    report = collect_garbage(engine(), location, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in report], indent=2))
    else:
        click.echo(render_gc_table(report))
    for removal in report:
        for warning in removal.warnings:
            click.echo(f"warning: {removal.location}: {warning}", err=True)
        if removal.error:
            click.echo(f"error: {removal.location}: gc failed there: {removal.error}", err=True)
    if any(r.error for r in report):
        sys.exit(1)
