"""Filter rules to SQL over the join graph, and SQL for dimension values and sub-group keys.

`selection(rules, module_id, dims)` returns the joined tables and WHERE clauses that
select a grouping's raw data packages, with every table that the rules or the
dimensions need joined once, in join-graph order from RawDataPackage.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    SQLColumnExpression,
    String,
    Subquery,
    and_,
    cast,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB

from ccat_ops_db.models.invalidation import Invalidation
from ccat_wm.selection.dimensions import DIMENSIONS, KEY_ESCAPES, KEY_SEPARATOR
from ccat_wm.selection.tables import (
    FILTER_TABLES,
    JOIN_GRAPH,
    ROOT_TABLE,
    coerce_value,
    join_path,
)


@dataclass(frozen=True, slots=True)
class Selection:
    """The FROM clause and WHERE clauses selecting a grouping's packages."""

    from_clause: FromClause
    """RawDataPackage joined with every table that rules or dimensions need."""
    where: ColumnElement[bool]
    """All rules ANDed (true when there are none)."""


def _json_value(value: Any) -> ColumnElement[Any]:
    return cast(literal(value, type_=JSONB), JSONB)


def rule_clause(rule: dict[str, Any]) -> ColumnElement[bool]:
    """Turn one validated filter rule into a SQL condition.

    JSON values are compared as JSONB (numbers numerically, strings as strings); `like`
    compares the text value. `neq` and `not_in` also match rows where the value is
    missing (NULL), as a person reading "not equal" expects.
    """
    column = FILTER_TABLES[rule["table"]].c[rule["column"]]
    op, value = rule["operator"], rule["value"]
    path = rule.get("json_path")
    target: ColumnElement[Any]
    if path is not None:
        keys = tuple(path.split("."))
        if op == "like":
            return column[keys].astext.like(value)  # type: ignore[no-any-return]
        target = column[keys]
        values = [_json_value(v) for v in value] if isinstance(value, list) else _json_value(value)
    else:
        target = column
        coerce = coerce_value
        table, name = rule["table"], rule["column"]
        if isinstance(value, list):
            values = [coerce(table, name, v) for v in value]
        else:
            values = coerce(table, name, value)
    if op == "like":
        return cast(target, String).like(values)
    return _COMPARISONS[op](target, values)


_COMPARISONS: dict[str, Callable[[Any, Any], ColumnElement[bool]]] = {
    "eq": operator.eq,
    "neq": lambda target, value: target.is_distinct_from(value),
    "in": lambda target, values: target.in_(values) if values else false(),
    "not_in": lambda target, values: (
        or_(target.is_(None), not_(target.in_(values))) if values else ~false()
    ),
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def needed_tables(rules: Sequence[dict[str, Any]], dims: Sequence[str]) -> list[str]:
    """Return the tables to join, in an order where each parent precedes its children."""
    wanted = {ROOT_TABLE}
    for table in [r["table"] for r in rules] + [DIMENSIONS[d].table for d in dims]:
        wanted.update(join_path(table))
    return sorted(wanted, key=lambda t: (len(join_path(t)), t))


def selection(
    rules: Sequence[dict[str, Any]], instrument_module_id: int | None, dims: Sequence[str]
) -> Selection:
    """Build the FROM and WHERE that select a grouping's packages with dimensions `dims`."""
    tables = needed_tables(rules, dims)
    from_clause: FromClause = FILTER_TABLES[ROOT_TABLE]
    for name in tables[1:]:
        edge = JOIN_GRAPH[name]
        parent, child = FILTER_TABLES[edge.parent], FILTER_TABLES[name]
        from_clause = from_clause.join(child, parent.c[edge.parent_column] == child.c[edge.column])
    clauses = [rule_clause(r) for r in rules]
    if instrument_module_id is not None:
        clauses.append(FILTER_TABLES[ROOT_TABLE].c.instrument_module_id == instrument_module_id)
    clauses.append(not_invalidated(FILTER_TABLES[ROOT_TABLE].c.id))
    return Selection(from_clause, and_(true(), *clauses))


def not_invalidated(package_id: ColumnElement[Any]) -> ColumnElement[bool]:
    """Select packages that no active invalidation marks bad (bad ones leave selections)."""
    mark = Invalidation.__table__
    return ~exists().where(mark.c.raw_data_package_id == package_id, mark.c.undone_at.is_(None))


def package_foreign_keys(dims: Sequence[str]) -> list[str]:
    """Return the RawDataPackage columns that determine `dims` (its scan and/or module)."""
    return sorted({JOIN_GRAPH[_first_hop(d)].parent_column for d in dims})


def package_key_dimensions(dims: Sequence[str]) -> set[str]:
    """Return the dimensions of those columns (`executed_obs_unit`, `instrument_module`).

    Grouping packages by `package_foreign_keys(dims)` is grouping them by these.
    """
    tables = {_first_hop(d) for d in dims}
    return {name for name, dim in DIMENSIONS.items() if dim.table in tables}


def _first_hop(dim: str) -> str:
    """Return the table joined directly to RawDataPackage on the way to `dim`'s table."""
    return join_path(DIMENSIONS[dim].table)[1]


def dimension_joins(base: Subquery, dims: Sequence[str]) -> FromClause:
    """Join the dimension tables of `dims` onto `base`, which carries package foreign keys.

    Lets a query aggregate packages by their foreign keys first and look names up per
    group afterwards, instead of joining names onto every package.
    """
    from_clause: FromClause = base
    for name in needed_tables([], dims)[1:]:
        edge = JOIN_GRAPH[name]
        child = FILTER_TABLES[name]
        parent_column = (
            base.c[edge.parent_column]
            if edge.parent == ROOT_TABLE
            else FILTER_TABLES[edge.parent].c[edge.parent_column]
        )
        from_clause = from_clause.join(child, parent_column == child.c[edge.column])
    return from_clause


def dimension_column(dim: str) -> ColumnElement[str]:
    """Return the SQL value of a dimension: the `name` of its table's row."""
    column: ColumnElement[str] = FILTER_TABLES[DIMENSIONS[dim].table].c.name
    return column


def key_expression(dims: Sequence[str]) -> ColumnElement[str]:
    """Return SQL for `sub_group_key`: sorted `dim=value` pairs joined by `|` ('' for all).

    Values are escaped exactly as `ccat_wm.selection.dimensions.sub_group_key` does.
    """
    if not dims:
        return literal("", type_=String)
    parts = [
        literal(f"{d}=", type_=String) + escape_key_sql(dimension_column(d)) for d in sorted(dims)
    ]
    return func.concat_ws(KEY_SEPARATOR, *parts)


def escape_key_sql(value: ColumnElement[str]) -> ColumnElement[str]:
    """Escape a value in SQL as `escape_key_value` does (same replacements, same order)."""
    for raw, escaped in KEY_ESCAPES:
        value = func.replace(value, literal(raw, String), literal(escaped, String))
    return value


def item_hash(
    kind: str, id_column: SQLColumnExpression[Any], checksum: SQLColumnExpression[Any]
) -> ColumnElement[int]:
    """Return the per-input 64-bit hash over kind, id and checksum (summed into fingerprints).

    `ccat_item_hash` is defined by migration 0002 and used by its trigger too, so the
    product digests the database keeps and the fingerprints computed here agree.
    """
    return func.ccat_item_hash(kind, id_column, checksum)
