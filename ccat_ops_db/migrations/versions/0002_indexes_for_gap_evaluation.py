"""Indexes for gap evaluation.

Why: `plan` and the trigger find each sub-group's current run (its latest COMPLETED
run) with DISTINCT ON, and the runs in flight or failed since then. Over years of
reprocessing history most runs are COMPLETED; a partial index ordered by id DESC turns
the current-run lookup into an index scan, and a small partial index covers the few
runs that are not COMPLETED.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_executed_reduction_step_completed",
        "executed_reduction_step",
        ["reduction_step_id", "sub_group_key", sa.text("id DESC")],
        postgresql_where=sa.text("status = 'COMPLETED'"),
    )
    op.create_index(
        "ix_executed_reduction_step_not_completed",
        "executed_reduction_step",
        ["reduction_step_id", "status"],
        postgresql_where=sa.text("status <> 'COMPLETED'"),
    )


def downgrade() -> None:
    op.drop_index("ix_executed_reduction_step_not_completed", table_name="executed_reduction_step")
    op.drop_index("ix_executed_reduction_step_completed", table_name="executed_reduction_step")
