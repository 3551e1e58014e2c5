"""Settings from the environment, validated once at start (docs/concepts.md section 6)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path("~/.local/share/ccat-wm")
ERROR_LOG = "logs/ccat-wm-errors.log"
RAW_DATA_EVENT = "ccat.raw-data.registered"
"""Prefect event emitted when raw data packages are registered (`ccat-wm simulate`); the
trigger deployments `ccat-wm deploy` renders run on it."""
DEFAULT_TRIGGER_INTERVAL_S = 600
"""The trigger's safety-net tick (raw-data events start the work; this catches the rest)."""
"""Under the home directory: tracebacks of the errors the CLI reported in one line."""


class Settings(BaseSettings):
    """Environment settings; names are the ones the CCAT deployment already uses."""

    # Only the documented names are read: every field has an alias, and field names are
    # not looked up (`populate_by_name` would read `HOME` into `home`).
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=False)

    ops_db_url: str | None = Field(default=None, alias="CCAT_OPS_DB_URL")
    """Plain `postgresql://` URL of the ops DB; unset means the embedded server."""
    home: Path = Field(default=DEFAULT_HOME, alias="CCAT_WM_HOME")
    """Directory for the embedded PostgreSQL, the default archive and pipeline runs."""
    pipeline_base_dir: Path | None = Field(default=None, alias="PIPELINE_BASE_DIR")
    """Root of run directories on the host; default `<home>/pipelines`."""
    sif_cache_dir: Path | None = Field(default=None, alias="SIF_CACHE_DIR")
    """Default Apptainer image cache of processing locations that do not set one."""
    slurm_partition: str | None = Field(default=None, alias="SLURM_PARTITION")
    """Default SLURM partition of slurm locations that do not set one."""
    slurm_account: str | None = Field(default=None, alias="SLURM_ACCOUNT")
    """Default SLURM account of slurm locations that do not set one."""
    k8s_namespace: str | None = Field(default=None, alias="K8S_NAMESPACE")
    """Default Kubernetes namespace of kubernetes locations that do not set one."""
    flow_workers: int = Field(default=16, ge=1, le=1000, alias="CCAT_WM_FLOW_WORKERS")
    """Threads of a pipeline flow run: the bound on sub-group runs in flight at once.

    On a cluster a run's thread mostly waits for its job, so a SLURM location can take
    hundreds; runs that reach submission together go out as one job array."""
    max_task_runs: int = Field(default=1000, ge=10, le=1000, alias="CCAT_WM_MAX_TASK_RUNS")
    """Most task runs one flow run holds; a larger wave goes out in several flow runs."""
    liveness_s: float = Field(default=90.0, ge=31, le=86_400, alias="CCAT_WM_LIVENESS_S")
    """Seconds without a heartbeat after which a trigger tick marks a Running flow run
    Crashed: three missed heartbeats at the pools' 30 s (Prefect's shortest interval, so
    anything at or below 30 s would crash live flow runs)."""
    slot_lease_s: float = Field(default=60.0, ge=60, le=86_400, alias="CCAT_WM_SLOT_LEASE_S")
    """Lease of a step's concurrency slots, renewed every third of it while the flow run's
    process lives: how long the slots of a process that died stay taken on a Prefect
    server (plus its repossessor's loop). Prefect accepts no lease under 60 s."""
    task_run_tags: bool = Field(default=True, alias="CCAT_WM_TASK_RUN_TAGS")
    """Tag each sub-group's task run with its pipeline, step and location. Prefect makes
    every tag of a task run a concurrency check (two requests to its server per task
    run); a site whose waves are very large may turn the tags off (bench/README.md)."""

    @field_validator("ops_db_url")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("home", "pipeline_base_dir", "sif_cache_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @property
    def error_log(self) -> Path:
        """Where the CLI writes the full traceback of an error it reports in one line."""
        return self.home / ERROR_LOG

    @property
    def runs_dir(self) -> Path:
        """Where run directories live on the host."""
        return self.pipeline_base_dir or self.home / "pipelines"


def load_settings() -> Settings:
    """Read and validate the settings from the current environment."""
    return Settings()
