"""Current runs and product digests for gap evaluation.

Why: `plan` and the trigger need, for every step and sub-group, its current run (the
latest COMPLETED one) and the digest of that run's products (the input set of the
downstream steps). Computing both from the whole history on every evaluation costs a
sort of all runs and a join with all products. Here the database maintains them when
a run becomes COMPLETED, whatever code completes it:

- `is_current`, unique per (step, sub-group) through a partial unique index;
- `product_count` and `product_hash_sum`, the additive digest of its products (every
  type but LOG) with the same item hash as `ccat_item_hash`, which Python uses too;
- an index over the few runs that are not COMPLETED (in flight, failed, cancelled).

Products are recorded before a run becomes COMPLETED (result collection), so the digest
is final. Existing rows are backfilled.

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

ITEM_HASH = """
CREATE FUNCTION ccat_item_hash(kind text, item_id bigint, checksum text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT hashtextextended(kind || item_id::text || ':' || checksum, 0) $$
"""

ON_COMPLETED = """
CREATE FUNCTION ccat_run_completed() RETURNS trigger LANGUAGE plpgsql AS $$
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

TRIGGER = """
CREATE TRIGGER executed_reduction_step_completed
BEFORE INSERT OR UPDATE OF status ON executed_reduction_step
FOR EACH ROW EXECUTE FUNCTION ccat_run_completed()
"""

BACKFILL = """
UPDATE executed_reduction_step r
   SET product_count = d.n, product_hash_sum = d.h
  FROM (SELECT e.id, count(p.id) AS n, coalesce(sum(ccat_item_hash('p', p.id, p.checksum)), 0) AS h
          FROM executed_reduction_step e
          LEFT JOIN data_product p
            ON p.executed_reduction_step_id = e.id AND p.data_product_type <> 'LOG'
         WHERE e.status = 'COMPLETED' GROUP BY e.id) d
 WHERE r.id = d.id;
UPDATE executed_reduction_step SET is_current = true
 WHERE id IN (SELECT DISTINCT ON (reduction_step_id, sub_group_key) id
                FROM executed_reduction_step WHERE status = 'COMPLETED'
               ORDER BY reduction_step_id, sub_group_key, id DESC)
"""


def upgrade() -> None:
    op.add_column(
        "executed_reduction_step",
        sa.Column("is_current", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column("executed_reduction_step", sa.Column("product_count", sa.Integer()))
    op.add_column("executed_reduction_step", sa.Column("product_hash_sum", sa.Numeric()))
    op.execute(ITEM_HASH)
    for statement in BACKFILL.split(";"):
        op.execute(statement)
    op.create_index(
        "uq_executed_reduction_step_one_current",
        "executed_reduction_step",
        ["reduction_step_id", "sub_group_key"],
        unique=True,
        postgresql_where=sa.text("is_current"),
    )
    op.create_index(
        "ix_executed_reduction_step_not_completed",
        "executed_reduction_step",
        ["reduction_step_id", "status"],
        postgresql_where=sa.text("status <> 'COMPLETED'"),
    )
    op.create_check_constraint(
        op.f("ck_executed_reduction_step_current_is_completed"),
        "executed_reduction_step",
        "NOT is_current OR status = 'COMPLETED'",
    )
    op.create_check_constraint(
        op.f("ck_executed_reduction_step_completed_has_digest"),
        "executed_reduction_step",
        "status <> 'COMPLETED' OR product_count IS NOT NULL",
    )
    op.execute(ON_COMPLETED)
    op.execute(TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER executed_reduction_step_completed ON executed_reduction_step")
    op.execute("DROP FUNCTION ccat_run_completed()")
    op.drop_constraint("ck_executed_reduction_step_completed_has_digest", "executed_reduction_step")
    op.drop_constraint("ck_executed_reduction_step_current_is_completed", "executed_reduction_step")
    op.drop_index("ix_executed_reduction_step_not_completed", table_name="executed_reduction_step")
    op.drop_index("uq_executed_reduction_step_one_current", table_name="executed_reduction_step")
    op.execute("DROP FUNCTION ccat_item_hash(text, bigint, text)")
    op.drop_column("executed_reduction_step", "product_hash_sum")
    op.drop_column("executed_reduction_step", "product_count")
    op.drop_column("executed_reduction_step", "is_current")
