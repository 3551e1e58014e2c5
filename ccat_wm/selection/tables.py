"""The join graph rooted at RawDataPackage: which tables a filter rule may name.

Adding a joinable table is a data change here: one `JoinEdge` and one entry in
`FILTER_TABLES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import JSON

from ccat_ops_db import models as m

ROOT_TABLE = "RawDataPackage"

FILTER_OPERATORS: tuple[str, ...] = ("eq", "neq", "in", "not_in", "gt", "gte", "lt", "lte", "like")
"""Operators of a filter rule (docs/concepts.md 3.1); `in` and `not_in` take a list."""

LIST_OPERATORS = frozenset({"in", "not_in"})


@dataclass(frozen=True, slots=True)
class JoinEdge:
    """How a table joins its parent on the way from the root."""

    parent: str
    """Spec name of the parent table, nearer the root."""
    parent_column: str
    """Foreign key column on the parent."""
    column: str
    """Referenced column on this table (its primary key)."""


FILTER_MODELS: dict[str, type[m.Base]] = {
    "RawDataPackage": m.RawDataPackage,
    "ExecutedObsUnit": m.ExecutedObsUnit,
    "ObsUnit": m.ObsUnit,
    "Source": m.Source,
    "Line": m.Line,
    "ObservingProgram": m.ObservingProgram,
    "InstrumentModule": m.InstrumentModule,
    "Instrument": m.Instrument,
}
"""Spec table names (as users write them) to their models."""

FILTER_TABLES: dict[str, Table] = {
    name: cast(Table, model.__table__) for name, model in FILTER_MODELS.items()
}
"""Spec table names (as users write them) to their tables."""

JOIN_GRAPH: dict[str, JoinEdge] = {
    "ExecutedObsUnit": JoinEdge("RawDataPackage", "executed_obs_unit_id", "id"),
    "InstrumentModule": JoinEdge("RawDataPackage", "instrument_module_id", "id"),
    "ObsUnit": JoinEdge("ExecutedObsUnit", "obs_unit_id", "id"),
    "Source": JoinEdge("ObsUnit", "source_id", "id"),
    "Line": JoinEdge("ObsUnit", "line_id", "id"),
    "ObservingProgram": JoinEdge("ObsUnit", "observing_program_id", "id"),
    "Instrument": JoinEdge("InstrumentModule", "instrument_id", "id"),
}
"""Every filterable table except the root, with its edge towards the root."""


def join_path(table: str) -> list[str]:
    """Return the tables from the root to `table`, both included."""
    path = [table]
    while path[-1] != ROOT_TABLE:
        path.append(JOIN_GRAPH[path[-1]].parent)
    return list(reversed(path))


def column_names(table: str) -> list[str]:
    """Return the column names a rule may use on `table`."""
    return [c.name for c in FILTER_TABLES[table].columns]


def is_json_column(table: str, column: str) -> bool:
    """Tell whether `column` of `table` holds JSON (and so accepts a `json_path`)."""
    return isinstance(FILTER_TABLES[table].columns[column].type, JSON | JSONB)


def coerce_value(table: str, column: str, value: Any) -> Any:
    """Convert a rule value to the column's Python type (ISO strings to datetimes, ...).

    Raises ValueError naming the column and the expected type when it does not fit.
    """
    python_type = FILTER_TABLES[table].columns[column].type.python_type
    try:
        return TypeAdapter(python_type).validate_python(value)
    except ValidationError:
        raise ValueError(
            f"value {value!r} does not fit {table}.{column}; expected {python_type.__name__}"
        ) from None
