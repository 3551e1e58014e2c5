"""Declarative base, constraint naming convention and typed column aliases."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, cast

from sqlalchemy import BigInteger, DateTime, MetaData, String, Table, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

IntPK = Annotated[int, mapped_column(BigInteger, primary_key=True)]
Name = Annotated[str, mapped_column(String(200), nullable=False)]
CreatedAt = Annotated[
    dt.datetime,
    mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now()),
]
UpdatedAt = Annotated[
    dt.datetime,
    mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), onupdate=func.now()
    ),
]


class Base(DeclarativeBase):
    """Base of every ops DB model; carries the shared metadata and naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        dict[str, Any]: JSONB,
        list[Any]: JSONB,
        dt.datetime: DateTime(timezone=True),
    }


def table_of(model: type[Base]) -> Table:
    """Return a model's table, typed as a Table (for Core INSERT, UPDATE and DELETE)."""
    return cast(Table, model.__table__)
