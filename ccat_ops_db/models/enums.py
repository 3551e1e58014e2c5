"""Named PostgreSQL enums of the ops DB; their values are the public contract."""

from __future__ import annotations

import enum

from sqlalchemy import Enum as SAEnum


class RunStatus(enum.StrEnum):
    """Lifecycle of an ExecutedReductionStep (docs/concepts.md section 2)."""

    PENDING = "PENDING"
    STAGING_DATA = "STAGING_DATA"
    SUBMITTED = "SUBMITTED"
    RUNNING = "RUNNING"
    COLLECTING_RESULTS = "COLLECTING_RESULTS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


IN_FLIGHT_STATUSES: tuple[RunStatus, ...] = (
    RunStatus.STAGING_DATA,
    RunStatus.SUBMITTED,
    RunStatus.RUNNING,
    RunStatus.COLLECTING_RESULTS,
)
"""Statuses of a run that started and has not ended: a job may be running for it."""
UNFINISHED_STATUSES: tuple[RunStatus, ...] = (RunStatus.PENDING, *IN_FLIGHT_STATUSES)
"""Statuses of a run that still holds its (step, sub-group): at most one such run each."""


class GapReason(enum.StrEnum):
    """Why a (step, sub-group) needs a run, and so why a run was created (docs/concepts.md 3.2).

    One enum for gap evaluation and for the runs it creates. `failed` (retries
    exhausted) is a state of a sub-group, never the reason of a run (a check
    constraint refuses it); `forced` and `retry` are a person's `ccat-wm run --force`
    and `ccat-wm retry`.
    """

    NEW = "new"
    INPUTS_CHANGED = "inputs_changed"
    VERSION_CHANGED = "version_changed"
    CONFIG_CHANGED = "config_changed"
    FORCED = "forced"
    RETRY = "retry"
    INVALIDATED = "invalidated"
    """Its current run was made from data a person invalidated (`ccat-wm invalidate`)."""
    QA_CHANGED = "qa_changed"
    """A person's quality decision (`ccat-wm qa`) changed which upstream runs feed it."""
    FAILED = "failed"


class FailureKind(enum.StrEnum):
    """Why an attempt of a run failed, in classes an operator acts on (and badput is split by).

    OUT_OF_MEMORY and TIMEOUT escalate the next attempt's memory or time; OVER_LIMIT and
    STUCK_PENDING cannot be mended by retrying, so such a failure uses up the run's retries.
    """

    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    """The cluster lost the node (NODE_FAIL, BOOT_FAIL)."""
    PREEMPTED = "PREEMPTED"
    EXIT_CODE = "EXIT_CODE"
    """The software exited non-zero."""
    SIGNAL = "SIGNAL"
    """The job was killed by a signal (other than for memory or time)."""
    CONTRACT = "CONTRACT"
    """The job ended but broke the container contract (outputs, checksums)."""
    NOT_STARTED = "NOT_STARTED"
    """Staging, the image or the submission failed: no job ran."""
    OVER_LIMIT = "OVER_LIMIT"
    """The request exceeds what the processing location can ever give."""
    STUCK_PENDING = "STUCK_PENDING"
    """The scheduler held the job for a reason that does not clear by itself."""
    LOST = "LOST"
    """The backend lost track of the job."""
    INTERNAL = "INTERNAL"
    """An error of the workflow manager itself."""


UNRETRYABLE_FAILURES: frozenset[FailureKind] = frozenset(
    {FailureKind.OVER_LIMIT, FailureKind.STUCK_PENDING}
)
"""Failures no retry can mend: a run failing so has used up its retries at once."""


class CleanupScope(enum.StrEnum):
    """What `ccat-wm gc` removed of a finished run's directory (docs/operations.md)."""

    WORKSPACE = "workspace"
    """A COMPLETED run's staged inputs and scratch files; its products, manifest and logs stay."""
    RUN_DIRECTORY = "run_directory"
    """A failed or cancelled run's whole directory but its registered products (logs)."""


class SnapshotOrigin(enum.StrEnum):
    """Where a run's snapshot (RunSnapshot) came from."""

    RECORDED = "recorded"
    """Written when the run started, from what it was about to use."""
    BACKFILLED = "backfilled"
    """Reconstructed by migration 0005 for a run made before snapshots existed."""


class TriggerType(enum.StrEnum):
    """How a pipeline is started."""

    CONTINUOUS = "CONTINUOUS"
    CRON = "CRON"
    MANUAL = "MANUAL"


class DataProductType(enum.StrEnum):
    """Class of a product, from the output sub-directory it was written to."""

    SCIENCE = "SCIENCE"
    INTERMEDIATE = "INTERMEDIATE"
    QA_METRIC = "QA_METRIC"
    PLOT = "PLOT"
    STATISTICS = "STATISTICS"
    LOG = "LOG"


class LocationType(enum.StrEnum):
    """Role of a DataLocation in the data flow."""

    SOURCE = "SOURCE"
    BUFFER = "BUFFER"
    LONG_TERM_ARCHIVE = "LONG_TERM_ARCHIVE"
    PROCESSING = "PROCESSING"


class StorageType(enum.StrEnum):
    """Storage technology of a DataLocation."""

    DISK = "disk"
    S3 = "s3"
    TAPE = "tape"


class Backend(enum.StrEnum):
    """Execution backend of a processing location (docs/concepts.md section 5)."""

    SLURM = "slurm"
    KUBERNETES = "kubernetes"
    LOCAL = "local"


class Runtime(enum.StrEnum):
    """Container runtime of a processing location."""

    APPTAINER = "apptainer"
    """Apptainer runs the image (a SIF, cached by digest): HPC clusters."""
    PODMAN = "podman"
    """Podman runs the OCI image: hosts that have podman (local or SLURM locations)."""
    HOST = "host"
    """No container: the command runs on the host (development and tests)."""


class ImageKind(enum.StrEnum):
    """What a software version's image is."""

    OCI = "oci"
    """An OCI image in a registry (or a container engine's local storage)."""
    SIF = "sif"
    """An Apptainer SIF file, pushed to an OCI registry with ORAS or kept as a file."""


class VersionPolicy(enum.StrEnum):
    """Which software versions a step's results stay valid under (docs/concepts.md 3.3)."""

    COMPATIBLE = "compatible"
    EXACT = "exact"


class PackageState(enum.StrEnum):
    """Where a raw data package is in its life from telescope to archive."""

    REGISTERED = "REGISTERED"
    ARCHIVED = "ARCHIVED"
    DELETED = "DELETED"


class StagingStatus(enum.StrEnum):
    """State of a StagingJob that brings a package to a processing location."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


def pg_enum(enum_cls: type[enum.Enum], name: str) -> SAEnum:
    """Return a named PostgreSQL enum type storing the members' values."""
    return SAEnum(
        enum_cls,
        name=name,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )
