"""Shared fixtures: a private test database on the real PostgreSQL, clean per test.

With CCAT_OPS_DB_URL set (as in CI), each test session creates its own database on
that server and drops it at the end. Without it, the session starts the embedded
server under a temporary CCAT_WM_HOME, exactly as a newcomer's CLI would.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL

from ccat_ops_db import migrate
from ccat_ops_db.models import Base
from ccat_wm.db import normalize_db_url
from ccat_wm.embedded_pg import ensure_embedded_server, stop_embedded_server
from ccat_wm.prefect_settings import apply_prefect_defaults
from tests.helpers import free_port, wait_for_http

REPO = Path(__file__).resolve().parent.parent


def _libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[URL]:
    """URL of the PostgreSQL server the tests use (its maintenance database)."""
    raw = os.environ.get("CCAT_OPS_DB_URL")
    if raw:
        yield normalize_db_url(raw)
        return
    home = tmp_path_factory.mktemp("embedded-home")
    yield normalize_db_url(ensure_embedded_server(home))
    stop_embedded_server(home)


@pytest.fixture(scope="session")
def make_database(server_url: URL) -> Iterator[object]:
    """Factory: create a fresh, empty database on the test server; all dropped at the end."""
    created: list[str] = []

    def make() -> URL:
        name = f"ccat_wm_test_{os.getpid()}_{secrets.token_hex(3)}"
        with psycopg.connect(_libpq(server_url), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return server_url.set(database=name)

    yield make
    with psycopg.connect(_libpq(server_url), autocommit=True) as conn:
        for name in created:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def migrated_url(make_database: object) -> URL:
    """A database migrated to head, shared by the DB tests of the session."""
    url: URL = make_database()  # type: ignore[operator]
    engine = create_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture
def engine(migrated_url: URL) -> Iterator[Engine]:
    """An engine on the migrated test database, emptied before each test."""
    eng = create_engine(migrated_url)
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with eng.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield eng
    eng.dispose()


@pytest.fixture
def cli_env(migrated_url: URL, tmp_path: Path) -> dict[str, str]:
    """Environment for running `ccat-wm` against the test database."""
    env = dict(os.environ)
    env["CCAT_OPS_DB_URL"] = _libpq(migrated_url)
    env["CCAT_WM_HOME"] = str(tmp_path / "home")
    return env


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Start (or find running) the single-node SLURM cluster; fail loudly if it cannot."""
    result = subprocess.run(
        [str(Path(__file__).resolve().parents[1] / "infra" / "slurm" / "start-cluster.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, f"SLURM cluster did not start:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="session")
def prefect_api(
    make_database: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """A real `prefect server start` on loopback with its own PostgreSQL database.

    Yields the environment (PREFECT_API_URL, PREFECT_HOME) that points clients, the
    `prefect` CLI and workers at it. Its log is kept next to the session's temp files.
    """
    url: URL = make_database()  # type: ignore[operator]
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = dict(os.environ)
    apply_prefect_defaults(env)  # as docs/operators-guide.md configures a server
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_DATABASE_CONNECTION_URL=url.set(
            drivername="postgresql+asyncpg"
        ).render_as_string(hide_password=False),
    )
    log = (home / "server.log").open("w")
    prefect = str(Path(sys.executable).parent / "prefect")
    server = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/health", server, home / "server.log")
        yield {k: env[k] for k in ("PREFECT_HOME", "PREFECT_API_URL")}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
