"""`ccat-wm db`: migrate, locate and stop the ops DB."""

from __future__ import annotations

import click

from ccat_ops_db import migrate
from ccat_ops_db.maintenance import read_autovacuum_problems
from ccat_wm.cli.common import engine_for
from ccat_wm.db import display_url, resolve_db_url
from ccat_wm.embedded_pg import stop_embedded_server
from ccat_wm.settings import load_settings


@click.group()
def db() -> None:
    """Manage the ops DB (CCAT_OPS_DB_URL, or the embedded server when unset)."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Migrate the ops DB to the current schema; warn if autovacuum cannot keep it small."""
    engine = engine_for(load_settings(), require_schema=False)
    migrate.upgrade(engine)
    click.echo(
        f"ops DB at {display_url(engine.url)} is at revision {migrate.current_revision(engine)}"
    )
    with engine.connect() as connection:
        for problem in read_autovacuum_problems(connection):
            click.echo(f"warning: {problem}", err=True)


@db.command("url")
def db_url() -> None:
    """Print the ops DB URL in use (password masked); starts the embedded server if needed."""
    click.echo(display_url(resolve_db_url(load_settings())))


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL server (no effect with CCAT_OPS_DB_URL set)."""
    settings = load_settings()
    if settings.ops_db_url:
        click.echo("CCAT_OPS_DB_URL is set; there is no embedded server to stop")
        return
    stopped = stop_embedded_server(settings.home)
    click.echo("embedded server stopped" if stopped else "embedded server was not running")
