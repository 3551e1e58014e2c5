"""The backend of a processing location, with the environment's defaults applied."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ccat_ops_db import models as m
from ccat_wm.settings import Settings, load_settings
from infra.backends import Backend, get_backend

JOB_STATE_DIR = ".jobs"
"""Directory under a processing location's path where backends keep their job files."""


def location_backend(
    backend: m.Backend,
    path: Path,
    location_settings: Mapping[str, Any],
    settings: Settings | None = None,
) -> Backend:
    """Return the location's backend; unset SLURM partition and account come from the env."""
    settings = settings or load_settings()
    defaults = {
        "slurm_partition": settings.slurm_partition,
        "slurm_account": settings.slurm_account,
        "k8s_namespace": settings.k8s_namespace,
    }
    merged = {k: v for k, v in defaults.items() if v is not None} | dict(location_settings)
    return get_backend(backend.value, path / JOB_STATE_DIR, merged)
