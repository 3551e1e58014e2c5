"""Execution backends: one interface (`base.Backend`), one module per backend, a registry."""

from infra.backends.base import (
    Backend,
    BackendError,
    JobInfo,
    JobSpec,
    JobState,
    ResourceLimits,
    Resources,
)
from infra.backends.registry import BACKENDS, get_backend

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendError",
    "JobInfo",
    "JobSpec",
    "JobState",
    "ResourceLimits",
    "Resources",
    "get_backend",
]
