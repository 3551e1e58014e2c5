"""Run attempts (requested against used), failure kinds and escalating retry factors.

Why: a run's row held only its latest attempt, so a retry after OUT_OF_MEMORY could not
ask for more than the attempt before it, and the CPU-hours of failed attempts were
overwritten. Each attempt now has a row of its own, written by a trigger on the run's
row so that no code path can skip it.

- `failure_kind` enum; `executed_reduction_step.failure_kind` (class of the latest
  failure) and `requested_resources` (what the latest attempt asked for).
- `run_attempt`: one row per attempt (requested resources, job, end, metrics), written
  when the run enters SUBMITTED and when it reaches COMPLETED, FAILED or CANCELLED.
  Existing finished runs get one row for their last attempt (requested: their snapshot's
  resources); earlier attempts of theirs were never recorded.
- An ended attempt's row is never updated again (a trigger refuses it).
- `reduction_step.retry_memory_factor` and `retry_time_factor` (default 2).
- `cleanup_scope` enum and `run_cleanup`: what `ccat-wm gc` removed of a finished run's
  directory, when, and the bytes it freed.

Downgrade drops them (the attempt history is lost with the table).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

FAILURE_KINDS = (
    "OUT_OF_MEMORY", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "EXIT_CODE", "SIGNAL", "CONTRACT",
    "NOT_STARTED", "OVER_LIMIT", "STUCK_PENDING", "LOST", "INTERNAL",
)  # fmt: skip

RECORD_ATTEMPT = """
CREATE FUNCTION ccat_run_attempt_recorded() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ran boolean := OLD.status = 'COLLECTING_RESULTS';
    had_job boolean := OLD.status IN ('SUBMITTED', 'RUNNING', 'COLLECTING_RESULTS');
BEGIN
    IF NEW.status = 'SUBMITTED' THEN
        INSERT INTO run_attempt AS a (executed_reduction_step_id, attempt,
            requested_resources, hpc_job_id, submitted_at)
        VALUES (NEW.id, NEW.retry_count, NEW.requested_resources, NEW.hpc_job_id, now())
        ON CONFLICT (executed_reduction_step_id, attempt) DO UPDATE SET
            requested_resources = EXCLUDED.requested_resources,
            hpc_job_id = EXCLUDED.hpc_job_id, submitted_at = EXCLUDED.submitted_at;
    ELSIF NEW.status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND OLD.status <> 'PENDING' THEN
        INSERT INTO run_attempt AS a (executed_reduction_step_id, attempt,
            requested_resources, hpc_job_id, status, failure_kind, failure_reason, exit_code,
            processing_time_s, peak_memory_gb, cpu_hours, finished_at)
        VALUES (NEW.id, NEW.retry_count, NEW.requested_resources,
            CASE WHEN had_job THEN NEW.hpc_job_id END, NEW.status,
            CASE WHEN NEW.status = 'FAILED' THEN NEW.failure_kind END,
            CASE WHEN NEW.status = 'FAILED' THEN NEW.failure_reason END,
            CASE WHEN ran THEN NEW.exit_code END,
            CASE WHEN ran THEN NEW.processing_time_s END,
            CASE WHEN ran THEN NEW.peak_memory_gb END,
            CASE WHEN ran THEN NEW.cpu_hours END, now())
        ON CONFLICT (executed_reduction_step_id, attempt) DO UPDATE SET
            status = EXCLUDED.status, failure_kind = EXCLUDED.failure_kind,
            failure_reason = EXCLUDED.failure_reason, exit_code = EXCLUDED.exit_code,
            processing_time_s = EXCLUDED.processing_time_s,
            peak_memory_gb = EXCLUDED.peak_memory_gb, cpu_hours = EXCLUDED.cpu_hours,
            finished_at = EXCLUDED.finished_at,
            requested_resources = coalesce(a.requested_resources, EXCLUDED.requested_resources);
    END IF;
    RETURN NULL;
END $$"""

ENDED_ATTEMPT_IS_FINAL = """
CREATE FUNCTION ccat_ended_attempt_is_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IS NOT NULL THEN
        RAISE EXCEPTION 'attempt % of run % ended %: its record is kept as it is',
            OLD.attempt, OLD.executed_reduction_step_id, OLD.status
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$"""

BACKFILL = """
INSERT INTO run_attempt (executed_reduction_step_id, attempt, requested_resources,
    hpc_job_id, status, failure_reason, exit_code, processing_time_s, peak_memory_gb,
    cpu_hours, finished_at)
