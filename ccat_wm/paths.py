"""Names that become path components, and paths that must stay under their root.

Every name that comes from people or data (a program, a source, a sub-group key) is
written into a directory or file name only through `path_component`: every byte outside
`A-Z a-z 0-9 . _ - = ,` is percent-encoded (so `/`, backslashes, spaces and NUL never appear),
and a name made only of dots (`.`, `..`) has its dots encoded too, so that no component
ever means "this directory" or "the parent directory". The encoding is reversible
(`from_path_component`). Location paths are stored absolute and normalized.
"""

from __future__ import annotations

import os
from urllib.parse import quote, unquote

SAFE = "=,-._"
"""Characters kept as they are, besides ASCII letters and digits."""
EMPTY = "%empty"
"""The component of the empty name."""


def path_component(name: str) -> str:
    """Encode a name as one safe, reversible path component (never `.`, `..` or empty)."""
    if not name:
        return EMPTY  # quote never produces it (a `%` it writes is followed by two hex digits)
    encoded = quote(name, safe=SAFE)
    if set(encoded) == {"."}:
        encoded = encoded.replace(".", "%2E")
    return encoded


def from_path_component(component: str) -> str:
    """Inverse of `path_component`."""
    return "" if component == EMPTY else unquote(component)


def normalized_location_path(path: str) -> str:
    """Return an absolute location path without `.`, `..` or doubled separators.

    Raises ValueError for a relative path: a location's path is read on other machines
    (the processing host, a cluster node), where no working directory would be the same.
    """
    if not os.path.isabs(path):
        raise ValueError(f"location path {path!r} is relative; expected an absolute path")
    return os.path.normpath(path)
