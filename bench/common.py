"""Shared by the benchmarks: the PostgreSQL server and throwaway databases on it."""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from ccat_wm.db import normalize_db_url
from ccat_wm.embedded_pg import ensure_embedded_server


def server_url() -> str:
    """CCAT_OPS_DB_URL, or the embedded server under CCAT_WM_HOME."""
    raw = os.environ.get("CCAT_OPS_DB_URL")
    if raw:
        return raw
    return ensure_embedded_server(
        Path(os.environ.get("CCAT_WM_HOME", "~/.local/share/ccat-wm")).expanduser()
    )


def libpq(url: str, database: str | None = None) -> str:
    """A plain libpq URL of `url`, optionally for another database."""
    parsed = normalize_db_url(url).set(drivername="postgresql")
    if database:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def _drop_database(server: str, name: str) -> None:
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(libpq(server), autocommit=True) as conn:
        conn.execute(drop)


def _create_database(server: str, name: str) -> str:
    """Create database `name` (dropping a leftover) and return its URL."""
    _drop_database(server, name)
    with psycopg.connect(libpq(server), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return libpq(server, name)


@contextmanager
def scratch_database(name: str) -> Iterator[str]:
    """Create database `name` (dropping a leftover), yield its URL, drop it afterwards."""
    server = server_url()
    url = _create_database(server, name)
    try:
        yield url
    finally:
        _drop_database(server, name)


@contextmanager
def prefect_database() -> Iterator[None]:
    """Give this process's ephemeral Prefect server a throwaway PostgreSQL database.

    Unless PREFECT_API_URL or PREFECT_API_DATABASE_CONNECTION_URL is set. Call before
    Prefect starts its server; the database is dropped when the process exits. A reused
    database skews the numbers: with 50,000 task runs and 150,000 events recorded in it,
    the server needed over twice the CPU per task run; and Prefect's default, SQLite,
    fails under a wide flow's load.
    """
    if os.environ.get("PREFECT_API_URL") or os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL"):
        yield
        return
    server, name = server_url(), f"ccat_wm_bench_prefect_{os.getpid()}"
    url = _create_database(server, name)
    # Dropped when the process exits, after Prefect has stopped its ephemeral server
    # (registered later, so run earlier): dropped before, the server's last flushes fail.
    atexit.register(_drop_database, server, name)
    asyncpg = normalize_db_url(url).set(drivername="postgresql+asyncpg")
    os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = asyncpg.render_as_string(
        hide_password=False
    )
    try:
        yield
    finally:
        del os.environ["PREFECT_API_DATABASE_CONNECTION_URL"]
