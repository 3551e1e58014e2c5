"""Quality metrics kept on runs, and the rejected scans a downstream run left out.

Why: a changed gate re-decides the current runs without re-running them, so a run's
metrics must be in the ops DB (the data may be on a cluster the operator's `apply`
cannot read); and `lineage` of a map names the scans its sub-group held but whose
products it did not take, with the decision that left each out.

- `executed_reduction_step.qa_metrics`: the metrics the run reported (the top-level
  numbers of its `qa/*.json` files) when it completed; NULL for runs that wrote no QA
  file, or completed before this migration.
- `qa_exclusion` (`executed_reduction_step_id`, `excluded_run_id`): written when a
  downstream run is created, one row per rejected upstream run inside its sub-group.
  Like inputs, it is part of the run's record: deleted only with the run.

- `qa_source` gains `inputs`: a derived decision on a run whose every input is
  rejected (its products then feed nothing either), taken back when an input is
  accepted again.

Downgrade drops the column and the table, and maps `inputs` decisions to `gate`.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TYPE qa_source ADD VALUE IF NOT EXISTS 'inputs'")
    op.add_column(
        "executed_reduction_step",
        sa.Column("qa_metrics", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.create_table(
        "qa_exclusion",
        sa.Column(
            "executed_reduction_step_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "executed_reduction_step.id",
                ondelete="CASCADE",
                name=op.f("fk_qa_exclusion_executed_reduction_step_id_executed_reduction_step"),
            ),
            primary_key=True,
        ),
        sa.Column(
            "excluded_run_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "executed_reduction_step.id",
                ondelete="CASCADE",
                name=op.f("fk_qa_exclusion_excluded_run_id_executed_reduction_step"),
            ),
            primary_key=True,
        ),
    )
    op.create_index(op.f("ix_qa_exclusion_excluded_run_id"), "qa_exclusion", ["excluded_run_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_qa_exclusion_excluded_run_id"), table_name="qa_exclusion")
    op.drop_table("qa_exclusion")
    op.drop_column("executed_reduction_step", "qa_metrics")
    # PostgreSQL cannot drop an enum value: recreate the type; decisions are kept, so
    # the trigger that refuses their change is set aside while they are converted.
    op.execute("ALTER TABLE qa_decision DISABLE TRIGGER qa_decision_is_kept")
    op.execute("ALTER TYPE qa_source RENAME TO qa_source_0012")
    op.execute("CREATE TYPE qa_source AS ENUM ('gate', 'person')")
    op.execute(
        "ALTER TABLE qa_decision ALTER COLUMN source TYPE qa_source USING "
        "(CASE WHEN source::text = 'inputs' THEN 'gate' ELSE source::text END)::qa_source"
    )
    op.execute("DROP TYPE qa_source_0012")
    op.execute("ALTER TABLE qa_decision ENABLE TRIGGER qa_decision_is_kept")
