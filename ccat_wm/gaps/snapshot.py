"""Load a pipeline's snapshot with a fixed, small number of set-based queries.

Per pipeline: a handful of queries for its settings; per root step one aggregate over
the selected packages (one row per finest group, never one per package); per step one
query for current runs (with their product digests) and one for runs in flight and
failures. Nothing here issues a query per sub-group or per package.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, String, and_, cast, func, literal, or_, select
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.orm import Session, aliased

from ccat_ops_db import models as m
from ccat_wm.gaps.model import (
    CurrentRun,
    FailureRecord,
    FineGroup,
    PipelineInfo,
    PipelineSnapshot,
    StepInfo,
    StepRuns,
    VersionRef,
)
from ccat_wm.selection.dimensions import DIMENSIONS
from ccat_wm.selection.query import (
    Selection,
    dimension_joins,
    item_hash,
    key_expression,
    package_foreign_keys,
    selection,
)
from ccat_wm.selection.tables import FILTER_TABLES
from ccat_wm.spec.versions import parse_major

RUN = m.ExecutedReductionStep
PRODUCT = m.DataProduct
PACKAGE = m.RawDataPackage


def config_fingerprint(config: m.ReductionStepConfig, software: m.ReductionSoftware) -> str:
    """Fingerprint of what a step's results depend on besides inputs and version.

    Parameters, environment, command template and image repository; not resources
    (more memory does not change a result) and not the version (own reason).
    """
    payload = {
        "parameters": config.config_parameters,
        "environment": config.environment_variables,
        "command": config.command_template,
        "image": software.ghcr_url or software.name,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def _version_ref(version: m.ReductionSoftwareVersion | None) -> VersionRef | None:
    if version is None:
        return None
    return VersionRef(version.id, version.tag, parse_major(version.tag))


def load_steps(session: Session, pipeline_id: int) -> list[StepInfo]:
    """Load the pipeline's steps in topological order (`step_order`), with their versions."""
    steps = session.scalars(
        select(m.ReductionStep)
        .where(m.ReductionStep.pipeline_id == pipeline_id)
        .order_by(m.ReductionStep.step_order)
    ).all()
    step_ids = [s.id for s in steps]
    names = {s.id: s.name for s in steps}
    deps: dict[int, list[str]] = {}
    dep = m.reduction_step_dependency
    for step_id, upstream_id in session.execute(
        select(dep.c.reduction_step_id, dep.c.depends_on_step_id).where(
            dep.c.reduction_step_id.in_(step_ids)
        )
    ):
        deps.setdefault(step_id, []).append(names[upstream_id])
    configs = {
        c.id: c
        for c in session.scalars(
            select(m.ReductionStepConfig).where(
                m.ReductionStepConfig.id.in_([s.reduction_step_config_id for s in steps])
            )
        )
    }
    software_ids = {s.reduction_software_id for s in steps}
    software = {
        sw.id: sw
        for sw in session.scalars(
            select(m.ReductionSoftware).where(m.ReductionSoftware.id.in_(software_ids))
        )
    }
    versions = session.scalars(
        select(m.ReductionSoftwareVersion).where(
            m.ReductionSoftwareVersion.reduction_software_id.in_(software_ids)
        )
    ).all()
    by_id = {v.id: v for v in versions}
    latest = {v.reduction_software_id: v for v in versions if v.is_latest}
    out = []
    for s in steps:
        pinned = by_id.get(s.pinned_version_id) if s.pinned_version_id is not None else None
        run_version = (
            pinned
            if s.version_policy is m.VersionPolicy.EXACT
            else latest.get(s.reduction_software_id)
        )
        out.append(
            StepInfo(
                id=s.id,
                name=s.name,
                group_by=tuple(s.group_by),
                upstream=tuple(sorted(deps.get(s.id, []))),
                cooldown_seconds=s.cooldown_seconds,
                max_wait_seconds=s.max_wait_seconds,
                schedule=s.schedule,
                max_retries=s.max_retries,
                version_policy=s.version_policy,
                run_version=_version_ref(run_version),
                config_fingerprint=config_fingerprint(
                    configs[s.reduction_step_config_id], software[s.reduction_software_id]
                ),
            )
        )
    return out


