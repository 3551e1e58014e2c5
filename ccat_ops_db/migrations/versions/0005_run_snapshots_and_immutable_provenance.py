"""Runs keep their own record of what they used, and the database refuses to rewrite it.

Why: lineage read the current config and software rows, so a config edit or a
rewritten image digest silently changed what old runs were said to have used. Now:

- `run_snapshot`: one row per run, written when the run starts (config parameters,
  environment without secret values, command template, resources, software, tag,
  image repository and digest, location, backend, runtime). No UPDATE or DELETE.
- A run's identity (step, sub-group, reason, fingerprints, software version) never
  changes, nor its `execution_command` once recorded; an input row (with the checksum
  the run was given) is never updated.
- A software version's digest, and its software's image repository (`ghcr_url`),
  never change once a run used the version.

Backfill: every run that has left PENDING gets a snapshot with origin `backfilled`,
taken from the current rows. Parameters, environment, command template and image
repository are known only where the step's current config still has the fingerprint
the run recorded; otherwise they are NULL and named in `unknown`. Resources are not
part of that fingerprint, so they are always unknown for backfilled runs. The digest
is the version's digest at migration time.

Downgrade drops the table and the triggers (the snapshots are lost).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SECRET_WORDS = frozenset(
    {"SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "TOKEN", "KEY", "APIKEY", "CREDENTIAL",
     "CREDENTIALS", "PRIVATE"}
)  # fmt: skip
"""Frozen copy of `ccat_wm.execution.snapshot.SECRET_WORDS` as of this migration."""

FUNCTIONS = {
    "ccat_snapshot_is_immutable": """
BEGIN
    RAISE EXCEPTION 'run % snapshot is immutable: what a run used is never rewritten',
        OLD.executed_reduction_step_id USING ERRCODE = 'restrict_violation';
END""",
    "ccat_run_identity_is_immutable": """
BEGIN
    IF NEW.reduction_step_id IS DISTINCT FROM OLD.reduction_step_id
       OR NEW.sub_group_key IS DISTINCT FROM OLD.sub_group_key
       OR NEW.reason IS DISTINCT FROM OLD.reason
       OR NEW.input_fingerprint IS DISTINCT FROM OLD.input_fingerprint
       OR NEW.config_fingerprint IS DISTINCT FROM OLD.config_fingerprint
       OR NEW.reduction_software_version_id IS DISTINCT FROM OLD.reduction_software_version_id
    THEN
        RAISE EXCEPTION 'run %: its step, sub-group, reason, fingerprints and software '
            'version are recorded for good', OLD.id USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.execution_command IS NOT NULL
       AND NEW.execution_command IS DISTINCT FROM OLD.execution_command THEN
        RAISE EXCEPTION 'run %: its execution_command is recorded for good', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END""",
    "ccat_run_input_is_immutable": """
BEGIN
    RAISE EXCEPTION 'input % of run %: the inputs a run was given are recorded for good',
        OLD.id, OLD.executed_reduction_step_id USING ERRCODE = 'restrict_violation';
END""",
    "ccat_used_version_digest_is_immutable": """
BEGIN
    IF NEW.digest IS DISTINCT FROM OLD.digest AND EXISTS (
        SELECT 1 FROM executed_reduction_step WHERE reduction_software_version_id = OLD.id
    ) THEN
        RAISE EXCEPTION 'software version % (id %) was used by runs: its digest % never '
            'changes; publish a new version', OLD.tag, OLD.id, OLD.digest
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END""",
    "ccat_used_software_image_is_immutable": """
