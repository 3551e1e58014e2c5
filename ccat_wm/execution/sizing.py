"""What each attempt of a run asks for, and whether the location can ever give it.

The first attempt asks for the step's configured resources. A retry after OUT_OF_MEMORY
asks for the failed attempt's memory times the step's `retry_memory_factor`, after
TIMEOUT for its time limit times `retry_time_factor`, capped by the location's limits;
any other failure retries with the failed attempt's request unchanged. A request above
a limit fails the run at once (OVER_LIMIT), as does an escalation that the limit stops
from growing: no retry could mend either, so such a failure uses up the run's retries.

Limits are the location's settings `max_cpu`, `max_memory_gb`, `max_time_hours` and
`max_gpu`, and what the scheduler reports (a SLURM partition's MaxTime,
MaxMemPerNode, MaxCPUsPerNode and its largest node); the smaller one wins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ccat_ops_db.models import FailureKind
from ccat_wm.errors import CcatWmError
from ccat_wm.execution.context import RunContext
from infra.backends import ResourceLimits, Resources

DEFAULT_PENDING_GRACE_S = 600.0
"""How long a job may be held for a reason that cannot clear before it is cancelled."""
_JOB_END_KINDS = {
    "OUT_OF_MEMORY": FailureKind.OUT_OF_MEMORY,
    "TIMEOUT": FailureKind.TIMEOUT,
    "DEADLINE": FailureKind.TIMEOUT,
    "NODE_FAIL": FailureKind.NODE_FAIL,
    "BOOT_FAIL": FailureKind.NODE_FAIL,
    "PREEMPTED": FailureKind.PREEMPTED,
    "STUCK_PENDING": FailureKind.STUCK_PENDING,
}
_UNITS = {"cpu": "", "memory_gb": " GB", "time_hours": " h", "gpu": ""}


class ImpossibleRequestError(CcatWmError):
    """An attempt needs more than the processing location can ever give one job."""

    def __init__(self, message: str, request: Resources | None = None) -> None:
        """`request`: what the attempt would have asked for, when known."""
        super().__init__(message)
        self.request = request


@dataclass(frozen=True, slots=True)
class EscalationFactors:
    """A step's `retry_memory_factor` and `retry_time_factor`."""

    memory: float = 2.0
    time: float = 2.0


def configured_resources(requirements: Mapping[str, Any]) -> Resources:
    """Return a step config's `resources` (defaults: 1 CPU, 1 GB, 1 hour, no GPU)."""
    return Resources(
        cpu=int(requirements.get("cpu", 1)),
        memory_gb=float(requirements.get("memory_gb", 1.0)),
        time_hours=float(requirements.get("time_hours", 1.0)),
        gpu=int(requirements.get("gpu", 0)),
    )


def resources_json(request: Resources) -> dict[str, Any]:
    """Return a request as stored in `requested_resources` (the config's own keys)."""
    return asdict(request)


def describe(request: Mapping[str, Any] | Resources | None) -> str:
    """Say a request in words: `2 CPU, 4 GB, 1.5 h` (and GPUs when asked for)."""
    if request is None:
        return "unknown"
    values = asdict(request) if isinstance(request, Resources) else dict(request)
    parts = [
        f"{values.get('cpu', 1)} CPU",
        f"{_number(values.get('memory_gb', 1.0))} GB",
        f"{_number(values.get('time_hours', 1.0))} h",
    ]
    if values.get("gpu"):
        parts.append(f"{values['gpu']} GPU")
    return ", ".join(parts)


def _number(value: float) -> str:
    return f"{value:.3g}" if value < 10 else f"{value:.4g}"


@dataclass(frozen=True, slots=True)
class LocationLimits:
    """The most one job may ask for at a location, and where each limit comes from."""

    values: ResourceLimits
    sources: dict[str, str]
    """Resource -> `location setting max_memory_gb` or the scheduler's source."""

    def of(self, name: str) -> float | None:
        """Return the limit of one resource (`cpu`, `memory_gb`, `time_hours`, `gpu`), or None."""
        value: float | None = getattr(self.values, name)
        return value


