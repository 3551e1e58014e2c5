"""Image kinds (OCI or SIF, in a registry or a file) and the podman runtime.

Why: a software version's image was a repository and a digest, pulled by Apptainer as
`docker://` (an OCI image it converts). A SIF pushed to an OCI registry with ORAS needs
`oras://`, and a SIF may also be a plain file; Kubernetes and podman run OCI images
only. The version now says what its image is, and a location may run OCI images with
podman.

- `image_kind` enum (`oci`, `sif`); `reduction_software_version.image_kind` (default
  `oci`: what every existing version was taken to be) and `sif_path` (a SIF file).
- The runtime `podman`.
- A used version's image kind and SIF path never change, like its digest.

Downgrade: drops the two columns; a location with runtime podman becomes apptainer;
refused while a run snapshot records podman (its record would be rewritten).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

IMMUTABLE_IMAGE = """
CREATE OR REPLACE FUNCTION ccat_used_version_digest_is_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.digest IS DISTINCT FROM OLD.digest
        OR NEW.image_kind IS DISTINCT FROM OLD.image_kind
        OR NEW.sif_path IS DISTINCT FROM OLD.sif_path) AND EXISTS (
        SELECT 1 FROM executed_reduction_step WHERE reduction_software_version_id = OLD.id
    ) THEN
        RAISE EXCEPTION 'software version % (id %) was used by runs: its image (digest %, '
            'kind %, file %) never changes; publish a new version',
            OLD.tag, OLD.id, OLD.digest, OLD.image_kind, OLD.sif_path
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$"""

DIGEST_ONLY = """
CREATE OR REPLACE FUNCTION ccat_used_version_digest_is_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.digest IS DISTINCT FROM OLD.digest AND EXISTS (
        SELECT 1 FROM executed_reduction_step WHERE reduction_software_version_id = OLD.id
    ) THEN
        RAISE EXCEPTION 'software version % (id %) was used by runs: its digest % never '
            'changes; publish a new version', OLD.tag, OLD.id, OLD.digest
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$"""


def upgrade() -> None:
    op.execute("ALTER TYPE runtime_type ADD VALUE IF NOT EXISTS 'podman'")
    image_kind = postgresql.ENUM("oci", "sif", name="image_kind")
    image_kind.create(op.get_bind())
    op.add_column(
        "reduction_software_version",
        sa.Column(
            "image_kind",
            postgresql.ENUM(name="image_kind", create_type=False),
            nullable=False,
            server_default="oci",
        ),
    )
    op.add_column("reduction_software_version", sa.Column("sif_path", sa.String()))
    op.execute(IMMUTABLE_IMAGE)
    op.execute(
        "DROP TRIGGER reduction_software_version_digest_immutable ON reduction_software_version"
    )
    op.execute(
        "CREATE TRIGGER reduction_software_version_digest_immutable "
        "BEFORE UPDATE OF digest, image_kind, sif_path ON reduction_software_version "
        "FOR EACH ROW EXECUTE FUNCTION ccat_used_version_digest_is_immutable()"
    )


def downgrade() -> None:
    op.execute(
        "DROP TRIGGER reduction_software_version_digest_immutable ON reduction_software_version"
    )
    op.execute(DIGEST_ONLY)
    op.execute(
        "CREATE TRIGGER reduction_software_version_digest_immutable "
        "BEFORE UPDATE OF digest ON reduction_software_version "
        "FOR EACH ROW EXECUTE FUNCTION ccat_used_version_digest_is_immutable()"
    )
    op.drop_column("reduction_software_version", "sif_path")
    op.drop_column("reduction_software_version", "image_kind")
    op.execute("DROP TYPE image_kind")
    # A value cannot be removed from an enum: rebuild it without podman. Runs recorded
    # with podman would have their records rewritten: refuse instead.
    bind = op.get_bind()
    recorded = bind.execute(
        sa.text("SELECT count(*) FROM run_snapshot WHERE runtime = 'podman'")
    ).scalar_one()
    if recorded:
        raise RuntimeError(
            f"{recorded} run snapshot(s) record the runtime podman; a downgrade below 0007 "
            "would rewrite them: refused"
        )
    op.execute("UPDATE data_location SET runtime = 'apptainer' WHERE runtime = 'podman'")
    for table in ("data_location", "run_snapshot"):
        op.execute(f"ALTER TABLE {table} ALTER COLUMN runtime TYPE text")
    op.execute("DROP TYPE runtime_type")
    op.execute("CREATE TYPE runtime_type AS ENUM ('apptainer', 'host')")
    for table in ("data_location", "run_snapshot"):
        op.execute(
            f"ALTER TABLE {table} ALTER COLUMN runtime TYPE runtime_type "
            "USING runtime::runtime_type"
        )
