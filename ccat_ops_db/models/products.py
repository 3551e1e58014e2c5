"""Data products of runs and their lineage to raw data packages."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Column, ForeignKey, String, Table
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from ccat_ops_db.models.base import Base, CreatedAt, IntPK
from ccat_ops_db.models.enums import DataProductType, pg_enum


class DataProduct(Base):
    """A file a run produced, classified by the directory it was written to."""

    __tablename__ = "data_product"
    __table_args__ = (CheckConstraint("file_size >= 0", name="file_size_non_negative"),)

    id: Mapped[IntPK]
    executed_reduction_step_id: Mapped[int] = mapped_column(
        ForeignKey("executed_reduction_step.id"), index=True
    )
    data_product_type: Mapped[DataProductType] = mapped_column(
        pg_enum(DataProductType, "data_product_type")
    )
    file_path: Mapped[str] = mapped_column(String, unique=True)
    file_size: Mapped[int] = mapped_column(BigInteger)
    checksum: Mapped[str] = mapped_column(String(128))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    created_at: Mapped[CreatedAt]


data_product_lineage = Table(
    "data_product_lineage",
    Base.metadata,
    Column(
        "data_product_id",
        ForeignKey("data_product.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "raw_data_package_id",
        ForeignKey("raw_data_package.id"),
        primary_key=True,
        index=True,
    ),
)
"""Every product to every raw data package it derives from, flattened through intermediates."""
