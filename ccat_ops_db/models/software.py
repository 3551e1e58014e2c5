"""Reduction software (container images) and their released versions."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from ccat_ops_db.models.base import Base, CreatedAt, IntPK, Name
from ccat_ops_db.models.enums import ImageKind, pg_enum


class ReductionSoftware(Base):
    """A reduction program shipped as a container image."""

    __tablename__ = "reduction_software"

    id: Mapped[IntPK]
    name: Mapped[Name] = mapped_column(unique=True)
    ghcr_url: Mapped[str] = mapped_column(String, default="")
    github_repo_url: Mapped[str] = mapped_column(String, default="")
    description: Mapped[str] = mapped_column(String, default="")
    created_at: Mapped[CreatedAt]


class ReductionSoftwareVersion(Base):
    """One released version (tag, image digest) of a reduction software."""

    __tablename__ = "reduction_software_version"
    __table_args__ = (
        UniqueConstraint("reduction_software_id", "tag"),
        Index(
            "uq_reduction_software_version_one_latest",
            "reduction_software_id",
            unique=True,
            postgresql_where=text("is_latest"),
        ),
    )

    id: Mapped[IntPK]
    reduction_software_id: Mapped[int] = mapped_column(
        ForeignKey("reduction_software.id"), index=True
    )
    tag: Mapped[str] = mapped_column(String(100))
    digest: Mapped[str | None] = mapped_column(String(100))
    """`sha256:<hex>`: the OCI manifest digest (OCI images, SIFs pushed with ORAS), or the
    SHA-256 of the SIF file itself (`sif_path`)."""
    image_kind: Mapped[ImageKind] = mapped_column(
        pg_enum(ImageKind, "image_kind"), default=ImageKind.OCI, server_default="oci"
    )
    sif_path: Mapped[str | None] = mapped_column(String)
    """A SIF file on the processing location's file system, instead of a registry."""
    is_latest: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[CreatedAt]