SELECT r.id, r.retry_count, s.resources, r.hpc_job_id, r.status,
    CASE WHEN r.status = 'FAILED' THEN r.failure_reason END, r.exit_code,
    r.processing_time_s, r.peak_memory_gb, r.cpu_hours, r.finished_at
FROM executed_reduction_step r
LEFT JOIN run_snapshot s ON s.executed_reduction_step_id = r.id
WHERE r.status IN ('COMPLETED', 'FAILED', 'CANCELLED')"""


def upgrade() -> None:
    kind = postgresql.ENUM(*FAILURE_KINDS, name="failure_kind")
    kind.create(op.get_bind())
    kind_column = postgresql.ENUM(name="failure_kind", create_type=False)
    op.add_column("executed_reduction_step", sa.Column("failure_kind", kind_column))
    op.add_column(
        "executed_reduction_step",
        sa.Column("requested_resources", postgresql.JSONB(astext_type=sa.Text())),
    )
    for name in ("retry_memory_factor", "retry_time_factor"):
        op.add_column(
            "reduction_step",
            sa.Column(name, sa.Float(), nullable=False, server_default="2"),
        )
        op.create_check_constraint(
            op.f(f"ck_reduction_step_{name}_at_least_one"), "reduction_step", f"{name} >= 1"
        )
    op.create_table(
        "run_attempt",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column(
            "executed_reduction_step_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "executed_reduction_step.id",
                ondelete="CASCADE",
                name=op.f("fk_run_attempt_executed_reduction_step_id_executed_reduction_step"),
            ),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("requested_resources", postgresql.JSONB(astext_type=sa.Text())),
        sa.Column("hpc_job_id", sa.String(200)),
        sa.Column("status", postgresql.ENUM(name="run_status", create_type=False)),
        sa.Column("failure_kind", kind_column),
        sa.Column("failure_reason", sa.String()),
        sa.Column("exit_code", sa.Integer()),
        sa.Column("processing_time_s", sa.Float()),
        sa.Column("peak_memory_gb", sa.Float()),
        sa.Column("cpu_hours", sa.Float()),
        sa.Column("submitted_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_attempt")),
        sa.UniqueConstraint(
            "executed_reduction_step_id",
            "attempt",
            name=op.f("uq_run_attempt_executed_reduction_step_id_attempt"),
        ),
    )
    op.execute(BACKFILL)
    op.execute(ENDED_ATTEMPT_IS_FINAL)
    op.execute(
        "CREATE TRIGGER run_attempt_ended_is_final BEFORE UPDATE ON run_attempt "
        "FOR EACH ROW EXECUTE FUNCTION ccat_ended_attempt_is_final()"
    )
    scope = postgresql.ENUM("workspace", "run_directory", name="cleanup_scope")
    scope.create(op.get_bind())
    op.create_table(
        "run_cleanup",
        sa.Column("executed_reduction_step_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "scope", postgresql.ENUM(name="cleanup_scope", create_type=False), nullable=False
        ),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("files_removed", sa.Integer(), nullable=False),
        sa.Column("bytes_freed", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["executed_reduction_step_id"],
            ["executed_reduction_step.id"],
            ondelete="CASCADE",
            name=op.f("fk_run_cleanup_executed_reduction_step_id_executed_reduction_step"),
        ),
        sa.PrimaryKeyConstraint("executed_reduction_step_id", name=op.f("pk_run_cleanup")),
    )
    op.execute(RECORD_ATTEMPT)
    op.execute(
        "CREATE TRIGGER executed_reduction_step_attempts "
        "AFTER UPDATE OF status ON executed_reduction_step "
        "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) "
        "EXECUTE FUNCTION ccat_run_attempt_recorded()"
    )


def downgrade() -> None:
    op.drop_table("run_cleanup")
    op.execute("DROP TYPE cleanup_scope")
    op.execute("DROP TRIGGER executed_reduction_step_attempts ON executed_reduction_step")
    op.execute("DROP FUNCTION ccat_run_attempt_recorded()")
    op.drop_table("run_attempt")  # its trigger goes with it
    op.execute("DROP FUNCTION ccat_ended_attempt_is_final()")
    for name in ("retry_memory_factor", "retry_time_factor"):
        op.drop_constraint(op.f(f"ck_reduction_step_{name}_at_least_one"), "reduction_step")
        op.drop_column("reduction_step", name)
    op.drop_column("executed_reduction_step", "requested_resources")
    op.drop_column("executed_reduction_step", "failure_kind")
    op.execute("DROP TYPE failure_kind")
