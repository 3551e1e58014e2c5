"""People who create and change pipelines."""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from ccat_ops_db.models.base import Base, CreatedAt, IntPK, Name


class User(Base):
    """A person (or service account) recorded as the author of pipelines."""

    __tablename__ = "ccat_user"

    id: Mapped[IntPK]
    username: Mapped[Name] = mapped_column(unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[CreatedAt]
