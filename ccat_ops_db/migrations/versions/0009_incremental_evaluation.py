"""Incremental gap evaluation: a change log written by triggers, and kept evaluations.

Why: every trigger tick re-read the whole history of every pipeline (seconds per
pipeline at a million packages). A tick now re-evaluates only the sub-groups that
changed since the previous one; this migration gives it what it needs:

- `evaluation_change`: a row per change that can move a gap, written by triggers so
  no code path can skip it: packages inserted, updated or deleted (their scans);
  packages or runs invalidated or un-invalidated; runs inserted or updated in a column
  gap evaluation reads (their step and sub-group); names and relations that keys are
  made of (scans, obs units, sources, lines, programs, modules, instruments) updated or
  deleted (`everything`: the next tick rebuilds). `xid` is the writer's transaction.
- `evaluation_state`, `evaluation_fine`, `evaluation_member`, `evaluation_downstream`,
  `evaluation_gap`: per pipeline, derived data the tick keeps (see the models).
  Deleting them loses nothing.

Downgrade drops them and the triggers.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

RUN_COLUMNS = (
    "status", "is_current", "product_count", "product_hash_sum", "finished_at", "retry_count",
    "failure_kind", "reason", "input_fingerprint", "config_fingerprint",
    "reduction_software_version_id", "sub_group_key", "created_at",
)  # fmt: skip
"""The run columns gap evaluation reads: an update of any other column moves no gap."""

DIMENSION_TABLES = (
    "executed_obs_unit", "obs_unit", "source", "line", "observing_program",
    "instrument_module", "instrument",
)  # fmt: skip

_old = ", ".join(f"o.{c}" for c in RUN_COLUMNS)
_new = ", ".join(f"n.{c}" for c in RUN_COLUMNS)

# Column names come from the constants above, not from data.
FUNCTIONS = f"""
CREATE FUNCTION ccat_evaluation_packages_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO evaluation_change (executed_obs_unit_id)
        SELECT DISTINCT executed_obs_unit_id FROM new_rows;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO evaluation_change (executed_obs_unit_id)
        SELECT DISTINCT executed_obs_unit_id FROM old_rows;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION ccat_evaluation_runs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO evaluation_change (reduction_step_id, sub_group_key)
    SELECT DISTINCT reduction_step_id, sub_group_key FROM new_rows;
    RETURN NULL;
END $$;

CREATE FUNCTION ccat_evaluation_runs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO evaluation_change (reduction_step_id, sub_group_key)
    SELECT DISTINCT n.reduction_step_id, n.sub_group_key
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE ({_old}) IS DISTINCT FROM ({_new})
       OR (n.is_current AND n.finished_at IS NULL);  -- reads updated_at then
    RETURN NULL;
END $$;

CREATE FUNCTION ccat_evaluation_invalidated_runs_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO evaluation_change (reduction_step_id, sub_group_key)
        SELECT DISTINCT r.reduction_step_id, r.sub_group_key
        FROM new_rows ir JOIN executed_reduction_step r ON r.id = ir.executed_reduction_step_id;
    ELSE
        INSERT INTO evaluation_change (reduction_step_id, sub_group_key)
        SELECT DISTINCT r.reduction_step_id, r.sub_group_key
        FROM old_rows ir JOIN executed_reduction_step r ON r.id = ir.executed_reduction_step_id;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION ccat_evaluation_invalidation_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.raw_data_package_id IS NOT NULL THEN
        INSERT INTO evaluation_change (executed_obs_unit_id)
        SELECT executed_obs_unit_id FROM raw_data_package WHERE id = NEW.raw_data_package_id;
    END IF;
    INSERT INTO evaluation_change (reduction_step_id, sub_group_key)
    SELECT DISTINCT r.reduction_step_id, r.sub_group_key
    FROM invalidated_run ir JOIN executed_reduction_step r ON r.id = ir.executed_reduction_step_id
    WHERE ir.invalidation_id = NEW.id;
    RETURN NULL;
END $$;

CREATE FUNCTION ccat_evaluation_names_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM old_rows) THEN
        INSERT INTO evaluation_change (everything) VALUES (true);
    END IF;
    RETURN NULL;
