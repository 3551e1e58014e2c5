"""Runs created by `ccat-wm retry` record the reason `retry`; one reason enum for gaps and runs.

Why: a person who gives a failed sub-group (retries exhausted) a fresh retry budget
must see that in the run's history, apart from a forced re-run. Gap evaluation and
runs now share one enum, so the type also holds `failed`, the state of a sub-group
whose retries are exhausted; a check constraint keeps it off runs.

Downgrade: runs recorded with `retry` become `forced` (the nearest older reason).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

OLD_VALUES = ("new", "inputs_changed", "version_changed", "config_changed", "forced")
CHECK = "ck_executed_reduction_step_reason_not_failed"


def upgrade() -> None:
    op.execute("ALTER TYPE run_reason ADD VALUE IF NOT EXISTS 'retry'")
    op.execute("ALTER TYPE run_reason ADD VALUE IF NOT EXISTS 'failed'")
    # The new labels cannot be used as enum values in this transaction: compare as text.
    op.execute(
        f"ALTER TABLE executed_reduction_step ADD CONSTRAINT {CHECK} "
        "CHECK (reason::text <> 'failed')"
    )


def downgrade() -> None:
    op.execute(f"ALTER TABLE executed_reduction_step DROP CONSTRAINT {CHECK}")
    labels = ", ".join(f"'{v}'" for v in OLD_VALUES)
    op.execute("ALTER TYPE run_reason RENAME TO run_reason_0004")
    op.execute(f"CREATE TYPE run_reason AS ENUM ({labels})")
    op.execute(
        "ALTER TABLE executed_reduction_step ALTER COLUMN reason TYPE run_reason USING "
        "(CASE WHEN reason::text = 'retry' THEN 'forced' ELSE reason::text END)::run_reason"
    )
    op.execute("DROP TYPE run_reason_0004")
