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


MAX_ID = 2**63 - 1
"""The largest id the ops DB holds (BIGINT)."""


def _as_id(given: str, what: str) -> int | None:
    """Return `given` as an id if it is a number (refusing one beyond BIGINT), else None."""
    if not given.isdigit():
        return None
    if int(given) > MAX_ID:
        raise CcatWmError(f"no {what} with id {given}: ids are at most {MAX_ID}")
    return int(given)


def raw_package_id(session: Session, given: str) -> int:
    """Return the id of the raw data package given by id or by name (`ccat-wm raw` lists them)."""
    number = _as_id(given, "raw data package")
    if number is not None:
        return number
    found = session.scalar(select(m.RawDataPackage.id).where(m.RawDataPackage.name == given))
    if found is None:
        raise CcatWmError(f"no raw data package named {given!r}; `ccat-wm raw` lists them")
    return found


def product_id(session: Session, given: str) -> int:
    """Return the id of the product given by id or by file path (`ccat-wm products` lists them)."""
    from ccat_wm.execution.control import path_candidates  # noqa: PLC0415 - only for a path

    number = _as_id(given, "data product")
    if number is not None:
        return number
    found = session.scalar(
        select(m.DataProduct.id).where(m.DataProduct.file_path.in_(path_candidates(session, given)))
    )
    if found is None:
        raise CcatWmError(f"no data product with path {given!r}; `ccat-wm products` lists them")
    return found
