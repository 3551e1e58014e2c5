"""The SQL that reads a pipeline's inputs in one statement, leaving settled ones out.

Current runs and their product digests are kept by the database (migration 0002), so
reading them is an index scan. `fine_cte` aggregates the selected packages by their
scan and module and names the sub-group of every step per group. `groups_statement`
then returns, in one UNION ALL:

- for each root step, the finest groups whose root sub-group may have a gap (no
  current run, or a different input set, config or version, or a run in flight), with
  the current run's columns; all groups when not pruning;
- for each downstream step, one row per sub-group with the digest of the products of
  the current upstream runs inside it, the newest and the oldest unseen completion,
  and its own current run's columns.

Fingerprints are computed with the same item hash as everywhere else, so comparing
them in SQL is the same comparison `evaluate` makes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    DateTime,
    Select,
    String,
    and_,
    any_,
    bindparam,
    case,
    cast,
    func,
    literal,
    null,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.selectable import CTE, Subquery

from ccat_ops_db import models as m
from ccat_wm.gaps.model import StepInfo
from ccat_wm.selection.dimensions import closure
from ccat_wm.selection.query import (
    dimension_joins,
    item_hash,
    key_expression,
    package_foreign_keys,
    package_key_dimensions,
    selection,
)

RUN = m.ExecutedReductionStep
PRODUCT = m.DataProduct
PACKAGE = m.RawDataPackage


def key_column(index: int) -> str:
    """Name of the column holding step `index`'s key in the fine CTE."""
    return f"k{index}"


def package_groups(
    grouping: m.DataGrouping, columns: Sequence[str], where: ColumnElement[bool] | None = None
) -> Subquery:
    """Aggregate the grouping's selected packages by the RawDataPackage `columns`.

    Count `n`, digest `h` and newest ingest `last_change` per group; `where` narrows the
    packages further. Only the tables the rules need are joined: names are looked up per
    group afterwards (`dimension_joins`).
    """
    sel = selection(grouping.filter_rules, grouping.instrument_module_id, [])
    foreign_keys = [PACKAGE.__table__.c[c] for c in columns]
    return (
        select(
            *foreign_keys,
            func.count().label("n"),
            func.sum(item_hash("r", PACKAGE.id, PACKAGE.checksum)).label("h"),
            func.max(PACKAGE.created_at).label("last_change"),
        )
        .select_from(sel.from_clause)
        .where(sel.where if where is None else and_(sel.where, where))
        .group_by(*foreign_keys)
        .having(func.count() > 0)
        .subquery("packages")
    )


def fine_cte(grouping: m.DataGrouping, steps: Sequence[StepInfo]) -> CTE:
    """Aggregate the selected packages per scan and module, with every step's key."""
    dims = sorted({d for s in steps for d in s.group_by})
    packages = package_groups(grouping, package_foreign_keys(dims))
    keys = [key_expression(s.group_by).label(key_column(i)) for i, s in enumerate(steps)]
    return (
        select(*keys, packages.c.n, packages.c.h, packages.c.last_change)
        .select_from(dimension_joins(packages, dims))
        .cte("fine")
        .prefix_with("MATERIALIZED")
    )


def current_runs_cte(step: StepInfo) -> CTE:
    """Select the step's current runs (one per key, kept by the database), with digests."""
    return (
        select(
            RUN.id,
            RUN.sub_group_key,
            RUN.reduction_software_version_id,
            RUN.config_fingerprint,
            RUN.input_fingerprint,
            RUN.created_at,
            func.coalesce(RUN.finished_at, RUN.updated_at).label("finished_at"),
            RUN.product_count.label("pn"),
            RUN.product_hash_sum.label("ph"),
            RUN.qa_rejected,
        )
        .where(RUN.reduction_step_id == step.id, RUN.is_current)
        .cte(f"current_{step.id}")
    )


_RUN_COLUMNS = (
    "cur_id",
    "cur_version_id",
    "cur_config",
    "cur_input",
    "cur_created",
    "cur_finished",
)
"""Labels of the current run's columns in every part of the statement."""


class _Ctes:
    """Each step's current-runs CTE, built once per statement (CTE names must be unique)."""

    def __init__(self) -> None:
        self._current: dict[int, CTE] = {}

    def current(self, step: StepInfo) -> CTE:
        if step.id not in self._current:
            self._current[step.id] = current_runs_cte(step)
        return self._current[step.id]


