"""Sites, data locations, physical copies of raw data and staging jobs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, String, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from ccat_ops_db.models.base import Base, CreatedAt, IntPK, Name, UpdatedAt
from ccat_ops_db.models.enums import (
    Backend,
    LocationType,
    Runtime,
    StagingStatus,
    StorageType,
    pg_enum,
)


class Site(Base):
    """A data center or observatory site (e.g. cologne)."""

    __tablename__ = "site"

    id: Mapped[IntPK]
    name: Mapped[Name] = mapped_column(unique=True)
    description: Mapped[str] = mapped_column(String, default="")


class DataLocation(Base):
    """A place data lives or is processed; PROCESSING locations name their backend."""

    __tablename__ = "data_location"
    __table_args__ = (
        CheckConstraint(
            "location_type <> 'PROCESSING' OR (backend IS NOT NULL AND runtime IS NOT NULL)",
            name="processing_has_backend",
        ),
        CheckConstraint(
            "location_type = 'PROCESSING' OR (backend IS NULL AND runtime IS NULL)",
            name="backend_only_for_processing",
        ),
    )

    id: Mapped[IntPK]
    name: Mapped[Name] = mapped_column(unique=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("site.id"), index=True)
    location_type: Mapped[LocationType] = mapped_column(pg_enum(LocationType, "location_type"))
    storage_type: Mapped[StorageType] = mapped_column(pg_enum(StorageType, "storage_type"))
    path: Mapped[str] = mapped_column(String)
    backend: Mapped[Backend | None] = mapped_column(pg_enum(Backend, "backend_type"))
    runtime: Mapped[Runtime | None] = mapped_column(pg_enum(Runtime, "runtime_type"))
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class RawDataPackageCopy(Base):
    """A physical copy of a raw data package at one location."""

    __tablename__ = "raw_data_package_copy"
    __table_args__ = (UniqueConstraint("raw_data_package_id", "data_location_id"),)

    id: Mapped[IntPK]
    raw_data_package_id: Mapped[int] = mapped_column(
        ForeignKey("raw_data_package.id", ondelete="CASCADE"), index=True
    )
    data_location_id: Mapped[int] = mapped_column(ForeignKey("data_location.id"), index=True)
    path: Mapped[str] = mapped_column(String)
    verified_at: Mapped[dt.datetime | None]
    created_at: Mapped[CreatedAt]


class StagingJob(Base):
    """A request to bring a package to a processing location, served by a transfer system."""

    __tablename__ = "staging_job"

    id: Mapped[IntPK]
    raw_data_package_id: Mapped[int] = mapped_column(ForeignKey("raw_data_package.id"), index=True)
    source_location_id: Mapped[int | None] = mapped_column(ForeignKey("data_location.id"))
    destination_location_id: Mapped[int] = mapped_column(ForeignKey("data_location.id"))
    executed_reduction_step_id: Mapped[int | None] = mapped_column(
        ForeignKey("executed_reduction_step.id"), index=True
    )
    destination_path: Mapped[str] = mapped_column(String)
    status: Mapped[StagingStatus] = mapped_column(
        pg_enum(StagingStatus, "staging_status"), default=StagingStatus.PENDING
    )
    error_message: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
