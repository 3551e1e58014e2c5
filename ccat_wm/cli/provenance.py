"""`ccat-wm lineage`: where a product came from."""

from __future__ import annotations

import json

import click
from sqlalchemy.orm import Session

from ccat_wm.cli.common import engine
from ccat_wm.cli.render import render_lineage
from ccat_wm.execution.control import product_lineage


@click.command()
@click.argument("product")
@click.option("--json", "as_json", is_flag=True, help="Print the lineage as JSON (every run).")
def lineage(product: str, as_json: bool) -> None:
    """Show a product's provenance (by id or file path): runs, software, configs, raw data."""
    with Session(engine()) as session:
        result = product_lineage(session, product)
    click.echo(json.dumps(result.as_dict(), indent=2) if as_json else render_lineage(result))
