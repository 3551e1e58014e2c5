"""Every ops DB model, re-exported from its domain module."""

from ccat_ops_db.models.base import Base
from ccat_ops_db.models.enums import (
    IN_FLIGHT_STATUSES,
    UNRETRYABLE_FAILURES,
    Backend,
    DataProductType,
    FailureKind,
    GapReason,
    ImageKind,
    LocationType,
    PackageState,
    RunStatus,
    Runtime,
    SnapshotOrigin,
    StagingStatus,
    StorageType,
    TriggerType,
    VersionPolicy,
)
from ccat_ops_db.models.invalidation import InvalidatedRun, Invalidation
from ccat_ops_db.models.locations import DataLocation, RawDataPackageCopy, Site, StagingJob
from ccat_ops_db.models.observation import (
    ExecutedObsUnit,
    Instrument,
    InstrumentModule,
    Line,
    ObservingProgram,
    ObsUnit,
    RawDataPackage,
    Source,
)
from ccat_ops_db.models.pipeline import (
    DataGrouping,
    Pipeline,
    ReductionStep,
    ReductionStepConfig,
    reduction_step_dependency,
)
from ccat_ops_db.models.products import DataProduct, data_product_lineage
from ccat_ops_db.models.runs import (
    ExecutedReductionStep,
    ExecutedReductionStepInput,
    RunAttempt,
    RunSnapshot,
    RunStatusChange,
)
from ccat_ops_db.models.software import ReductionSoftware, ReductionSoftwareVersion
from ccat_ops_db.models.users import User

__all__ = [
    "IN_FLIGHT_STATUSES",
    "UNRETRYABLE_FAILURES",
    "Backend",
    "Base",
    "DataGrouping",
    "DataLocation",
    "DataProduct",
    "DataProductType",
    "ExecutedObsUnit",
    "ExecutedReductionStep",
    "ExecutedReductionStepInput",
    "FailureKind",
    "GapReason",
    "ImageKind",
    "Instrument",
    "InstrumentModule",
    "InvalidatedRun",
    "Invalidation",
    "Line",
    "LocationType",
    "ObsUnit",
    "ObservingProgram",
    "PackageState",
    "Pipeline",
    "RawDataPackage",
    "RawDataPackageCopy",
    "ReductionSoftware",
    "ReductionSoftwareVersion",
    "ReductionStep",
    "ReductionStepConfig",
    "RunAttempt",
    "RunSnapshot",
    "RunStatus",
    "RunStatusChange",
    "Runtime",
    "Site",
    "SnapshotOrigin",
    "Source",
    "StagingJob",
    "StagingStatus",
    "StorageType",
    "TriggerType",
    "User",
    "VersionPolicy",
    "data_product_lineage",
    "reduction_step_dependency",
]
