"""Data marked bad by a person: never deleted, reversible (docs/provenance.md)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from ccat_ops_db.models.base import Base, CreatedAt, IntPK


class Invalidation(Base):
    """A raw data package, run or product marked bad, with who, when and why.

    At most one invalidation per target is active (a unique partial index per kind).

    An active invalidation (not undone) takes a raw package out of every selection and
    makes every run its data flowed into stop being current (`InvalidatedRun`).
    """

    __tablename__ = "invalidation"
    __table_args__ = (
        CheckConstraint(
            "num_nonnulls(raw_data_package_id, executed_reduction_step_id, data_product_id) = 1",
            name="exactly_one_target",
        ),
        CheckConstraint("length(reason) > 0", name="has_reason"),
        CheckConstraint("(undone_at IS NULL) = (undone_by IS NULL)", name="undo_has_user"),
        Index(
            "ix_invalidation_active_package",
            "raw_data_package_id",
            postgresql_where=text("undone_at IS NULL AND raw_data_package_id IS NOT NULL"),
        ),
        *(
            Index(
                f"uq_invalidation_active_{column.removesuffix('_id')}",
                column,
                unique=True,
                postgresql_where=text(f"undone_at IS NULL AND {column} IS NOT NULL"),
            )
            for column in ("raw_data_package_id", "executed_reduction_step_id", "data_product_id")
        ),
    )

    id: Mapped[IntPK]
    raw_data_package_id: Mapped[int | None] = mapped_column(ForeignKey("raw_data_package.id"))
    executed_reduction_step_id: Mapped[int | None] = mapped_column(
        ForeignKey("executed_reduction_step.id")
    )
    data_product_id: Mapped[int | None] = mapped_column(ForeignKey("data_product.id"))
    reason: Mapped[str] = mapped_column(String)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[CreatedAt]
    undone_at: Mapped[dt.datetime | None]
    undone_by: Mapped[str | None] = mapped_column(String(200))
    undo_reason: Mapped[str | None] = mapped_column(String)


class InvalidatedRun(Base):
    """A run the invalidated data flowed into (the target's run and everything downstream)."""

    __tablename__ = "invalidated_run"

    invalidation_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("invalidation.id"), primary_key=True
    )
    executed_reduction_step_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("executed_reduction_step.id"), primary_key=True, index=True
    )
