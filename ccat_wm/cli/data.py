"""Commands that find the data: `products` and `raw`, newest first."""

from __future__ import annotations

import datetime as dt
import json

import click

from ccat_ops_db.models import DataProductType
from ccat_wm.cli import complete
from ccat_wm.cli.common import Moment, engine
from ccat_wm.cli.render import short_time, table
from ccat_wm.selection.dimensions import display_key


def _size(size: int) -> str:
    """Return a size as people read it (1.2 MB), in decimal units."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover - the loop returns


LIMIT = click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="List at most N."
)
SINCE = click.option(
    "--since", type=Moment(), default=None, help="Only those created since (ISO 8601, or 6h, 2d)."
)
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")


@click.command()
@click.argument("pipeline", required=False, shell_complete=complete.pipelines)
@click.option(
    "--step", default=None, help="Only products of this step.", shell_complete=complete.steps
)
@click.option(
    "--type",
    "product_type",
    type=click.Choice([t.value for t in DataProductType], case_sensitive=False),
    default=None,
    help="Only products of this type.",
)
@SINCE
@LIMIT
@AS_JSON
def products(  # noqa: PLR0917 - one parameter per click option
    pipeline: str | None,
    step: str | None,
    product_type: str | None,
    since: dt.datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """List products, newest first: id, type, step, sub-group, run, size, time and path."""
    from sqlalchemy.orm import Session

    from ccat_wm.catalog import list_products
    from ccat_wm.lookup import pipeline_by_name

    kind = DataProductType(product_type.upper()) if product_type else None
    with Session(engine()) as session:
        if pipeline is not None:
            pipeline_by_name(session, pipeline)
        rows = list_products(session, pipeline, step, kind, since, limit)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    if not rows:
        click.echo("no products")
        return
    click.echo(table(
        ("id", "type", "pipeline", "step", "sub_group", "run", "size", "created", "path"),
        [(r.id, r.type, r.pipeline, r.step, display_key(r.sub_group_key), r.run_id,
          _size(r.size), short_time(r.created_at), r.path) for r in rows],
    ))  # fmt: skip


@click.command()
@click.option("--source", default=None, help="Only packages of this source.")
@click.option("--line", default=None, help="Only packages of this spectral line.")
@SINCE
@LIMIT
@AS_JSON
def raw(
    source: str | None, line: str | None, since: dt.datetime | None, limit: int, as_json: bool
) -> None:
    """List raw data packages, newest first: id, name, scan, source, line, size, copies."""
    from sqlalchemy.orm import Session

    from ccat_wm.catalog import list_raw

    with Session(engine()) as session:
        rows = list_raw(session, source, line, since, limit)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    if not rows:
        click.echo("no raw data packages")
        return
    click.echo(table(
        ("id", "name", "scan", "source", "line", "module", "size", "state", "created", "copies"),
        [(r.id, r.name, r.scan, r.source, r.line, r.module, _size(r.size), r.state,
          short_time(r.created_at), ", ".join(r.paths) or "-") for r in rows],
    ))  # fmt: skip
