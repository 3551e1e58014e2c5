"""What a person does to runs and products: cancel a run, trace a product's provenance."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Select, func, literal, select, update
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.errors import CcatWmError
from ccat_wm.execution.backends import location_backend
from ccat_wm.execution.lifecycle import TransitionError, transition
from ccat_wm.execution.secrets import split_secrets
from ccat_wm.quality.standing import left_out

RUN = m.ExecutedReductionStep


@dataclass(frozen=True, slots=True)
class CancelResult:
    """A cancelled run and what happened to its backend job."""

    run_id: int
    previous_status: str
    hpc_job_id: str | None
    job_cancelled: bool


def cancel_run(session: Session, run_id: int) -> CancelResult:
    """Mark the run CANCELLED (committed first, so no task moves it on), then stop its job."""
    with session.begin():
        previous = session.scalar(select(RUN.status).where(RUN.id == run_id))
        transition(session, run_id, m.RunStatus.CANCELLED)
        job_id, step_id = session.execute(
            select(RUN.hpc_job_id, RUN.reduction_step_id).where(RUN.id == run_id)
        ).one()
        location = session.execute(
            select(m.DataLocation.backend, m.DataLocation.path, m.DataLocation.settings)
            .select_from(m.ReductionStep)
            .join(m.ReductionStep.pipeline)
            .join(m.Pipeline.processing_location)
            .where(m.ReductionStep.id == step_id)
        ).one()
    cancelled = False
    if job_id:
        backend, path, settings = location
        location_backend(backend, Path(path), settings).cancel(job_id)
        cancelled = True
    return CancelResult(run_id, previous.value if previous else "", job_id, cancelled)


def cancel_flow_run_runs(session: Session, flow_run_id: str) -> list[CancelResult]:
    """Cancel every unfinished run a (cancelled or dead) Prefect flow run owns, and its job.

    Works from the ops DB records alone, so it also stops the jobs of a flow whose own
    process hangs or is gone. A run that finished meanwhile is left as it is.
    """
    run_ids = session.scalars(
        select(RUN.id)
        .where(
            RUN.prefect_flow_run_id == flow_run_id,
            RUN.status.in_(m.UNFINISHED_STATUSES),
        )
        .order_by(RUN.id)
    ).all()
    session.rollback()  # end the read transaction: cancel_run opens its own per run
    results = []
    for run_id in run_ids:  # the runs of one flow run, each with its own backend call
        try:
            results.append(cancel_run(session, run_id))
        except TransitionError:
            continue
    return results


def abandon_unstarted_runs(session: Session, flow_run_id: str, why: str) -> int:
    """Cancel the PENDING runs a flow run claimed but could not start; return how many.

    For a flow run that fails before or while starting its wave (its tasks could not be
    created, its server went away): a run must not stay PENDING for a flow that will
    never run it. Its reason says why; the sub-group is a gap again, so the next
    evaluation makes a new run. Runs already in flight are left to be adopted. No commit.
    """
    reason = f"flow run {flow_run_id} failed before starting it: {why}"[:2000]
    cancelled = session.scalars(
        update(RUN)
        .where(RUN.prefect_flow_run_id == flow_run_id, RUN.status == m.RunStatus.PENDING)
        .values(status=m.RunStatus.CANCELLED, failure_reason=reason, finished_at=func.now())
        .returning(RUN.id)
    ).all()
    return len(cancelled)


@dataclass(frozen=True, slots=True)
class LineageRun:
    """A run in a product's provenance, as its snapshot recorded it (see `execution.snapshot`).

    `snapshot` says where the values come from: `recorded` (when the run started),
    `backfilled` (by migration 0005; `unknown` names what it could not recover), or
    `none` for a run that never started (the current config, which it would have used).
    """

    run_id: int
    pipeline: str
    step: str
    sub_group_key: str
    status: str
    software: str
    version: str
    digest: str | None
    config: str
    parameters: dict[str, Any] | None
    execution_command: str | None
    command_template: list[str] | None = None
    environment: dict[str, Any] | None = None
    withheld_environment: list[str] = field(default_factory=list)
    resources: dict[str, Any] | None = None
    image_repository: str | None = None
    location: str | None = None
    backend: str | None = None
    runtime: str | None = None
    snapshot: str = "none"
    unknown: list[str] = field(default_factory=list)
    started_at: str | None = None
    finished_at: str | None = None


@dataclass(frozen=True, slots=True)
class Lineage:
    """A product's provenance: the runs that led to it and the raw data it derives from."""

    product_id: int
    file_path: str
    data_product_type: str
    checksum: str
    file_size: int
    runs: list[LineageRun] = field(default_factory=list)
    raw_data_packages: list[dict[str, Any]] = field(default_factory=list)
    left_out: list[dict[str, Any]] = field(default_factory=list)
    """Runs inside a chain run's sub-group that a quality decision kept out of it, with
    the decision in force when the chain run was created (`left_out_of`: its id)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


MAX_ID = 2**63 - 1
"""Largest id the ops DB holds (BIGINT)."""


def path_candidates(session: Session, given: str) -> list[str]:
    """Return the stored paths a user's path may mean, resolved as stored paths are.

    Product paths are stored under their location's path as configured (normalized,
    symlinks kept). A user may give that path, a relative one, or the real path behind a
    symlinked location: each is mapped to the stored form under every location whose
    real path contains it.
    """
    literal_path = os.path.normpath(os.path.abspath(given))
    real = os.path.realpath(given)
    candidates = {literal_path, real}
    for location in session.scalars(select(m.DataLocation.path)):
        real_root = os.path.realpath(location)
        if os.path.commonpath([real, real_root]) == real_root:
            candidates.add(
                os.path.join(os.path.normpath(location), os.path.relpath(real, real_root))
            )
    return sorted(candidates)


def _chain_runs(run_id: int) -> Select[*tuple[Any, ...]]:
    """Select the run and every run upstream of it (through the products they used).

    Each with its pipeline, step, snapshot, software version and config; last step first.
    """
    p = m.DataProduct
    inp = m.ExecutedReductionStepInput
    chain = select(literal(run_id, BigInteger).label("id")).cte("chain", recursive=True)
    chain = chain.union(
        select(p.executed_reduction_step_id)
        .join(inp, inp.data_product_id == p.id)
        .join(chain, inp.executed_reduction_step_id == chain.c.id)
    )
    snap, config = m.RunSnapshot, m.ReductionStepConfig
    version, software = m.ReductionSoftwareVersion, m.ReductionSoftware
    return (
        select(
            RUN.id,
            m.Pipeline.name,
            m.ReductionStep.name,
            RUN.sub_group_key,
            RUN.status,
            RUN.execution_command,
            RUN.started_at,
            RUN.finished_at,
            snap,
            software.name,
            software.ghcr_url,
            version.tag,
            version.digest,
            config.name,
            config.config_parameters,
            config.environment_variables,
            config.command_template,
            config.resource_requirements,
        )
        .join(chain, chain.c.id == RUN.id)
        .join(RUN.reduction_step)
        .join(m.ReductionStep.pipeline)
        .join(version, version.id == RUN.reduction_software_version_id)
        .join(software, software.id == version.reduction_software_id)
        .join(config, config.id == m.ReductionStep.reduction_step_config_id)
        .outerjoin(snap, snap.executed_reduction_step_id == RUN.id)
        .order_by(m.ReductionStep.step_order.desc(), RUN.id)
    )


def product_lineage(session: Session, product: str) -> Lineage:
    """Trace a product given by id or file path: its run, upstream runs, raw packages."""
    p = m.DataProduct
    if product.isdigit():
        if int(product) > MAX_ID:
            raise CcatWmError(f"no data product with id {product}: ids are at most {MAX_ID}")
        where = p.id == int(product)
    else:
        where = p.file_path.in_(path_candidates(session, product))
    row = session.execute(
        select(
            p.id,
            p.file_path,
            p.data_product_type,
            p.checksum,
            p.file_size,
            p.executed_reduction_step_id,
        ).where(where)
    ).first()
    if row is None:
        raise CcatWmError(f"no data product with id or path {product!r}")
    product_id, path, kind, checksum, size, run_id = row
    runs = session.execute(_chain_runs(run_id)).all()
    pkg, lineage = m.RawDataPackage, m.data_product_lineage
    packages = session.execute(
        select(pkg.id, pkg.name, pkg.checksum, pkg.size)
        .join(lineage, lineage.c.raw_data_package_id == pkg.id)
        .where(lineage.c.data_product_id == product_id)
        .order_by(pkg.name)
    ).all()
    chain = [_lineage_run(row) for row in runs]
    excluded = left_out(session, [r.run_id for r in chain])
    return Lineage(
        product_id, path, kind.value, checksum, size, chain,
        [{"id": i, "name": n, "checksum": c, "size": s} for i, n, c, s in packages],
        [
            {"left_out_of": of, **{k: v.isoformat() if isinstance(v, dt.datetime) else v
                                   for k, v in asdict(r).items()}}
            for of, rejections in excluded.items()
            for r in rejections
        ],
    )  # fmt: skip


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _lineage_run(row: Any) -> LineageRun:
    """Build a lineage run from its snapshot, or from the current rows if never started."""
    (rid, pipeline, step, key, status, command, started, finished, snap,
     software, url, tag, digest, config, params, env, template, resources) = row  # fmt: skip
    common = {
        "run_id": rid, "pipeline": pipeline, "step": step, "sub_group_key": key,
        "status": status.value, "execution_command": command,
        "started_at": _iso(started), "finished_at": _iso(finished),
    }  # fmt: skip
    if snap is None:
        stored, withheld = split_secrets({str(k): str(v) for k, v in (env or {}).items()})
        return LineageRun(
            **common, software=software, version=tag, digest=digest, config=config,
            parameters=dict(params or {}), command_template=list(template or []),
            environment=stored, withheld_environment=withheld,
            resources=dict(resources or {}), image_repository=url,
        )  # fmt: skip
    return LineageRun(
        **common, software=snap.software, version=snap.software_tag,
        digest=snap.image_digest, config=snap.config_name, parameters=snap.parameters,
        command_template=snap.command_template, environment=snap.environment,
        withheld_environment=list(snap.withheld_environment), resources=snap.resources,
        image_repository=snap.image_repository, location=snap.location,
        backend=snap.backend.value if snap.backend else None,
        runtime=snap.runtime.value if snap.runtime else None,
        snapshot=snap.origin.value, unknown=list(snap.unknown),
    )  # fmt: skip