def combined_limits(settings: Mapping[str, Any], scheduler: ResourceLimits) -> LocationLimits:
    """Return the location's limits: the smaller of its `max_<resource>` and the scheduler's.

    Each limit comes with where it is from, for the messages that name it.
    """
    values: dict[str, Any] = {}
    sources = {}
    for name in _UNITS:
        mine, theirs = settings.get(f"max_{name}"), getattr(scheduler, name)
        known = [v for v in (mine, theirs) if v is not None]
        values[name] = min(known) if known else None
        if theirs is not None and (mine is None or theirs <= mine):
            sources[name] = scheduler.source
        elif mine is not None:
            sources[name] = f"location setting max_{name}"
    return LocationLimits(ResourceLimits(**values), sources)


def check_request(request: Resources, limits: LocationLimits, location: str) -> None:
    """Refuse a request that exceeds a limit, naming the resource, the request and the limit."""
    problems = []
    for name, unit in _UNITS.items():
        limit = limits.of(name)
        asked = getattr(request, name)
        if limit is not None and asked > limit + 1e-9:
            problems.append(
                f"{name} {_number(asked)}{unit} exceeds the limit {_number(limit)}{unit} "
                f"({limits.sources[name]})"
            )
    if problems:
        raise ImpossibleRequestError(
            f"the request ({describe(request)}) can never run at location {location!r}: "
            f"{'; '.join(problems)}; lower the step's resources or raise the location's limit",
            request,
        )


def escalate(
    previous: Resources,
    kind: FailureKind | None,
    factors: EscalationFactors,
    limits: LocationLimits,
) -> Resources:
    """Return the request of the attempt after one that failed with `kind`.

    Raises ImpossibleRequestError when the failure asks for more memory or time and the
    limit leaves no room to grow.
    """
    if kind is FailureKind.OUT_OF_MEMORY:
        memory = _grow(previous.memory_gb, factors.memory, "memory_gb", limits)
        return Resources(previous.cpu, memory, previous.time_hours, previous.gpu)
    if kind is FailureKind.TIMEOUT:
        hours = _grow(previous.time_hours, factors.time, "time_hours", limits)
        return Resources(previous.cpu, previous.memory_gb, hours, previous.gpu)
    return previous


def _grow(value: float, factor: float, name: str, limits: LocationLimits) -> float:
    limit = limits.of(name)
    grown = value * factor
    if limit is not None:
        grown = min(grown, limit)
    if grown <= value * (1 + 1e-9):
        unit = _UNITS[name]
        raise ImpossibleRequestError(
            f"the previous attempt failed with {name} {_number(value)}{unit}, already the limit "
            f"{_number(limit or value)}{unit} ({limits.sources.get(name, 'no limit')}); a retry "
            "cannot ask for more"
        )
    if name == "memory_gb":  # whole MiB, as schedulers take it
        grown = math.ceil(grown * 1024) / 1024
    return grown


def attempt_request(ctx: RunContext, limits: LocationLimits) -> Resources:
    """Return what this attempt of the run asks for (see the module docstring).

    The run's row holds the previous attempt's request and failure until this attempt is
    submitted, so a process resuming the attempt computes the same request again.
    """
    if ctx.retry_count == 0 or ctx.requested_resources is None:
        return configured_resources(ctx.resources)
    factors = EscalationFactors(ctx.retry_memory_factor, ctx.retry_time_factor)
    previous = configured_resources(ctx.requested_resources)
    return escalate(previous, ctx.failure_kind, factors, limits)


def classify_failure(reason: str, exit_code: int | None = None) -> FailureKind:
    """Return the class of a finished job's failure reason (as the backends word it)."""
    head = reason.split(":", maxsplit=1)[0].strip()
    if head in _JOB_END_KINDS:
        return _JOB_END_KINDS[head]
    if reason.startswith("killed by"):
        return FailureKind.SIGNAL
    if reason.startswith("backend lost"):
        return FailureKind.LOST
    if reason.startswith("exit code") or exit_code is not None:
        return FailureKind.EXIT_CODE
    return FailureKind.NOT_STARTED


def pending_grace_s(settings: Mapping[str, Any]) -> float:
    """How long a job may be held for a reason that cannot clear (setting `pending_grace_s`)."""
    return float(settings.get("pending_grace_s", DEFAULT_PENDING_GRACE_S))
