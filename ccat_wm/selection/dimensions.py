"""The `group_by` dimensions, their functional hierarchy and the `sub_group_key` format.

A scan (`executed_obs_unit`) determines its obs unit, which determines source, line and
observing program; an instrument module is independent of the scan. Adding a dimension
is a data change here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dimension:
    """A dimension a step may group its data by."""

    name: str
    """The name used in `group_by` and in sub-group keys."""
    table: str
    """Spec name of the table whose `name` column gives the dimension's value."""
    determines: tuple[str, ...] = ()
    """Dimensions whose value follows from this one's (one step down the hierarchy)."""


DIMENSIONS: dict[str, Dimension] = {
    d.name: d
    for d in (
        Dimension("executed_obs_unit", "ExecutedObsUnit", ("obs_unit",)),
        Dimension("obs_unit", "ObsUnit", ("source", "line", "observing_program")),
        Dimension("source", "Source"),
        Dimension("line", "Line"),
        Dimension("observing_program", "ObservingProgram"),
        Dimension("instrument_module", "InstrumentModule", ("instrument",)),
        Dimension("instrument", "Instrument"),
    )
}

ALL_KEY_DISPLAY = "all"
"""How the empty all-data sub-group key is shown."""


def closure(dimensions: Iterable[str]) -> frozenset[str]:
    """Return every dimension determined by `dimensions` (themselves included)."""
    seen: set[str] = set()
    stack = list(dimensions)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(DIMENSIONS[name].determines)
    return frozenset(seen)


def finer_dimensions(upstream: Iterable[str], downstream: Iterable[str]) -> list[str]:
    """Return the downstream dimensions the upstream grouping does not determine.

    Empty means the downstream grouping is valid: every upstream sub-group falls
    inside exactly one downstream sub-group.
    """
    known = closure(upstream)
    return [d for d in downstream if d not in known]


KEY_SEPARATOR = "|"
KEY_ESCAPE = "\\"
KEY_ESCAPES = ((KEY_ESCAPE, KEY_ESCAPE * 2), (KEY_SEPARATOR, KEY_ESCAPE + KEY_SEPARATOR))
"""How a value is escaped in a key, in order: the escape character first, then `|`.

Dimension names are fixed identifiers without `=` or `|`, so a key splits at every
unescaped `|` into `dim=value` pairs and each pair at its first `=`: two different
sub-groups never share a key, whatever their names hold. The SQL form
(`ccat_wm.selection.query.key_expression`) applies the same replacements."""


def escape_key_value(value: str) -> str:
    r"""Escape one dimension value for a sub-group key (`\` -> `\\`, `|` -> `\|`)."""
    for raw, escaped in KEY_ESCAPES:
        value = value.replace(raw, escaped)
    return value


def sub_group_key(values: Mapping[str, str]) -> str:
    """Return the key of a sub-group: sorted `dim=value` pairs joined by `|`, values escaped."""
    return KEY_SEPARATOR.join(f"{dim}={escape_key_value(values[dim])}" for dim in sorted(values))


def parse_key(key: str) -> dict[str, str]:
    """Inverse of `sub_group_key`: the dimension values of a key (`{}` for all data)."""
    values: dict[str, str] = {}
    if not key:
        return values
    pairs: list[str] = []
    current: list[str] = []
    chars = iter(key)
    for char in chars:
        if char == KEY_ESCAPE:
            current.append(next(chars, ""))
        elif char == KEY_SEPARATOR:
            pairs.append("".join(current))
            current = []
        else:
            current.append(char)
    pairs.append("".join(current))
    for pair in pairs:
        dim, _, value = pair.partition("=")
        values[dim] = value
    return values


def display_key(key: str) -> str:
    """Return the key as shown to people (`all` for the all-data sub-group)."""
    return key or ALL_KEY_DISPLAY
