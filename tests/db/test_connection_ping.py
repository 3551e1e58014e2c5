"""Pooled ops DB connections are checked before use only after lying idle (`ccat_wm.db`).

Real PostgreSQL: the server end of a pooled connection is terminated, as a server
restart or a dropped connection would do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from ccat_wm import db

pytestmark = pytest.mark.db


@pytest.fixture
def ops_engine(migrated_url: URL) -> Iterator[Engine]:
    """A fresh engine made as the runner makes its own (not the process-wide cached one)."""
    url = db.normalize_db_url(migrated_url.render_as_string(hide_password=False))
    engine = db._engine_for.__wrapped__(url.render_as_string(hide_password=False))
    yield engine
    engine.dispose()


def backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(text("SELECT pg_backend_pid()")))


def kill_next_in_line(engine: Engine) -> int:
    """Terminate the server end of the pooled connection the next checkout takes; its pid."""
    with engine.connect() as other:
        with engine.connect() as victim:  # given back first: first in line (the pool is FIFO)
            pid = int(victim.scalar(text("SELECT pg_backend_pid()")))
        assert other.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    return pid


def test_a_connection_idle_longer_than_the_threshold_is_checked_and_replaced(
    ops_engine: Engine,
) -> None:
    pid = kill_next_in_line(ops_engine)
    time.sleep(db.PING_AFTER_IDLE_S + 0.3)

    # The check finds it gone; a new connection is used, and the statement works.
    assert backend_pid(ops_engine) != pid


def test_a_connection_used_a_moment_ago_is_not_checked_again(ops_engine: Engine) -> None:
    """No round trip for the check: a connection killed a moment ago fails its next statement."""
    pid = kill_next_in_line(ops_engine)

    with pytest.raises(OperationalError), ops_engine.connect() as conn:
        conn.execute(text("SELECT 1"))

    assert backend_pid(ops_engine) != pid  # the pool dropped it; the next use is fine
