"""Secrets scrubbed once, one active invalidation per target, provenance guards closed.

Why: records written before the wider secret rules of `ccat_wm.execution.secrets`
held values such as `PGPASSWORD`, `MYSQL_PWD`, `APITOKEN` or a password inside a
database URL; the same target could be invalidated twice at once; and TRUNCATE (or a
DELETE of a recorded input) sidestepped the row triggers that keep provenance.

- `reduction_step_config.secret_env`: names a config declares secret.
- Scrub (the one documented exception to the immutability of run records): in
  `run_snapshot.environment`, values of secret-named variables are removed (their
  names join `withheld_environment`) and passwords in URL or DSN values become
  `<withheld>`; in `executed_reduction_step.execution_command`, the same for its
  `NAME=value` words and for URLs among the arguments. Only rows whose text matches a
  rule are read (a regular expression in SQL); each is rewritten once.
- Invalidations: of several active ones for the same target, all but the first are
  marked undone (by `migration 0010`, naming the one kept); then a unique partial index
  per target kind allows one active invalidation per target.
- Guards: TRUNCATE of `run_snapshot`, `run_attempt`, `executed_reduction_step_input`,
  `invalidation` and `invalidated_run` is refused, and so is DELETE of a recorded input.

Downgrade drops the guards, the indexes and the column; scrubbed values stay scrubbed.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SECRET_PARTS = ("PASS", "PWD", "SECRET", "TOKEN", "KEY", "CREDENTIAL", "AUTH", "PRIVATE")
"""Frozen copy of `ccat_wm.execution.secrets.SECRET_PARTS` as of this migration."""
WITHHELD = "<withheld>"
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?=@)")
_DSN_PASSWORD = re.compile(r"(?i)(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|[^\s']+)")
_CANDIDATE = "(?i)(pass|pwd|secret|token|key|credential|auth|private|://[^:/@ ]*:[^@ ]*@)"
"""What a record must contain to need a look (SQL regular expression)."""

GUARDED = ("run_snapshot", "run_attempt", "executed_reduction_step_input", "invalidation",
           "invalidated_run")  # fmt: skip
TARGETS = ("raw_data_package_id", "executed_reduction_step_id", "data_product_id")


def _secret(name: str) -> bool:
    return any(part in name.upper() for part in SECRET_PARTS)


def _mask(value: str) -> str:
    masked = _URL_PASSWORD.sub(lambda m: m["head"] + WITHHELD if m["pw"] else m[0], value)
    return _DSN_PASSWORD.sub(lambda m: m["head"] + WITHHELD, masked)


def _scrub_environment(
    env: dict[str, Any], withheld: list[str]
) -> tuple[dict[str, Any], list[str]]:
    stored, names = {}, set(withheld)
    for name, value in env.items():
        if _secret(name):
            names.add(name)
            continue
        masked = _mask(value) if isinstance(value, str) else value
        stored[name] = masked
        if masked != value:
            names.add(name)
    return stored, sorted(names)


def _scrub_command(command: str) -> str:
    try:
        words = shlex.split(command)
    except ValueError:
        return _mask(command)
    out, leading = [], True
    for word in words:
        name, sep, value = word.partition("=")
        if leading and sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            out.append(f"{name}={WITHHELD if _secret(name) else _mask(value)}")
            continue
        leading = False
        out.append(_mask(word))
    return shlex.join(out)


def upgrade() -> None:
    op.add_column(
        "reduction_step_config",
        sa.Column("secret_env", postgresql.ARRAY(sa.String()), nullable=False, server_default="{}"),
    )
    _scrub()
    _one_active_invalidation()
    op.execute(
        """
        CREATE FUNCTION ccat_provenance_truncate_refused() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is provenance: TRUNCATE is refused (records are kept for good)',
                TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
        END $$
        """
    )
    for table in GUARDED:
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION ccat_provenance_truncate_refused()"
        )
    op.execute(
        "CREATE TRIGGER executed_reduction_step_input_no_delete BEFORE DELETE ON "
        "executed_reduction_step_input FOR EACH ROW EXECUTE FUNCTION ccat_run_input_is_immutable()"
    )


def _scrub() -> None:
    """Rewrite, once, the records that hold a secret (see the module docstring)."""
    bind = op.get_bind()
    snapshots = bind.execute(
        sa.text(
            "SELECT executed_reduction_step_id, environment, withheld_environment "
            "FROM run_snapshot WHERE environment::text ~ :candidate"
        ),
        {"candidate": _CANDIDATE},
    ).all()
    changed_snapshots = []
    for run_id, env, withheld in snapshots:
        stored, names = _scrub_environment(dict(env or {}), list(withheld or []))
        if stored != env or names != sorted(withheld or []):
            changed_snapshots.append({"id": run_id, "env": stored, "withheld": names})
    commands = bind.execute(
        sa.text(
            "SELECT id, execution_command FROM executed_reduction_step "
            "WHERE execution_command ~ :candidate"
        ),
        {"candidate": _CANDIDATE},
    ).all()
    changed_commands = [
        {"id": run_id, "command": scrubbed}
        for run_id, command in commands
        if (scrubbed := _scrub_command(command)) != command
    ]
    op.execute("ALTER TABLE run_snapshot DISABLE TRIGGER run_snapshot_immutable")
    op.execute(
        "ALTER TABLE executed_reduction_step "
        "DISABLE TRIGGER executed_reduction_step_identity_immutable"
    )
    if changed_snapshots:
        bind.execute(
            sa.text(
                "UPDATE run_snapshot SET environment = CAST(:env AS jsonb), "
                "withheld_environment = :withheld WHERE executed_reduction_step_id = :id"
            ).bindparams(sa.bindparam("env", type_=postgresql.JSONB)),
            changed_snapshots,
        )
    if changed_commands:
        bind.execute(
            sa.text(
                "UPDATE executed_reduction_step SET execution_command = :command WHERE id = :id"
            ),
            changed_commands,
        )
    op.execute("ALTER TABLE run_snapshot ENABLE TRIGGER run_snapshot_immutable")
    op.execute(
        "ALTER TABLE executed_reduction_step ENABLE TRIGGER executed_reduction_step_identity_immutable"
    )


def _one_active_invalidation() -> None:
    for column in TARGETS:
        op.execute(
            f"""
            UPDATE invalidation i
               SET undone_at = now(), undone_by = 'migration 0010',
                   undo_reason = 'duplicate of invalidation ' || keep.first
              FROM (SELECT {column} AS target, min(id) AS first FROM invalidation
                     WHERE undone_at IS NULL AND {column} IS NOT NULL GROUP BY {column}) keep
             WHERE i.{column} = keep.target AND i.undone_at IS NULL AND i.id <> keep.first
            """  # noqa: S608 - column names from TARGETS, no data
        )
        op.create_index(
            f"uq_invalidation_active_{column.removesuffix('_id')}",
            "invalidation",
            [column],
            unique=True,
            postgresql_where=sa.text(f"undone_at IS NULL AND {column} IS NOT NULL"),
        )


def downgrade() -> None:
    op.execute(
        "DROP TRIGGER executed_reduction_step_input_no_delete ON executed_reduction_step_input"
    )
    for table in GUARDED:
        op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
    op.execute("DROP FUNCTION ccat_provenance_truncate_refused()")
    for column in TARGETS:
        op.drop_index(f"uq_invalidation_active_{column.removesuffix('_id')}", "invalidation")
    op.drop_column("reduction_step_config", "secret_env")
