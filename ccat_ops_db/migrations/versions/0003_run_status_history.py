"""Every status a run went through, with its time: the audit trail of the run lifecycle.

Why: operators asking "when did this run start staging, how long did it queue, how
often was it retried" need each transition, not only the last status; tests of the
lifecycle read it too. A trigger records every insert and status change of a run,
whatever code makes it, in the same transaction.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ON_STATUS = """
CREATE FUNCTION ccat_run_status_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status THEN
        INSERT INTO run_status_change (executed_reduction_step_id, status, retry_count, changed_at)
        VALUES (NEW.id, NEW.status, NEW.retry_count, clock_timestamp());
    END IF;
    RETURN NULL;
END
$$
"""

TRIGGER = """
CREATE TRIGGER executed_reduction_step_status_history
AFTER INSERT OR UPDATE OF status ON executed_reduction_step
FOR EACH ROW EXECUTE FUNCTION ccat_run_status_changed()
"""


def upgrade() -> None:
    op.create_table(
        "run_status_change",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column(
            "executed_reduction_step_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "executed_reduction_step.id",
                ondelete="CASCADE",
                name=op.f(
                    "fk_run_status_change_executed_reduction_step_id_executed_reduction_step"
                ),
            ),
            nullable=False,
        ),
        sa.Column(
            "status",
            postgresql.ENUM(name="run_status", create_type=False),
            nullable=False,
        ),
        sa.Column("retry_count", sa.Integer(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_status_change")),
    )
    op.create_index(
        op.f("ix_run_status_change_executed_reduction_step_id"),
        "run_status_change",
        ["executed_reduction_step_id"],
    )
    op.execute(ON_STATUS)
    op.execute(TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER executed_reduction_step_status_history ON executed_reduction_step")
    op.execute("DROP FUNCTION ccat_run_status_changed()")
    op.drop_index(
        op.f("ix_run_status_change_executed_reduction_step_id"), table_name="run_status_change"
    )
    op.drop_table("run_status_change")
