"""A SLURM location's settings (`slurm_*` in its spec), validated."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from infra.backends.location_settings import validated_settings

MAX_NICE = 2_147_483_645
"""The largest `--nice` SLURM accepts."""


class SlurmSettings(BaseModel):
    """A slurm location's settings (location settings `slurm_*`, env defaults applied)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    partition: str | None = Field(default=None, alias="slurm_partition")
    account: str | None = Field(default=None, alias="slurm_account")
    extra_args: tuple[str, ...] = Field(default=(), alias="slurm_extra_args")
    """More `sbatch` options, each one argument starting with `--` (e.g. `--qos=high`)."""
    poll_interval_s: float = Field(default=5.0, gt=0, alias="slurm_poll_interval_s")
    """Seconds between two squeue/sacct refreshes of the shared status cache."""
    array_window_s: float = Field(default=0.25, ge=0, alias="slurm_array_window_s")
    """How long a submission waits for others to join its job array."""
    max_array_size: int = Field(default=1000, ge=1, alias="slurm_max_array_size")
    priority_mode: Literal["nice", "qos", "none"] = Field(default="nice", alias="slurm_priority")
    """How a pipeline's priority reaches SLURM (see `priority_options`)."""
    nice_base: int = Field(default=100, ge=0, le=MAX_NICE, alias="slurm_nice_base")
    qos_by_priority: dict[int, str] = Field(default_factory=dict, alias="slurm_qos_by_priority")

    @field_validator("extra_args")
    @classmethod
    def _options_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [a for a in value if not a.startswith("--")]
        if bad:
            raise ValueError(f"expected sbatch options of the form --name=value, got {bad}")
        return value


def settings_from(values: Mapping[str, Any]) -> SlurmSettings:
    """Validate a location's settings for SLURM; the error names the setting."""
    return validated_settings(SlurmSettings, values, "SLURM")
