"""Quality gates: a step's rules, the decisions on runs, and the decision in force.

Why: a step's quality gate (or a person) may reject a completed run; its products then
are no inputs of downstream sub-groups, while the run stays COMPLETED and current for
its own step (it is not re-run for the same inputs).

- `reduction_step.qa_gate`: the step's rules (`[{metric, operator, value}]`, empty: no
  gate), as `ccat-wm apply` validated them.
- `qa_decision` (enum `qa_source`: gate, person): every decision on a run, with the
  rules and values it was made from, who and when; the database refuses UPDATE, DELETE
  and TRUNCATE of it (a later decision is a new row).
- `executed_reduction_step.qa_rejected`: the decision in force. Gap evaluation reads it,
  so the change log's trigger on runs watches it too (`ccat_evaluation_runs_updated`,
  migration 0009, with `qa_rejected` added to the columns it compares).
- `qa_change`: the downstream sub-groups a person's decision changed the inputs of
  (`qa_decision_id`, step, key), so that their gaps say `qa_changed`, a new value of
  `run_reason`.

Downgrade restores the trigger function of 0009 and drops the columns, the table and
the enums' new type and value (a run or gap of reason `qa_changed` becomes
`inputs_changed`).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

RUN_COLUMNS_0009 = (
    "status", "is_current", "product_count", "product_hash_sum", "finished_at", "retry_count",
    "failure_kind", "reason", "input_fingerprint", "config_fingerprint",
    "reduction_software_version_id", "sub_group_key", "created_at",
)  # fmt: skip
"""The run columns the change log compared before this migration (0009)."""
RUN_COLUMNS = (*RUN_COLUMNS_0009, "qa_rejected")
REASONS_0010 = (
    "new", "inputs_changed", "version_changed", "config_changed", "forced", "retry",
    "invalidated", "failed",
)  # fmt: skip
"""The values of `run_reason` before this migration."""


def _runs_updated(columns: tuple[str, ...]) -> str:
    """Return the trigger function that logs a change of any of `columns` (names above)."""
    old = ", ".join(f"o.{c}" for c in columns)
    new = ", ".join(f"n.{c}" for c in columns)
    return f"""
CREATE OR REPLACE FUNCTION ccat_evaluation_runs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO evaluation_change (reduction_step_id, sub_group_key)
    SELECT DISTINCT n.reduction_step_id, n.sub_group_key
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE ({old}) IS DISTINCT FROM ({new})
       OR (n.is_current AND n.finished_at IS NULL);  -- reads updated_at then
    RETURN NULL;
END $$;
"""  # noqa: S608 - column names from the constants above, not from data


def upgrade() -> None:
    op.execute("ALTER TYPE run_reason ADD VALUE IF NOT EXISTS 'qa_changed'")
    op.add_column(
        "reduction_step",
        sa.Column(
            "qa_gate",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
    )
    op.add_column(
        "executed_reduction_step",
        sa.Column("qa_rejected", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.create_table(
        "qa_decision",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("executed_reduction_step_id", sa.BigInteger(), nullable=False),
        sa.Column("rejected", sa.Boolean(), nullable=False),
        sa.Column("source", postgresql.ENUM("gate", "person", name="qa_source"), nullable=False),
        sa.Column("message", sa.String(), nullable=False),
        sa.Column("rules", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("metrics", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("undo", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("decided_by", sa.String(length=200), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["executed_reduction_step_id"],
            ["executed_reduction_step.id"],
            name=op.f("fk_qa_decision_executed_reduction_step_id_executed_reduction_step"),
        ),
    )
    op.create_index(
        op.f("ix_qa_decision_executed_reduction_step_id"),
        "qa_decision",
        ["executed_reduction_step_id"],
    )
    op.create_table(
        "qa_change",
        sa.Column(
            "qa_decision_id",
            sa.BigInteger(),
            sa.ForeignKey("qa_decision.id", name=op.f("fk_qa_change_qa_decision_id_qa_decision")),
            primary_key=True,
        ),
        sa.Column(
            "reduction_step_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "reduction_step.id",
                ondelete="CASCADE",
                name=op.f("fk_qa_change_reduction_step_id_reduction_step"),
            ),
            primary_key=True,
        ),
        sa.Column("sub_group_key", sa.String(), primary_key=True),
    )
    op.create_index(
        op.f("ix_qa_change_reduction_step_id"), "qa_change", ["reduction_step_id", "sub_group_key"]
    )
    op.execute(_runs_updated(RUN_COLUMNS))
    op.execute(
        """
        CREATE FUNCTION ccat_qa_decision_is_kept() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'qa_decision % is provenance: % is refused (a later decision is a '
                'new row)', OLD.id, TG_OP USING ERRCODE = 'restrict_violation';
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER qa_decision_is_kept BEFORE UPDATE OR DELETE ON qa_decision "
        "FOR EACH ROW EXECUTE FUNCTION ccat_qa_decision_is_kept()"
    )
    op.execute(
        "CREATE TRIGGER qa_decision_no_truncate BEFORE TRUNCATE ON qa_decision "
        "FOR EACH STATEMENT EXECUTE FUNCTION ccat_provenance_truncate_refused()"
    )


def downgrade() -> None:
    op.execute(_runs_updated(RUN_COLUMNS_0009))
    op.execute("DROP TRIGGER qa_decision_no_truncate ON qa_decision")
    op.execute("DROP TRIGGER qa_decision_is_kept ON qa_decision")
    op.execute("DROP FUNCTION ccat_qa_decision_is_kept()")
    op.drop_table("qa_change")
    op.drop_index(op.f("ix_qa_decision_executed_reduction_step_id"), table_name="qa_decision")
    op.drop_table("qa_decision")
    postgresql.ENUM(name="qa_source").drop(op.get_bind())
    op.drop_column("executed_reduction_step", "qa_rejected")
    op.drop_column("reduction_step", "qa_gate")
    _drop_qa_changed_reason()


def _drop_qa_changed_reason() -> None:
    """Recreate `run_reason` without `qa_changed` (PostgreSQL cannot drop an enum value)."""
    op.execute("DELETE FROM evaluation_gap")  # derived data: the next evaluation rebuilds it
    op.execute("DELETE FROM evaluation_state")
    op.execute(
        "ALTER TABLE executed_reduction_step "
        "DROP CONSTRAINT ck_executed_reduction_step_reason_not_failed"
    )
    op.execute("ALTER TYPE run_reason RENAME TO run_reason_0011")
    labels = ", ".join(f"'{v}'" for v in REASONS_0010)
    op.execute(f"CREATE TYPE run_reason AS ENUM ({labels})")
    op.execute(
        "ALTER TABLE executed_reduction_step ALTER COLUMN reason TYPE run_reason USING "
        "(CASE WHEN reason::text = 'qa_changed' THEN 'inputs_changed' "
        "ELSE reason::text END)::run_reason"
    )
    op.execute(
        "ALTER TABLE evaluation_gap ALTER COLUMN reason TYPE run_reason "
        "USING reason::text::run_reason"
    )
    op.execute("DROP TYPE run_reason_0011")
    op.execute(
        "ALTER TABLE executed_reduction_step ADD CONSTRAINT "
        "ck_executed_reduction_step_reason_not_failed CHECK (reason::text <> 'failed')"
    )