def _current_runs_cte(step_id: int) -> Any:
    return (
        select(RUN.id, RUN.sub_group_key, RUN.created_at)
        .where(RUN.reduction_step_id == step_id, RUN.status == m.RunStatus.COMPLETED)
        .order_by(RUN.sub_group_key, RUN.id.desc())
        .ext(distinct_on(RUN.sub_group_key))
        .cte(f"current_runs_{step_id}")
    )


def _dimension_ids(dims: list[str]) -> list[ColumnElement[Any]]:
    return [FILTER_TABLES[DIMENSIONS[d].table].c.id for d in dims]


def load_groups(
    session: Session, grouping: m.DataGrouping, steps: list[StepInfo]
) -> list[FineGroup]:
    """Aggregate the selected packages by finest group.

    One query, plus one per root step with a maximum wait (for the oldest package its
    current run has not seen). Groups are formed by the dimension tables' primary keys
    and each step's `sub_group_key` is computed per group in SQL, not per package.
    """
    dims = sorted({d for s in steps for d in s.group_by})
    sel = selection(grouping.filter_rules, grouping.instrument_module_id, dims)
    ids = _dimension_ids(dims)
    keys = [key_expression(s.group_by).label(f"key_{i}") for i, s in enumerate(steps)]
    foreign_keys = [PACKAGE.__table__.c[fk] for fk in package_foreign_keys(dims)]
    packages = (
        select(
            *foreign_keys,
            func.count().label("n"),
            func.sum(item_hash("r", PACKAGE.id, PACKAGE.checksum)).label("hash_sum"),
            func.max(PACKAGE.created_at).label("last_change"),
        )
        .select_from(sel.from_clause)
        .where(sel.where)
        .group_by(*foreign_keys)
        .having(func.count() > 0)
        .subquery("packages")
    )
    query = select(
        *keys, packages.c.n, cast(packages.c.hash_sum, String), packages.c.last_change
    ).select_from(dimension_joins(packages, dims))
    unprocessed = {
        i: _unprocessed(session, sel, ids, keys, step)
        for i, step in enumerate(steps)
        if not step.upstream and step.max_wait_seconds is not None
    }
    groups = []
    width = len(steps)
    for row in session.connection().execute(query):
        values: tuple[Any, ...] = tuple(row)
        group_keys = values[:width]
        oldest = tuple(
            unprocessed[i].get(group_keys) if i in unprocessed else None for i in range(width)
        )
        packages, hash_sum, last_change = values[width:]
        groups.append(FineGroup(group_keys, int(packages), int(hash_sum), last_change, oldest))
    return groups


def _unprocessed(
    session: Session, sel: Selection, ids: list[ColumnElement[Any]], keys: list[Any], step: StepInfo
) -> dict[tuple[str, ...], dt.datetime | None]:
    current = _current_runs_cte(step.id)
    unseen = or_(current.c.created_at.is_(None), PACKAGE.created_at > current.c.created_at)
    query = (
        select(*keys, func.min(PACKAGE.created_at).filter(unseen))
        .select_from(
            sel.from_clause.outerjoin(
                current, current.c.sub_group_key == key_expression(step.group_by)
            )
        )
        .where(sel.where)
        .group_by(*ids)
    )
    return {tuple(row[:-1]): row[-1] for row in session.execute(query)}


def _current_query(step: StepInfo, with_products: bool) -> Any:
    """Select current runs with every column evaluation needs, in one DISTINCT ON pass."""
    current = (
        select(
            RUN.id,
            RUN.sub_group_key,
            RUN.reduction_software_version_id,
            RUN.config_fingerprint,
            RUN.input_fingerprint,
            RUN.created_at,
            func.coalesce(RUN.finished_at, RUN.updated_at).label("finished_at"),
        )
        .where(RUN.reduction_step_id == step.id, RUN.status == m.RunStatus.COMPLETED)
        .order_by(RUN.sub_group_key, RUN.id.desc())
        .ext(distinct_on(RUN.sub_group_key))
        .cte(f"current_{step.id}")
    )
    version = m.ReductionSoftwareVersion
    query = select(*current.c, version.tag).join(
        version, version.id == current.c.reduction_software_version_id
    )
    if not with_products:
        return query.add_columns(literal(0).label("n"), literal("0").label("hash_sum"))
    agg = (
        select(
            PRODUCT.executed_reduction_step_id.label("run_id"),
            func.count().label("n"),
            func.sum(item_hash("p", PRODUCT.id, PRODUCT.checksum)).label("hash_sum"),
        )
        .join(current, current.c.id == PRODUCT.executed_reduction_step_id)
        .where(PRODUCT.data_product_type != m.DataProductType.LOG)
        .group_by(PRODUCT.executed_reduction_step_id)
        .cte(f"products_{step.id}")
    )
    return query.outerjoin(agg, agg.c.run_id == current.c.id).add_columns(
        func.coalesce(agg.c.n, 0).label("n"),
        cast(func.coalesce(agg.c.hash_sum, 0), String).label("hash_sum"),
    )


