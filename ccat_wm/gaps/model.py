"""Plain data of gap evaluation: the snapshot it reads and the gaps it reports."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import NamedTuple

from ccat_ops_db.models import GapReason, TriggerType, VersionPolicy

__all__ = ["GapReason"]  # the one reason enum, defined with the models


@dataclass(frozen=True, slots=True)
class SetDigest:
    """Additive digest of an input set: count and sum of 64-bit item hashes.

    The digest of a union of disjoint sets is the sum of their digests, so sub-group
    fingerprints are composed from finer aggregates without re-reading the inputs.
    """

    count: int = 0
    """Number of inputs."""
    hash_sum: int = 0
    """Sum of the inputs' `hashtextextended` values (exact, no overflow)."""

    @property
    def fingerprint(self) -> str:
        """The fingerprint stored on runs: `v1:<count>:<sum>`."""
        return fingerprint(self.count, self.hash_sum)


def fingerprint(count: int, hash_sum: int) -> str:
    """Return the fingerprint of an input set from its digest (the format stored on runs)."""
    return f"v1:{count}:{hash_sum}"


@dataclass(frozen=True, slots=True)
class VersionRef:
    """A software version as gap evaluation needs it."""

    id: int
    """ReductionSoftwareVersion id."""
    tag: str
    """Version tag."""


@dataclass(frozen=True, slots=True)
class StepInfo:
    """A step's settings, in the pipeline's topological order."""

    id: int
    name: str
    group_by: tuple[str, ...]
    upstream: tuple[str, ...]
    """Names of the steps this one depends on."""
    cooldown_seconds: int
    max_wait_seconds: int | None
    schedule: str | None
    max_retries: int
    version_policy: VersionPolicy
    run_version: VersionRef | None
    """The version new runs use: the pin under `exact`, the latest under `compatible`."""
    config_fingerprint: str
    """Fingerprint of parameters, environment, command and image repository."""
    configured_cpu_hours: float = 0.0
    """cpu x time_hours of the config's resources: the cost estimate without history."""
    valid_version_ids: tuple[int, ...] = ()
    """Versions whose results count under the policy (same major as `run_version`, or the pin)."""


@dataclass(frozen=True, slots=True)
class PipelineInfo:
    """A pipeline's trigger settings."""

    id: int
    name: str
    enabled: bool
    trigger_type: TriggerType
    data_grouping_id: int = 0
    cron: str | None = None
    timezone: str = "UTC"


class CurrentRun(NamedTuple):
    """The latest COMPLETED run of a (step, sub-group) (a NamedTuple: one per scan)."""

    id: int
    version_id: int
    config_fingerprint: str
    input_fingerprint: str
    created_at: dt.datetime
    finished_at: dt.datetime


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """Failures of a (step, sub-group) since its current run, on one input/config/version."""

    input_fingerprint: str
    config_fingerprint: str
    version_id: int
    failures: int
    """Failed attempts: the sum of `retry_count + 1` over the FAILED runs."""


@dataclass
class StepRuns:
    """Run state of one step, by sub-group key."""

    current: dict[str, CurrentRun] = field(default_factory=dict)
    in_flight: set[str] = field(default_factory=set)
    failures: dict[str, list[FailureRecord]] = field(default_factory=dict)
    invalidated: set[str] = field(default_factory=set)
    """Keys with a COMPLETED run that invalidated data flowed into (`ccat-wm invalidate`)."""
    qa_changed: set[str] = field(default_factory=set)
    """Keys whose inputs a person's quality decision changed since their current run
    (`ccat-wm qa`): a gap of theirs says `qa_changed`."""


class GroupRow(NamedTuple):
    """One sub-group of one step with its inputs, as the pipeline query returns it.

    Root steps: one row per finest group of selected packages (several rows may share a
    key when the pipeline has several roots). Downstream steps: one row per key, with the
    digest of the products of the current upstream runs inside it.
    """

    step: int
    """Index of the step in `PipelineSnapshot.steps`."""
    key: str
    """The step's `sub_group_key`."""
    keys: tuple[str | None, ...]
    """Keys of the sub-groups of other steps this row falls in (None where not determined)."""
    inputs: int
    """Number of inputs."""
    hash_sum: int
    """Sum of the inputs' item hashes (see SetDigest)."""
    last_change: dt.datetime | None
    """When the newest input appeared (package ingest, upstream run completion)."""
    oldest_unprocessed: dt.datetime | None
    """When the oldest input the step's current run has not seen appeared (if known)."""


@dataclass
class PipelineSnapshot:
    """Everything gap evaluation reads about one pipeline.

    When `pruned`, root steps' rows hold only the sub-groups that may have a gap (no
    current run, a different input set, version or config, or a run in flight): the
    settled majority never leaves the database. `evaluate(force=True)` needs a full one.
    """

    pipeline: PipelineInfo
    steps: list[StepInfo]
    rows: list[list[GroupRow]]
    """Per step (same order as `steps`)."""
    runs: dict[str, StepRuns]
    """Per step name; current runs only of the sub-groups in `rows`."""
    pruned: bool = False


@dataclass(frozen=True, slots=True)
class Gap:
    """A (step, sub-group) that needs a run, or is `failed`."""

    pipeline: str
    step: str
    sub_group_key: str
    reason: GapReason
    ready: bool
    """Every upstream sub-group inside it is settled (no gap, nothing in flight), and it
    is not `failed`: a manual run executes exactly the ready gaps at once."""
    eligible_at: dt.datetime | None
    """When it fires (cooldown, maximum wait, schedules); None: only when a person asks."""
    eligible: bool
    """Ready and due at the evaluation's `now`: a run is created for it."""
    inputs: int
    """Number of inputs in its current input set."""
    input_fingerprint: str
