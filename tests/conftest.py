"""Shared fixtures: a private test database on the real PostgreSQL, clean per test.

With CCAT_OPS_DB_URL set (as in CI), each test session (each pytest-xdist worker) creates
its own databases on that server and drops them at the end. Without it, the session
starts the embedded server under a temporary CCAT_WM_HOME, exactly as a newcomer's CLI
would.

Every real component a test starts is a marker (pyproject.toml, `--strict-markers`),
set here from the fixtures the test uses, so that `-m "not slurm"` and the like select
tiers (docs/development.md). Tests that share one scarce resource (the one SLURM node,
podman, the operator's guide) run in one pytest-xdist group, one after another.
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
    """Factory: create a fresh database on the test server (empty, or a copy of a template
    database); all dropped at the end."""
    created: list[str] = []

    def make(template: URL | None = None) -> URL:
        """A new database; a copy of `template` (a database of this server) when given."""
        name = f"ccat_wm_test_{os.getpid()}_{secrets.token_hex(3)}"
        create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template.database or ""))
        with psycopg.connect(_libpq(server_url), autocommit=True) as conn:
            conn.execute(create)
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
    with eng.begin() as conn:  # as a replica: the provenance guards refuse TRUNCATE
        conn.execute(text("SET LOCAL session_replication_role = replica"))
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


@pytest.fixture
def run_env(cli_env: dict[str, str], prefect_api: dict[str, str]) -> dict[str, str]:
    """`cli_env` whose flow runs go to the session's Prefect server (not an ephemeral one).

    Tests whose subject is not the ephemeral server use it: a command that runs a flow
    then costs no server start of its own.
    """
    return cli_env | prefect_api


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
    """A real `prefect server start` on loopback with its own PostgreSQL database: the one
    Prefect server of the test session (of each pytest-xdist worker), for the flow tests,
    the CLI's flow runs, deployments and workers.

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
        # Clocks in seconds, not minutes: the scheduler makes a new cron deployment's
        # runs within 2 s, expired slot leases are taken back within 2 s.
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
        PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="2",
    )
    # Prefect's server needs pg_trgm, which the embedded PostgreSQL lacks: without
    # CCAT_OPS_DB_URL (a developer's machine) it keeps its database in SQLite instead.
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = (
        url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
        if os.environ.get("CCAT_OPS_DB_URL")
        else f"sqlite+aiosqlite:///{home / 'prefect.db'}"
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


# -- tiers: a marker for every real component, set from the fixtures that start it -------

FIXTURE_MARKERS = {
    "server_url": "db",
    "prefect_api": "prefect_server",
    "slurm_cluster": "slurm",
    "example_image": "podman",
}
"""A test that (transitively) uses the fixture needs the component its marker names."""

SERIAL_GROUPS = {"podman": "podman", "guide": "guide", "slurm": "slurm"}
"""Markers whose tests share one scarce resource, and the pytest-xdist group (one worker,
one test after another) they run in, the first that applies: podman's storage and
containers; the operator's guide (its own server, worker and SLURM jobs, as written);
the one SLURM node (tests that saturate it, count its jobs or find them by name, which
another database's run ids would match). A module that shares one expensive fixture
(the deployed site of tests/deploy/test_worker_e2e.py) is a group of its own."""

FIXTURE_GROUPS = {"demo_done": "demo"}
"""Tests of a session-scoped fixture worth making once: on one worker, so it is made once."""

FIRST = ("guide", "site", "podman", "slurm", "demo", "tests/integration/", "tests/deploy/")
"""What starts first, longest first (groups, then directories): pytest-xdist hands out
tests in collection order, so the long serial groups start at once and the many short
tests fill the workers' gaps at the end."""


def _start_order(item: pytest.Item) -> int:
    marker = item.get_closest_marker("xdist_group")
    for rank, first in enumerate(FIRST):
        if (marker is not None and marker.args[0] == first) or item.nodeid.startswith(first):
            return rank
    return len(FIRST)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> Iterator[None]:
    """Mark each test with the components it starts, put it in its serial group, and
    order the tests so that the longest start first.

    A wrapper, so that it runs before marker selection (`-m`) and before pytest-xdist's
    worker reads the groups (`tryfirst` does not order it before that plugin's hook).
    """
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in fixtures:
                item.add_marker(marker)
        if item.get_closest_marker("xdist_group") is None:
            group = next(
                (g for marker, g in SERIAL_GROUPS.items() if item.get_closest_marker(marker)),
                next((g for f, g in FIXTURE_GROUPS.items() if f in fixtures), None),
            )
            if group is not None:
                item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=_start_order)  # stable: a module's tests keep their order
    return (yield)
