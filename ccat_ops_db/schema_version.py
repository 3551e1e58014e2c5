"""The schema revision the code expects, and the one a database is at, without Alembic.

Every command checks the ops DB's schema before it works; Alembic (its script
directory, read from disk) costs a fifth of a second to import and load, so the check
reads `alembic_version` itself. `HEAD_REVISION` is the newest migration's revision (a
test holds it equal to Alembic's head); `ccat-wm db upgrade` uses Alembic.
"""

from __future__ import annotations

from sqlalchemy import Engine, text

HEAD_REVISION = "0012"
"""Revision of the newest migration in `ccat_ops_db/migrations/versions/`."""


def stored_revision(engine: Engine) -> str | None:
    """Return the revision the database is at, or None for an empty database."""
    with engine.connect() as conn:
        if conn.scalar(text("SELECT to_regclass('alembic_version')")) is None:
            return None
        revision = conn.scalar(text("SELECT version_num FROM alembic_version LIMIT 1"))
    return None if revision is None else str(revision)
