"""Autovacuum: `ccat-wm db upgrade` warns when PostgreSQL would let the runs table bloat."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from ccat_ops_db import migrate
from ccat_ops_db.maintenance import BUSY_TABLES, autovacuum_problems, read_autovacuum_state
from tests.helpers import run_cli

MakeDb = Callable[[], URL]
ON = {"autovacuum": "on", "track_counts": "on"}


def test_nothing_to_say_when_autovacuum_runs_everywhere() -> None:
    options = {table: ["fillfactor=90"] for table in BUSY_TABLES}
    assert autovacuum_problems(ON, options) == []


def test_a_server_without_autovacuum_is_named_with_the_setting_to_change() -> None:
    (problem,) = autovacuum_problems({**ON, "autovacuum": "off"}, {})
    assert "autovacuum = off" in problem and "executed_reduction_step" in problem
    assert "postgresql.conf" in problem
    (both,) = autovacuum_problems({"autovacuum": "off", "track_counts": "off"}, {})
    assert "autovacuum = off and track_counts = off" in both


def test_a_table_with_autovacuum_disabled_is_named_with_the_statement_that_fixes_it() -> None:
    problems = autovacuum_problems(
        ON, {"run_attempt": ["autovacuum_enabled=false"], "executed_reduction_step": []}
    )
    assert problems == [
        "table run_attempt has autovacuum_enabled=false: its dead row versions (about five "
        "per run) are never reclaimed; ALTER TABLE run_attempt RESET (autovacuum_enabled)"
    ]


def test_db_upgrade_reads_the_real_server_and_table_and_warns(
    make_database: MakeDb, tmp_path: Path
) -> None:
    url = make_database()
    engine = create_engine(url)
    migrate.upgrade(engine)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE run_attempt SET (autovacuum_enabled = false)"))
        shown = connection.execute(text("SHOW autovacuum")).scalar_one()
        settings, options = read_autovacuum_state(connection)
    engine.dispose()
    assert settings["autovacuum"] == shown
    assert options["run_attempt"] == ["autovacuum_enabled=false"]
    assert options["executed_reduction_step"] == []
    expected = autovacuum_problems(settings, options)
    # This machine's server decides which warning it is; either way there is one.
    assert len(expected) == 1
    env = {
        **os.environ,
        "CCAT_OPS_DB_URL": url.set(drivername="postgresql").render_as_string(hide_password=False),
        "CCAT_WM_HOME": str(tmp_path),
    }
    result = run_cli(env, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert "is at revision" in result.stdout
    assert result.stderr.splitlines() == [f"warning: {expected[0]}"]
