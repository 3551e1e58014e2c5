"""Backends by the `backend` name of a processing location.

One backend instance per location and process: the SLURM backend shares its status
cache and its job-array submissions between all runs of the location.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from infra.backends import kubernetes, kubernetes_manifest, slurm, slurm_settings
from infra.backends.base import Backend, BackendError
from infra.backends.local import LocalBackend


def _local(state_dir: Path, settings: Mapping[str, Any]) -> Backend:
    del settings  # the local backend has no settings of its own
    return LocalBackend(state_dir)


def _slurm(state_dir: Path, settings: Mapping[str, Any]) -> Backend:
    return slurm.SlurmBackend(state_dir, slurm_settings.settings_from(settings))


def _kubernetes(state_dir: Path, settings: Mapping[str, Any]) -> Backend:
    return kubernetes.KubernetesBackend(state_dir, kubernetes_manifest.settings_from(settings))


BACKENDS: dict[str, Callable[[Path, Mapping[str, Any]], Backend]] = {
    "local": _local,
    "slurm": _slurm,
    "kubernetes": _kubernetes,
}
"""Factories taking the location's job-state directory and its settings."""
_INSTANCES: dict[tuple[str, str, str], Backend] = {}
_LOCK = threading.Lock()


def get_backend(name: str, state_dir: Path, settings: Mapping[str, Any]) -> Backend:
    """Return this process's backend `name` for one processing location (created once)."""
    try:
        factory = BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise BackendError(f"unknown backend {name!r}; known backends: {known}") from None
    key = (name, str(state_dir), json.dumps(dict(settings), sort_keys=True, default=str))
    with _LOCK:
        backend = _INSTANCES.get(key)
        if backend is None:
            backend = _INSTANCES[key] = factory(state_dir, settings)
    return backend
