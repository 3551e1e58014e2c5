"""Data a person marks bad: `invalidation` and the runs it reaches, the reason `invalidated`.

Why: a raw package found bad (a broken receiver, a wrong calibration load) must leave
every selection, and everything made from it must stop counting, so that the affected
sub-groups are re-made; and the marking must be recorded (who, when, why), never
deleted, and reversible.

- `invalidation`: one row per package, run or product marked bad; `undone_at`,
  `undone_by`, `undo_reason` record an undo. No DELETE; an UPDATE may only record the
  undo, once.
- `invalidated_run`: the runs the invalidated data flowed into (never changed).
- The run reason `invalidated`.
- A run completed while data it used is invalidated never becomes current.

Downgrade: drops both tables (and so the markings); runs recorded with the reason
`invalidated` become `inputs_changed`.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

OLD_REASONS = (
    "new", "inputs_changed", "version_changed", "config_changed", "forced", "retry", "failed",
)  # fmt: skip

COMPLETED_BEFORE = """
CREATE OR REPLACE FUNCTION ccat_run_completed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'COMPLETED'
       AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM 'COMPLETED') THEN
        UPDATE executed_reduction_step SET is_current = false
         WHERE reduction_step_id = NEW.reduction_step_id
           AND sub_group_key = NEW.sub_group_key AND is_current AND id <> NEW.id;
        NEW.is_current := true;
        SELECT count(*), coalesce(sum(ccat_item_hash('p', id, checksum)), 0)
          INTO NEW.product_count, NEW.product_hash_sum
          FROM data_product
         WHERE executed_reduction_step_id = NEW.id AND data_product_type <> 'LOG';
    END IF;
    RETURN NEW;
END
$$
"""

COMPLETED_NOW = """
CREATE OR REPLACE FUNCTION ccat_run_completed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'COMPLETED'
       AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM 'COMPLETED') THEN
        SELECT count(*), coalesce(sum(ccat_item_hash('p', id, checksum)), 0)
          INTO NEW.product_count, NEW.product_hash_sum
          FROM data_product
         WHERE executed_reduction_step_id = NEW.id AND data_product_type <> 'LOG';
        IF TG_OP = 'UPDATE' AND EXISTS (
            SELECT 1 FROM invalidated_run ir JOIN invalidation i ON i.id = ir.invalidation_id
             WHERE ir.executed_reduction_step_id = NEW.id AND i.undone_at IS NULL
        ) THEN
            NEW.is_current := false;  -- made from invalidated data: never current
            RETURN NEW;
        END IF;
        UPDATE executed_reduction_step SET is_current = false
         WHERE reduction_step_id = NEW.reduction_step_id
           AND sub_group_key = NEW.sub_group_key AND is_current AND id <> NEW.id;
        NEW.is_current := true;
    END IF;
    RETURN NEW;
END
$$
"""

GUARDS = {
    "ccat_invalidation_kept": (
        "BEFORE UPDATE OR DELETE ON invalidation",
        """
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'invalidation %: markings are never deleted; undo it with '
            '`ccat-wm invalidate --undo`', OLD.id USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.undone_at IS NOT NULL
       OR (NEW.raw_data_package_id, NEW.executed_reduction_step_id, NEW.data_product_id,
           NEW.reason, NEW.created_by, NEW.created_at)
          IS DISTINCT FROM
          (OLD.raw_data_package_id, OLD.executed_reduction_step_id, OLD.data_product_id,
           OLD.reason, OLD.created_by, OLD.created_at) THEN
        RAISE EXCEPTION 'invalidation %: only its undo can be recorded, once', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END""",
    ),
    "ccat_invalidated_run_kept": (
        "BEFORE UPDATE OR DELETE ON invalidated_run",
        """
BEGIN
    RAISE EXCEPTION 'the runs an invalidation reached are recorded for good'
        USING ERRCODE = 'restrict_violation';
END""",
    ),
}


def upgrade() -> None:
    op.execute("ALTER TYPE run_reason ADD VALUE IF NOT EXISTS 'invalidated'")
    op.create_table(
        "invalidation",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column(
            "raw_data_package_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "raw_data_package.id",
                name=op.f("fk_invalidation_raw_data_package_id_raw_data_package"),
            ),
        ),
        sa.Column(
            "executed_reduction_step_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "executed_reduction_step.id",
                name=op.f("fk_invalidation_executed_reduction_step_id_executed_reduction_step"),
            ),
        ),
        sa.Column(
            "data_product_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "data_product.id", name=op.f("fk_invalidation_data_product_id_data_product")
            ),
        ),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("undone_at", sa.DateTime(timezone=True)),
        sa.Column("undone_by", sa.String(200)),
        sa.Column("undo_reason", sa.String()),
        sa.CheckConstraint(
            "num_nonnulls(raw_data_package_id, executed_reduction_step_id, data_product_id) = 1",
            name=op.f("ck_invalidation_exactly_one_target"),
        ),
        sa.CheckConstraint("length(reason) > 0", name=op.f("ck_invalidation_has_reason")),
        sa.CheckConstraint(
            "(undone_at IS NULL) = (undone_by IS NULL)", name=op.f("ck_invalidation_undo_has_user")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invalidation")),
    )
    op.create_index(
        "ix_invalidation_active_package",
        "invalidation",
        ["raw_data_package_id"],
        postgresql_where=sa.text("undone_at IS NULL AND raw_data_package_id IS NOT NULL"),
    )
    op.create_table(
        "invalidated_run",
        sa.Column(
            "invalidation_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "invalidation.id", name=op.f("fk_invalidated_run_invalidation_id_invalidation")
            ),
            nullable=False,
        ),
        sa.Column(
            "executed_reduction_step_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "executed_reduction_step.id",
                name=op.f("fk_invalidated_run_executed_reduction_step_id_executed_reduction_step"),
            ),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint(
            "invalidation_id", "executed_reduction_step_id", name=op.f("pk_invalidated_run")
        ),
    )
    op.create_index(
        op.f("ix_invalidated_run_executed_reduction_step_id"),
        "invalidated_run",
        ["executed_reduction_step_id"],
    )
    op.execute(COMPLETED_NOW)
    for name, (when, body) in GUARDS.items():
        op.execute(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $${body}\n$$")
        op.execute(f"CREATE TRIGGER {name} {when} FOR EACH ROW EXECUTE FUNCTION {name}()")


def downgrade() -> None:
    for name, (when, _) in GUARDS.items():
        op.execute(f"DROP TRIGGER {name} ON {when.rsplit(' ON ', 1)[1]}")
        op.execute(f"DROP FUNCTION {name}()")
    op.execute(COMPLETED_BEFORE)
    op.drop_table("invalidated_run")
    op.drop_table("invalidation")
    labels = ", ".join(f"'{v}'" for v in OLD_REASONS)
    op.execute(
        "ALTER TABLE executed_reduction_step DROP CONSTRAINT ck_executed_reduction_step_reason_not_failed"
    )
    op.execute("ALTER TYPE run_reason RENAME TO run_reason_0006")
    op.execute(f"CREATE TYPE run_reason AS ENUM ({labels})")
    op.execute(
        "ALTER TABLE executed_reduction_step ALTER COLUMN reason TYPE run_reason USING "
        "(CASE WHEN reason::text = 'invalidated' THEN 'inputs_changed' "
        "ELSE reason::text END)::run_reason"
    )
    op.execute("DROP TYPE run_reason_0006")
    op.execute(
        "ALTER TABLE executed_reduction_step ADD CONSTRAINT "
        "ck_executed_reduction_step_reason_not_failed CHECK (reason::text <> 'failed')"
    )
