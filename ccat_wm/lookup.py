"""Find ops DB rows by the names people type (one query each; no domain module loaded)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.errors import CcatWmError


def pipeline_by_name(session: Session, name: str) -> m.Pipeline:
    """Return the pipeline called `name`; an unknown name is an error listing the known ones."""
    pipeline = session.scalars(select(m.Pipeline).where(m.Pipeline.name == name)).first()
    if pipeline is None:
        known = session.scalars(select(m.Pipeline.name).order_by(m.Pipeline.name)).all()
        raise CcatWmError(f"unknown pipeline {name!r}; known: {', '.join(known) or 'none'}")
    return pipeline
