"""Find the data: the products runs made, and the raw data packages, newest first.

`ccat-wm products` and `ccat-wm raw` list them with the ids other commands take
(`lineage`, `invalidate`), and each listing is one query, bounded by `limit`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m

RUN = m.ExecutedReductionStep


@dataclass(frozen=True, slots=True)
class ProductRow:
    """One product: what it is, where it is, and the run that made it."""

    id: int
    pipeline: str
    step: str
    sub_group_key: str
    run_id: int
    type: str
    path: str
    size: int
    created_at: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        """Return the row as JSON-ready values (times in ISO 8601 with their zone)."""
        return {**asdict(self), "created_at": self.created_at.isoformat()}


@dataclass(frozen=True, slots=True)
class RawRow:
    """One raw data package: its scan, source, line and module, and where its copies are."""

    id: int
    name: str
    scan: str
    source: str
    line: str
    module: str
    size: int
    state: str
    created_at: dt.datetime
    paths: list[str]
    """`location:path` of each copy."""

    def as_dict(self) -> dict[str, Any]:
        """Return the row as JSON-ready values (times in ISO 8601 with their zone)."""
        return {**asdict(self), "created_at": self.created_at.isoformat()}


def list_products(  # noqa: PLR0917 - one filter per parameter, all optional
    session: Session,
    pipeline: str | None = None,
    step: str | None = None,
    product_type: m.DataProductType | None = None,
    since: dt.datetime | None = None,
    limit: int = 50,
) -> list[ProductRow]:
    """Return the products that match, newest first (at most `limit`)."""
    query = (
        select(
            m.DataProduct.id, m.Pipeline.name, m.ReductionStep.name, RUN.sub_group_key, RUN.id,
            m.DataProduct.data_product_type, m.DataProduct.file_path, m.DataProduct.file_size,
            m.DataProduct.created_at,
        )
        .join(RUN, RUN.id == m.DataProduct.executed_reduction_step_id)
        .join(RUN.reduction_step)
        .join(m.ReductionStep.pipeline)
        .order_by(m.DataProduct.created_at.desc(), m.DataProduct.id.desc())
        .limit(limit)
    )  # fmt: skip
    if pipeline is not None:
        query = query.where(m.Pipeline.name == pipeline)
    if step is not None:
        query = query.where(m.ReductionStep.name == step)
    if product_type is not None:
        query = query.where(m.DataProduct.data_product_type == product_type)
    if since is not None:
        query = query.where(m.DataProduct.created_at >= since)
    return [
        ProductRow(pid, pl, st, key, run, kind.value, path, size, created)
        for pid, pl, st, key, run, kind, path, size, created in session.execute(query)
    ]


def list_raw(
    session: Session,
    source: str | None = None,
    line: str | None = None,
    since: dt.datetime | None = None,
    limit: int = 50,
) -> list[RawRow]:
    """Return the raw data packages that match, newest first (at most `limit`)."""
    copies = (  # NULL when a package has no copy
        select(func.array_agg(func.concat(m.DataLocation.name, ":", m.RawDataPackageCopy.path)))
        .select_from(m.RawDataPackageCopy)
        .join(m.DataLocation, m.DataLocation.id == m.RawDataPackageCopy.data_location_id)
        .where(m.RawDataPackageCopy.raw_data_package_id == m.RawDataPackage.id)
        .correlate(m.RawDataPackage)
        .scalar_subquery()
    )
    query = (
        select(
            m.RawDataPackage.id, m.RawDataPackage.name, m.ExecutedObsUnit.name, m.Source.name,
            m.Line.name, m.InstrumentModule.name, m.RawDataPackage.size, m.RawDataPackage.state,
            m.RawDataPackage.created_at, copies,
        )
        .select_from(m.RawDataPackage)
        .join(m.ExecutedObsUnit, m.ExecutedObsUnit.id == m.RawDataPackage.executed_obs_unit_id)
        .join(m.ObsUnit, m.ObsUnit.id == m.ExecutedObsUnit.obs_unit_id)
        .join(m.Source, m.Source.id == m.ObsUnit.source_id)
        .join(m.Line, m.Line.id == m.ObsUnit.line_id)
        .join(m.InstrumentModule, m.InstrumentModule.id == m.RawDataPackage.instrument_module_id)
        .order_by(m.RawDataPackage.created_at.desc(), m.RawDataPackage.id.desc())
        .limit(limit)
    )  # fmt: skip
    if source is not None:
        query = query.where(m.Source.name == source)
    if line is not None:
        query = query.where(m.Line.name == line)
    if since is not None:
        query = query.where(m.RawDataPackage.created_at >= since)
    return [
        RawRow(rid, name, scan, src, ln, module, size, state.value, created, sorted(paths or []))
        for rid, name, scan, src, ln, module, size, state, created, paths in session.execute(query)
    ]


@dataclass(frozen=True, slots=True)
class MadeProducts:
    """What a flow run's runs made: counts by type, and the maps and plots by path."""

    counts: dict[str, int]
    maps: list[str]
    """FITS science products (cubes and maps), up to the listed number."""
    plots: list[str]
    """PLOT products, up to the listed number."""


def flow_run_products(session: Session, flow_run_id: str, listed: int = 10) -> MadeProducts:
    """Return what the runs of one flow run made (`ccat-wm run` ends with it)."""
    product = m.DataProduct

    def mine(*columns: Any) -> Any:
        return (
            select(*columns)
            .join(RUN, RUN.id == product.executed_reduction_step_id)
            .where(RUN.prefect_flow_run_id == flow_run_id)
        )

    counts = {
        kind.value: n
        for kind, n in session.execute(
            mine(product.data_product_type, func.count())
            .group_by(product.data_product_type)
            .order_by(product.data_product_type)
        )
    }
    fits = mine(product.file_path).where(
        product.data_product_type == m.DataProductType.SCIENCE,
        product.file_path.ilike("%.fits") | product.file_path.ilike("%.fits.gz"),
    )
    plots = mine(product.file_path).where(product.data_product_type == m.DataProductType.PLOT)
    return MadeProducts(
        counts,
        list(session.scalars(fits.order_by(product.file_path).limit(listed))),
        list(session.scalars(plots.order_by(product.file_path).limit(listed))),
    )
