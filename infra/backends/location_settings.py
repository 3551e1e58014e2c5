"""Reading a processing location's backend settings (the `settings` of its spec)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from infra.backends.base import BackendError

SettingsModel = TypeVar("SettingsModel", bound=BaseModel)


def validated_settings(
    model: type[SettingsModel], values: Mapping[str, Any], backend: str
) -> SettingsModel:
    """Validate a location's settings for `backend`; the error names each wrong setting."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise BackendError(f"invalid {backend} settings of the location: {problems}") from None
