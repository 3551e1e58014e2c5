"""Backends by the `backend` name of a processing location."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from infra.backends.base import Backend, BackendError
from infra.backends.local import LocalBackend


def _local(state_dir: Path, settings: Mapping[str, Any]) -> Backend:
    del settings  # the local backend has no settings of its own
    return LocalBackend(state_dir)


BACKENDS: dict[str, Callable[[Path, Mapping[str, Any]], Backend]] = {"local": _local}
"""Factories taking the location's job-state directory and its settings."""


def get_backend(name: str, state_dir: Path, settings: Mapping[str, Any]) -> Backend:
    """Return the backend registered as `name`, configured for one processing location."""
    try:
        factory = BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise BackendError(
            f"unknown or not yet available backend {name!r}; known backends: {known}"
        ) from None
    return factory(state_dir, settings)
