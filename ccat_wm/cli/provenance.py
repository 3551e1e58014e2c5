"""`ccat-wm lineage`: where a product came from."""

from __future__ import annotations

import json

import click
from sqlalchemy.orm import Session

from ccat_wm.cli.common import engine
from ccat_wm.cli.render import render_lineage, render_verify
from ccat_wm.execution.control import product_lineage
from ccat_wm.execution.prov_export import product_prov
from ccat_wm.execution.verify import verify as verify_files


@click.command()
@click.argument("product")
@click.option("--json", "as_json", is_flag=True, help="Print the lineage as JSON (every run).")
@click.option(
    "--prov", "as_prov", is_flag=True, help="Print it as W3C PROV-JSON (entities, runs, agents)."
)
def lineage(product: str, as_json: bool, as_prov: bool) -> None:
    """Show a product's provenance (by id or file path): runs, software, configs, raw data.

    Each run's values are the ones it recorded when it started (its snapshot).
    """
    if as_json and as_prov:
        raise click.UsageError("give --json or --prov, not both")
    with Session(engine()) as session:
        if as_prov:
            click.echo(product_prov(session, product).serialize(indent=2))
            return
        result = product_lineage(session, product)
    click.echo(json.dumps(result.as_dict(), indent=2) if as_json else render_lineage(result))


@click.command()
@click.argument("pipeline", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (every finding).")
@click.option(
    "--workers", type=click.IntRange(1, 256), default=None, help="Files hashed at once [CPUs]."
)
def verify(pipeline: str | None, as_json: bool, workers: int | None) -> None:
    """Recompute size and SHA-256 of every product and staged copy; compare with the ops DB.

    Reports missing, changed and unexpected files (unclaimed files in a completed run's
    output directory or a staging cache); exits 1 if there is any.
    """
    with Session(engine()) as session:
        report = verify_files(session, pipeline, workers=workers)
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else render_verify(report))
    if not report.ok:
        raise SystemExit(1)
