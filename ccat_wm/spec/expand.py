"""`${VAR}` in a spec's string values is the environment variable VAR.

A site writes its paths once (`path: "${SITE}/archive"`) and applies the same files on
every machine that sets `SITE`. Only the braced form is expanded (a `$` alone, and the
`{name}` placeholders of command templates, stay as written); `$${` writes a literal
`${`. A variable that is not set is an error naming the file, line and field, so that
nothing is applied with an empty path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

VARIABLE = re.compile(r"\$\$\{|\$\{([^}]*)\}")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Loc = tuple[str | int, ...]


def _expand_text(text: str, environ: Mapping[str, str], problems: list[str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name = match.group(1)
        if not NAME.fullmatch(name):
            problems.append(f"${{{name}}} is not a variable name (letters, digits and _)")
        elif name not in environ:
            problems.append(f"${{{name}}} is not set in the environment")
        else:
            return environ[name]
        return match.group(0)

    return VARIABLE.sub(replace, text)


def expand_environment(
    data: Any, environ: Mapping[str, str], loc: Loc = ()
) -> tuple[Any, list[tuple[Loc, str]]]:
    """Return `data` with `${VAR}` expanded in every string value, and the problems by place."""
    problems: list[tuple[Loc, str]] = []
    if isinstance(data, str):
        found: list[str] = []
        value = _expand_text(data, environ, found) if "$" in data else data
        return value, [(loc, message) for message in found]
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out[key], more = expand_environment(value, environ, (*loc, key))
            problems += more
        return out, problems
    if isinstance(data, list):
        items = []
        for index, value in enumerate(data):
            item, more = expand_environment(value, environ, (*loc, index))
            items.append(item)
            problems += more
        return items, problems
    return data, problems