BEGIN
    IF NEW.ghcr_url IS DISTINCT FROM OLD.ghcr_url AND EXISTS (
        SELECT 1 FROM executed_reduction_step r
        JOIN reduction_software_version v ON v.id = r.reduction_software_version_id
        WHERE v.reduction_software_id = OLD.id
    ) THEN
        RAISE EXCEPTION 'software % has versions used by runs: its image repository % never '
            'changes', OLD.name, OLD.ghcr_url USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END""",
}

TRIGGERS = {
    "run_snapshot_immutable": (
        "BEFORE UPDATE OR DELETE ON run_snapshot",
        "ccat_snapshot_is_immutable",
    ),
    "executed_reduction_step_identity_immutable": (
        "BEFORE UPDATE ON executed_reduction_step",
        "ccat_run_identity_is_immutable",
    ),
    "executed_reduction_step_input_immutable": (
        "BEFORE UPDATE ON executed_reduction_step_input",
        "ccat_run_input_is_immutable",
    ),
    "reduction_software_version_digest_immutable": (
        "BEFORE UPDATE OF digest ON reduction_software_version",
        "ccat_used_version_digest_is_immutable",
    ),
    "reduction_software_image_immutable": (
        "BEFORE UPDATE OF ghcr_url ON reduction_software",
        "ccat_used_software_image_is_immutable",
    ),
}


def _is_secret(name: str) -> bool:
    return any(word in SECRET_WORDS for word in name.upper().split("_"))


def _fingerprint(parameters: object, environment: object, command: object, image: str) -> str:
    """Frozen copy of `ccat_wm.gaps.steps.config_fingerprint` as of this migration."""
    payload = {
        "parameters": parameters,
        "environment": environment,
        "command": command,
        "image": image,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def upgrade() -> None:
    origin = postgresql.ENUM("recorded", "backfilled", name="snapshot_origin")
    origin.create(op.get_bind())
    op.create_table(
        "run_snapshot",
        sa.Column(
            "executed_reduction_step_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "executed_reduction_step.id",
                name=op.f("fk_run_snapshot_executed_reduction_step_id_executed_reduction_step"),
            ),
            nullable=False,
        ),
        sa.Column(
            "origin", postgresql.ENUM(name="snapshot_origin", create_type=False), nullable=False
        ),
        sa.Column("unknown", postgresql.ARRAY(sa.String()), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("location", sa.String(200), nullable=False),
        sa.Column("backend", postgresql.ENUM(name="backend_type", create_type=False)),
        sa.Column("runtime", postgresql.ENUM(name="runtime_type", create_type=False)),
        sa.Column("software", sa.String(200), nullable=False),
        sa.Column("software_tag", sa.String(100), nullable=False),
        sa.Column("image_repository", sa.String()),
        sa.Column("image_digest", sa.String(100)),
        sa.Column("config_name", sa.String(200), nullable=False),
        sa.Column("parameters", postgresql.JSONB()),
        sa.Column("environment", postgresql.JSONB()),
        sa.Column("withheld_environment", postgresql.ARRAY(sa.String()), nullable=False),
        sa.Column("command_template", postgresql.JSONB()),
        sa.Column("resources", postgresql.JSONB()),
        sa.PrimaryKeyConstraint("executed_reduction_step_id", name=op.f("pk_run_snapshot")),
    )
    _backfill()
    for name, body in FUNCTIONS.items():
        op.execute(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $${body}\n$$")
    for trigger, (when, function) in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {trigger} {when} FOR EACH ROW EXECUTE FUNCTION {function}()")


def _backfill() -> None:
    """Snapshot every run past PENDING from the current rows (see the module docstring)."""
    bind = op.get_bind()
    steps = bind.execute(
        sa.text(
            "SELECT s.id, c.config_parameters, c.environment_variables, c.command_template, "
            "sw.ghcr_url, sw.name FROM reduction_step s "
            "JOIN reduction_step_config c ON c.id = s.reduction_step_config_id "
            "JOIN reduction_software sw ON sw.id = s.reduction_software_id"
        )
    ).all()
    op.execute(
        "CREATE TEMPORARY TABLE ccat_step_now (step_id bigint PRIMARY KEY, fingerprint text, "
        "environment jsonb, withheld text[]) ON COMMIT DROP"
    )
    rows = []
    for step_id, params, env_or_none, command, url, software in steps:
        env = env_or_none or {}
        rows.append(
            {
                "step_id": step_id,
                "fingerprint": _fingerprint(params, env, command, url or software),
                "environment": json.dumps({k: v for k, v in env.items() if not _is_secret(k)}),
                "withheld": sorted(k for k in env if _is_secret(k)),
            }
        )
    if rows:
        bind.execute(
            sa.text(
                "INSERT INTO ccat_step_now VALUES "
                "(:step_id, :fingerprint, CAST(:environment AS jsonb), :withheld)"
            ),
            rows,
        )
    op.execute(
        """
        INSERT INTO run_snapshot (
            executed_reduction_step_id, origin, unknown, recorded_at, location, backend,
            runtime, software, software_tag, image_repository, image_digest, config_name,
            parameters, environment, withheld_environment, command_template, resources)
        SELECT r.id, 'backfilled',
               CASE WHEN known THEN ARRAY['resources']
                    ELSE ARRAY['parameters', 'environment', 'command_template',
                               'image_repository', 'resources'] END,
               COALESCE(r.started_at, r.created_at), l.name, l.backend, l.runtime,
               sw.name, v.tag,
               CASE WHEN known THEN sw.ghcr_url END, v.digest, c.name,
               CASE WHEN known THEN c.config_parameters END,
               CASE WHEN known THEN n.environment END,
               CASE WHEN known THEN n.withheld ELSE ARRAY[]::text[] END,
               CASE WHEN known THEN c.command_template END,
               NULL
        FROM (SELECT r.*, r.config_fingerprint = n.fingerprint AS known
              FROM executed_reduction_step r JOIN ccat_step_now n ON n.step_id = r.reduction_step_id
              WHERE r.status <> 'PENDING') r
        JOIN ccat_step_now n ON n.step_id = r.reduction_step_id
        JOIN reduction_step s ON s.id = r.reduction_step_id
        JOIN reduction_step_config c ON c.id = s.reduction_step_config_id
        JOIN pipeline p ON p.id = s.pipeline_id
        JOIN data_location l ON l.id = p.processing_location_id
        JOIN reduction_software_version v ON v.id = r.reduction_software_version_id
        JOIN reduction_software sw ON sw.id = v.reduction_software_id
        """
    )


def downgrade() -> None:
    for trigger, (when, _) in TRIGGERS.items():
        table = when.rsplit(" ON ", 1)[1]
        op.execute(f"DROP TRIGGER {trigger} ON {table}")
    for name in FUNCTIONS:
        op.execute(f"DROP FUNCTION {name}()")
    op.drop_table("run_snapshot")
    op.execute("DROP TYPE snapshot_origin")