def _root_part(
    fine: CTE,
    steps: Sequence[StepInfo],
    index: int,
    ctes: _Ctes,
    *,
    prune: bool,
) -> Select[Any]:
    step = steps[index]
    key = fine.c[key_column(index)]
    current = ctes.current(step)
    all_dims = sorted({d for s in steps for d in s.group_by})
    count: ColumnElement[Any]
    hash_sum: ColumnElement[Any]
    if package_key_dimensions(all_dims) <= closure(step.group_by):  # fine group = sub-group
        count, hash_sum = fine.c.n, fine.c.h
    else:  # several fine groups per root sub-group: compare over the whole sub-group
        count = func.sum(fine.c.n).over(partition_by=key)
        hash_sum = func.sum(fine.c.h).over(partition_by=key)
    query = select(
        literal(index).label("step"),
        key.label("key"),
        *[fine.c[key_column(i)] for i in range(len(steps))],
        fine.c.n,
        cast(fine.c.h, String).label("h"),
        fine.c.last_change,
        cast(null(), DateTime(timezone=True)).label("oldest_unprocessed"),
        current.c.id.label("cur_id"),
        current.c.reduction_software_version_id.label("cur_version_id"),
        current.c.config_fingerprint.label("cur_config"),
        current.c.input_fingerprint.label("cur_input"),
        current.c.created_at.label("cur_created"),
        current.c.finished_at.label("cur_finished"),
        count.label("root_n"),
        hash_sum.label("root_h"),
    ).select_from(fine.outerjoin(current, current.c.sub_group_key == key))
    inner = query.subquery(f"root_{index}")
    fingerprint = literal("v1:") + cast(inner.c.root_n, String) + ":" + cast(inner.c.root_h, String)
    may_have_gap = or_(
        inner.c.cur_id.is_(None),
        inner.c.cur_input != fingerprint,
        inner.c.cur_config != step.config_fingerprint,
        inner.c.cur_version_id.not_in(step.valid_version_ids or [-1]),
        # One array parameter (an expanding IN sends one per key, and PostgreSQL takes
        # at most 65,535 per statement: a wave of 100k runs in flight exceeds that).
        inner.c.key == any_(bindparam(in_flight_param(index), type_=ARRAY(String))),
    )
    columns = [c for c in inner.c if c.name not in ("root_n", "root_h")]
    return select(*columns).where(may_have_gap if prune else true())


def _members(
    fine: CTE, steps: Sequence[StepInfo], index: int, ctes: _Ctes, determined: list[int]
) -> Subquery:
    """Upstream sub-groups inside each of step `index`'s, with their current runs."""
    names = [s.name for s in steps]
    members = []
    for upstream in (names.index(u) for u in steps[index].upstream):
        pairs = (
            select(
                fine.c[key_column(upstream)].label("uk"),
                *[fine.c[key_column(i)] for i in determined],
            )
            .distinct()
            .subquery()
        )
        current = ctes.current(steps[upstream])
        accepted = current.c.qa_rejected.is_not(True)  # a rejected run's products feed none
        members.append(
            select(
                pairs.c[key_column(index)].label("dk"),
                *[pairs.c[key_column(i)] for i in determined],
                case((accepted, current.c.pn), else_=0).label("pn"),
                case((accepted, current.c.ph), else_=0).label("ph"),
                current.c.finished_at,
            ).select_from(pairs.outerjoin(current, current.c.sub_group_key == pairs.c.uk))
        )
    union = union_all(*members) if len(members) > 1 else members[0]
    return union.subquery(f"members_{index}")


def _downstream_part(fine: CTE, steps: Sequence[StepInfo], index: int, ctes: _Ctes) -> Select[Any]:
    step = steps[index]
    determined = [i for i, s in enumerate(steps) if set(s.group_by) <= closure(step.group_by)]
    union = _members(fine, steps, index, ctes, determined)
    own = ctes.current(step)
    unseen = or_(own.c.created_at.is_(None), union.c.finished_at > own.c.created_at)
    keys = [
        func.min(union.c[key_column(i)]).label(key_column(i))
        if i in determined
        else null().label(key_column(i))
        for i in range(len(steps))
    ]
    own_columns = [
        own.c.id,
        own.c.reduction_software_version_id,
        own.c.config_fingerprint,
        own.c.input_fingerprint,
        own.c.created_at,
        own.c.finished_at,
    ]
    return (
        select(
            literal(index).label("step"),
            union.c.dk.label("key"),
            *keys,
            func.coalesce(func.sum(union.c.pn), 0).label("n"),
            cast(func.coalesce(func.sum(union.c.ph), 0), String).label("h"),
            func.max(union.c.finished_at).label("last_change"),
            func.min(union.c.finished_at).filter(unseen).label("oldest_unprocessed"),
            *[column.label(name) for column, name in zip(own_columns, _RUN_COLUMNS, strict=True)],
        )
        .select_from(union.outerjoin(own, own.c.sub_group_key == union.c.dk))
        .group_by(union.c.dk, *own_columns)
    )


def in_flight_param(index: int) -> str:
    """Name of the bound parameter listing root step `index`'s keys with a run in flight."""
    return f"in_flight_{index}"


@lru_cache(maxsize=64)
def _cached_statement(
    rules_json: str,
    instrument_module_id: int | None,
    steps: tuple[StepInfo, ...],
    prune: bool,
) -> CompoundSelect[Any] | Select[Any]:
    grouping = m.DataGrouping(
        filter_rules=json.loads(rules_json), instrument_module_id=instrument_module_id
    )
    fine = fine_cte(grouping, steps)
    ctes = _Ctes()
    parts = [
        _root_part(fine, steps, i, ctes, prune=prune)
        if not s.upstream
        else _downstream_part(fine, steps, i, ctes)
        for i, s in enumerate(steps)
    ]
    return union_all(*parts) if len(parts) > 1 else parts[0]


def groups_statement(
    grouping: m.DataGrouping,
    steps: Sequence[StepInfo],
    in_flight: dict[str, set[str]],
    *,
    prune: bool,
) -> tuple[CompoundSelect[Any] | Select[Any], dict[str, list[str]]]:
    """Return the statement for every step's rows (module docstring) and its parameters.

    Statements are built once per pipeline definition and reused.
    """
    statement = _cached_statement(
        json.dumps(grouping.filter_rules, sort_keys=True),
        grouping.instrument_module_id,
        tuple(steps),
        prune,
    )
    params = {
        in_flight_param(i): sorted(in_flight.get(s.name, ()))
        for i, s in enumerate(steps)
        if not s.upstream
    }
    return statement, params
