"""Streaming SHA-256 of files, the checksum of raw data and products (plain hex)."""

from __future__ import annotations

import hashlib
from io import BufferedReader
from pathlib import Path

from ccat_wm.errors import CcatWmError


class NotRegularFileError(CcatWmError):
    """A path to be hashed or read is not a regular file (a pipe, a socket, a device)."""


def sha256_file(source: Path | BufferedReader) -> str:
    """Hex SHA-256 of a file or an open binary file, read in chunks (GIL released)."""
    if isinstance(source, Path):
        with source.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    return hashlib.file_digest(source, "sha256").hexdigest()
