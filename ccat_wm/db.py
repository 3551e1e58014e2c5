"""Connections to the ops DB: URL resolution (external or embedded), engines, sessions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from ccat_wm.embedded_pg import ensure_embedded_server
from ccat_wm.errors import ConfigurationError
from ccat_wm.settings import Settings

_ACCEPTED_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
POOL_WAIT_S = 600.0
"""How long a thread waits for a pooled ops DB connection before giving up (SQLAlchemy's
default, 30 s, failed runs of a 500-run wave on a loaded 2-core machine)."""

Db = Session | Connection
"""What the domain functions that run Core statements accept: a session or a connection.

The run executor passes one checked-out connection through the short phases of a run
(each checkout pings the server, and a session costs more than its statements)."""


def connection_of(db: Db) -> Connection:
    """Return the connection to run Core statements on (a session's, or `db` itself)."""
    return db.connection() if isinstance(db, Session) else db


def normalize_db_url(raw: str) -> URL:
    """Turn a plain `postgresql://` URL as users write it into a psycopg 3 SQLAlchemy URL."""
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigurationError(
            "CCAT_OPS_DB_URL is not a valid database URL; "
            "expected e.g. postgresql://user@host:5432/ccat_ops"
        ) from None
    if url.drivername not in _ACCEPTED_SCHEMES:
        raise ConfigurationError(
            f"CCAT_OPS_DB_URL has scheme {url.drivername!r}; expected postgresql:// "
            "(the psycopg 3 driver is implied)"
        )
    return url.set(drivername="postgresql+psycopg")


def display_url(url: URL) -> str:
    """Render a URL for messages, with any password masked."""
    return url.render_as_string(hide_password=True)


def resolve_db_url(settings: Settings) -> URL:
    """Return the ops DB URL: `CCAT_OPS_DB_URL`, or the embedded server (started if needed)."""
    raw = settings.ops_db_url or ensure_embedded_server(settings.home)
    return normalize_db_url(raw)


@lru_cache(maxsize=8)
def _engine_for(url_string: str) -> Engine:
    # hide_parameters: a database error's text (in a traceback, a log, Prefect's UI) never
    # carries the statement's values, which can include a config's environment variables.
    # pool_timeout: a run's thread waits for a connection rather than failing the run; a
    # wave of hundreds of runs shares the pool's 15 and each holds one only briefly.
    engine = create_engine(url_string, hide_parameters=True, pool_timeout=POOL_WAIT_S)
    _ping_after_idle(engine)
    return engine


PING_AFTER_IDLE_S = 1.0
"""A pooled connection is checked with a round trip before use only if it lay idle longer."""


def _ping_after_idle(engine: Engine) -> None:
    """Check a pooled connection before use when it was idle over `PING_AFTER_IDLE_S`.

    SQLAlchemy's `pool_pre_ping` checks it at every checkout: one round trip more for
    each of a run's short transactions, on a connection that, in a wave, was in use
    milliseconds before. One idle for longer (the server restarted overnight, a
    firewall dropped it) is checked as before and replaced if it is gone.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection: Any, record: Any) -> None:
        del dbapi_connection
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        del proxy
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since <= PING_AFTER_IDLE_S:
            return  # just connected, or in use a moment ago
        dialect = engine.dialect
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_connection, None):
                raise DisconnectionError("the ops DB connection was gone; replaced") from exc
            raise


def get_engine(url: URL) -> Engine:
    """Return a process-wide engine for `url` (one pool per URL)."""
    return _engine_for(url.render_as_string(hide_password=False))


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error."""
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session, session.begin():
        yield session
