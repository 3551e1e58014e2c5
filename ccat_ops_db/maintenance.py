"""Whether PostgreSQL will keep the ops DB's busiest tables from bloating.

Every run's row is updated about five times on its way to COMPLETED (claim, staging,
submission, collection, end), and none of those updates can be a HOT update (each
changes an indexed column), so each leaves a dead row version and new index entries
behind: a 100,000-run wave had updated the runs table's rows 474,533 times, none of them
in place, by the time 55,000 of its runs had completed. PostgreSQL's autovacuum
reclaims them; with it off, the tables and their indexes only grow, for years.
`ccat-wm db upgrade` reports it (`autovacuum_problems`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import Connection, text

BUSY_TABLES = ("executed_reduction_step", "run_attempt")
"""Tables whose rows are updated several times each (runs, attempts)."""

_SETTINGS = text(
    "SELECT name, setting FROM pg_settings WHERE name IN ('autovacuum', 'track_counts')"
)
_TABLE_OPTIONS = text(
    "SELECT c.relname, coalesce(c.reloptions, '{}') FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = current_schema() AND c.relname = ANY(:tables)"
)


def autovacuum_problems(
    settings: Mapping[str, str], table_options: Mapping[str, Sequence[str]]
) -> list[str]:
    """Say what keeps autovacuum from the busy tables (empty: nothing).

    `settings`: the server's `autovacuum` and `track_counts` (`on`/`off`);
    `table_options`: each busy table's storage options (`autovacuum_enabled=false`, ...).
    """
    off = [name for name in ("autovacuum", "track_counts") if settings.get(name) != "on"]
    if off:
        return [
            f"the ops DB's PostgreSQL server runs with {' and '.join(f'{n} = off' for n in off)}: "
            f"dead row versions of {', '.join(BUSY_TABLES)} (about five per run) are never "
            "reclaimed and the tables only grow; set it on in postgresql.conf "
            "(PostgreSQL's default) and reload the server"
        ]
    return [
        f"table {table} has autovacuum_enabled=false: its dead row versions (about five "
        f"per run) are never reclaimed; ALTER TABLE {table} RESET (autovacuum_enabled)"
        for table, options in sorted(table_options.items())
        if any(option.lower() in ("autovacuum_enabled=false", "autovacuum_enabled=off")
               for option in options)
    ]  # fmt: skip


def read_autovacuum_state(
    connection: Connection,
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Read the server's autovacuum settings and the busy tables' storage options."""
    settings = {str(name): str(value) for name, value in connection.execute(_SETTINGS)}
    options = {
        str(name): list(values)
        for name, values in connection.execute(_TABLE_OPTIONS, {"tables": list(BUSY_TABLES)})
    }
    return settings, options


def read_autovacuum_problems(connection: Connection) -> list[str]:
    """`autovacuum_problems` of the database behind `connection` (reads, writes nothing)."""
    return autovacuum_problems(*read_autovacuum_state(connection))