def _failures_query(step: StepInfo) -> Any:
    """Select runs in flight, and FAILED runs newer than the sub-group's current run, aggregated.

    The newest COMPLETED run is found per failed run through the partial index
    `ix_executed_reduction_step_completed`, so this stays cheap with a long history.
    """
    in_flight = [s.value for s in m.IN_FLIGHT_STATUSES]
    newer = aliased(RUN)
    latest_completed = (
        select(func.max(newer.id))
        .where(
            newer.reduction_step_id == RUN.reduction_step_id,
            newer.sub_group_key == RUN.sub_group_key,
            newer.status == m.RunStatus.COMPLETED,
        )
        .scalar_subquery()
    )
    keys = (
        RUN.sub_group_key,
        RUN.status,
        RUN.input_fingerprint,
        RUN.config_fingerprint,
        RUN.reduction_software_version_id,
    )
    failed_since = and_(
        RUN.status == m.RunStatus.FAILED, RUN.id > func.coalesce(latest_completed, 0)
    )
    return (
        select(*keys, func.sum(RUN.retry_count + 1).label("failures"))
        .where(RUN.reduction_step_id == step.id, or_(RUN.status.in_(in_flight), failed_since))
        .group_by(*keys)
    )


def load_runs(session: Session, step: StepInfo, with_products: bool) -> StepRuns:
    """Load a step's runs: current ones, in flight, and failures since the current one.

    Two queries; current runs carry their product digests when `with_products`.
    """
    runs = StepRuns()
    for row in session.connection().execute(_current_query(step, with_products)):
        (run_id, key, version_id, config_fp, input_fp, created, finished, tag, count, hash_sum) = (
            row
        )
        runs.current[key] = CurrentRun(
            run_id,
            version_id,
            _major(tag),
            config_fp,
            input_fp,
            created,
            finished,
            int(count),
            int(hash_sum),
        )
    for fail in session.connection().execute(_failures_query(step)):
        if fail.status is m.RunStatus.FAILED:
            record = FailureRecord(
                fail.input_fingerprint,
                fail.config_fingerprint,
                fail.reduction_software_version_id,
                int(fail.failures),
            )
            runs.failures.setdefault(fail.sub_group_key, []).append(record)
        else:
            runs.in_flight.add(fail.sub_group_key)
    return runs


@lru_cache(maxsize=1024)
def _major(tag: str) -> int:
    return parse_major(tag)


def pipeline_info(pipeline: m.Pipeline) -> PipelineInfo:
    """Trigger settings of a pipeline row."""
    config = pipeline.trigger_config or {}
    return PipelineInfo(
        pipeline.id, pipeline.name, pipeline.enabled, pipeline.trigger_type,
        config.get("cron"), config.get("timezone", "UTC"),
    )  # fmt: skip


def load_snapshot(session: Session, pipeline: m.Pipeline) -> PipelineSnapshot:
    """Everything `evaluate` needs about `pipeline`, read in one transaction."""
    grouping = session.get_one(m.DataGrouping, pipeline.data_grouping_id)
    steps = load_steps(session, pipeline.id)
    consumed = {u for s in steps for u in s.upstream}
    return PipelineSnapshot(
        pipeline=pipeline_info(pipeline),
        steps=steps,
        groups=load_groups(session, grouping, steps),
        runs={s.name: load_runs(session, s, s.name in consumed) for s in steps},
    )