END $$;
"""  # noqa: S608

TRIGGERS = [
    ("raw_data_package", "evaluation_packages_inserted", "INSERT",
     "NEW TABLE AS new_rows", "ccat_evaluation_packages_changed"),
    ("raw_data_package", "evaluation_packages_updated", "UPDATE",
     "OLD TABLE AS old_rows NEW TABLE AS new_rows", "ccat_evaluation_packages_changed"),
    ("raw_data_package", "evaluation_packages_deleted", "DELETE",
     "OLD TABLE AS old_rows", "ccat_evaluation_packages_changed"),
    ("executed_reduction_step", "evaluation_runs_inserted", "INSERT",
     "NEW TABLE AS new_rows", "ccat_evaluation_runs_inserted"),
    ("executed_reduction_step", "evaluation_runs_updated", "UPDATE",
     "OLD TABLE AS old_rows NEW TABLE AS new_rows", "ccat_evaluation_runs_updated"),
    ("invalidated_run", "evaluation_invalidated_runs_inserted", "INSERT",
     "NEW TABLE AS new_rows", "ccat_evaluation_invalidated_runs_changed"),
    ("invalidated_run", "evaluation_invalidated_runs_deleted", "DELETE",
     "OLD TABLE AS old_rows", "ccat_evaluation_invalidated_runs_changed"),
    *[
        (table, f"evaluation_{table}_{op_name.lower()}d", op_name, "OLD TABLE AS old_rows",
         "ccat_evaluation_names_changed")
        for table in DIMENSION_TABLES
        for op_name in ("UPDATE", "DELETE")
    ],
]  # fmt: skip


def _pipeline_fk(table: str) -> sa.Column[int]:
    return sa.Column(
        "pipeline_id",
        sa.BigInteger(),
        sa.ForeignKey(
            "pipeline.id", ondelete="CASCADE", name=op.f(f"fk_{table}_pipeline_id_pipeline")
        ),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "evaluation_change",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column(
            "xid",
            sa.BigInteger(),
            server_default=sa.text("(pg_current_xact_id()::text)::bigint"),
            nullable=False,
        ),
        sa.Column("executed_obs_unit_id", sa.BigInteger()),
        sa.Column("reduction_step_id", sa.BigInteger()),
        sa.Column("sub_group_key", sa.String()),
        sa.Column("everything", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluation_change")),
    )
    op.create_index(op.f("ix_evaluation_change_xid"), "evaluation_change", ["xid"])
    op.create_table(
        "evaluation_state",
        _pipeline_fk("evaluation_state"),
        sa.Column("definition", sa.String(), nullable=False),
        sa.Column("watermark", sa.BigInteger(), nullable=False),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pipeline_id", name=op.f("pk_evaluation_state")),
    )
    op.create_table(
        "evaluation_fine",
        _pipeline_fk("evaluation_fine"),
        sa.Column("executed_obs_unit_id", sa.BigInteger(), nullable=False),
        sa.Column("instrument_module_id", sa.BigInteger(), nullable=False),
        sa.Column("inputs", sa.BigInteger(), nullable=False),
        sa.Column("hash_sum", sa.Numeric(), nullable=False),
        sa.Column("last_change", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tags", postgresql.ARRAY(sa.String()), nullable=False),
        sa.PrimaryKeyConstraint(
            "pipeline_id",
            "executed_obs_unit_id",
            "instrument_module_id",
            name=op.f("pk_evaluation_fine"),
        ),
    )
    op.create_index("ix_evaluation_fine_tags", "evaluation_fine", ["tags"], postgresql_using="gin")
    op.create_table(
        "evaluation_member",
        _pipeline_fk("evaluation_member"),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("sub_group_key", sa.String(), nullable=False),
        sa.Column("upstream_index", sa.Integer(), nullable=False),
        sa.Column("upstream_key", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint(
            "pipeline_id",
            "step_index",
            "sub_group_key",
            "upstream_index",
            "upstream_key",
            name=op.f("pk_evaluation_member"),
        ),
    )
    op.create_index(
        "ix_evaluation_member_upstream",
        "evaluation_member",
        ["pipeline_id", "upstream_index", "upstream_key"],
    )
    op.create_table(
        "evaluation_downstream",
        _pipeline_fk("evaluation_downstream"),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("sub_group_key", sa.String(), nullable=False),
        sa.Column("inputs", sa.BigInteger(), nullable=False),
        sa.Column("hash_sum", sa.Numeric(), nullable=False),
        sa.Column("last_change", sa.DateTime(timezone=True)),
        sa.Column("oldest_unprocessed", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint(
            "pipeline_id", "step_index", "sub_group_key", name=op.f("pk_evaluation_downstream")
        ),
    )
    op.create_table(
        "evaluation_gap",
        _pipeline_fk("evaluation_gap"),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("sub_group_key", sa.String(), nullable=False),
        sa.Column("reason", postgresql.ENUM(name="run_reason", create_type=False), nullable=False),
        sa.Column("ready", sa.Boolean(), nullable=False),
        sa.Column("inputs", sa.BigInteger(), nullable=False),
        sa.Column("input_fingerprint", sa.String(), nullable=False),
        sa.Column("last_change", sa.DateTime(timezone=True)),
        sa.Column("oldest_unprocessed", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint(
            "pipeline_id", "step_index", "sub_group_key", name=op.f("pk_evaluation_gap")
        ),
    )
    op.execute(FUNCTIONS)
    for table, name, event, referencing, function in TRIGGERS:
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON {table} REFERENCING {referencing} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )
    op.execute(
        "CREATE TRIGGER evaluation_invalidation_changed AFTER INSERT OR UPDATE ON invalidation "
        "FOR EACH ROW EXECUTE FUNCTION ccat_evaluation_invalidation_changed()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER evaluation_invalidation_changed ON invalidation")
    for table, name, *_ in TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON {table}")
    for function in (
        "ccat_evaluation_packages_changed", "ccat_evaluation_runs_inserted",
        "ccat_evaluation_runs_updated", "ccat_evaluation_invalidated_runs_changed",
        "ccat_evaluation_invalidation_changed", "ccat_evaluation_names_changed",
    ):  # fmt: skip
        op.execute(f"DROP FUNCTION {function}()")
    for table in (
        "evaluation_gap", "evaluation_downstream", "evaluation_member", "evaluation_fine",
        "evaluation_state", "evaluation_change",
    ):  # fmt: skip
        op.drop_table(table)
