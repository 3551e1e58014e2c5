"""Flow tests: the real pipeline flow on the session's Prefect server and the real PostgreSQL."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.context import _temporary_global_settings_context, get_settings_context
from prefect.settings import PREFECT_API_URL, temporary_settings
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from ccat_wm.simulate.register import SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from tests.helpers import locations_data, write_yaml

TOOL = Path(__file__).resolve().parent.parent / "programs" / "contract_tool.py"


@pytest.fixture(scope="session")
def prefect_server(migrated_url: URL, prefect_api: dict[str, str]) -> Iterator[None]:
    """Flows of this process run against the session's Prefect server; the tasks' ops DB
    is the test database."""
    os.environ["CCAT_OPS_DB_URL"] = migrated_url.set(drivername="postgresql").render_as_string(
        hide_password=False
    )
    from tasks.runs import executor

    executor.cache_clear()
    updates = {PREFECT_API_URL: prefect_api["PREFECT_API_URL"]}
    with (
        temporary_settings(updates=updates),
        _temporary_global_settings_context(get_settings_context()),
    ):
        yield
    executor.cache_clear()


def tool_step(name: str, **overrides: Any) -> dict[str, Any]:
    """A step running tests/programs/contract_tool.py with parameters `mode` and `arg`."""
    parameters = {
        "mode": "ok", "arg": "", "fail_key": "", "track": "", "sleep": 0, "once": 0, "fixed": "",
        "hold_key": "",
    }  # fmt: skip
    parameters |= overrides.pop("parameters", {})
    resources = overrides.pop("config_resources", {"cpu": 1, "memory_gb": 1, "time_hours": 1})
    step = {
        "name": name,
        "software": "tool",
        "group_by": ["executed_obs_unit"],
        "max_concurrent_runs": 4,
        "max_retries": 0,
        "config": {
            "name": f"{name}-config",
            "parameters": parameters,
            "command": [
                sys.executable,
                str(TOOL),
                "--mode",
                "{mode}",
                "--arg",
                "{arg}",
                "--fail-key",
                "{fail_key}",
                "--track",
                "{track}",
                "--sleep",
                "{sleep}",
                "--once",
                "{once}",
                "--fixed",
                "{fixed}",
                "--hold-key",
                "{hold_key}",
            ],
            "resources": resources,
        },
    }
    step.update(overrides)
    return step


def setup_pipeline(
    engine: Engine,
    root: Path,
    steps: list[dict[str, Any]],
    *,
    scans: int = 3,
    name: str = "t",
    location: dict[str, Any] | None = None,
    priority: int = 0,
) -> None:
    """Apply a one-location pipeline of `steps` and simulate `scans` scans.

    `location` replaces the processing location `local` (same name, e.g. a SLURM one).
    """
    locations = locations_data(root)
    if location is not None:
        locations["locations"][1] = {"name": "local", **location}
    spec = {
        **locations,
        "instruments": [{"name": "CHAI", "modules": ["LFA", "HFA"]}],
        "software": [
            {
                "name": "tool",
                "ghcr_url": "ghcr.io/ccatobs/test-tool",
                "versions": [{"tag": "1.0.0", "digest": "sha256:" + "ab" * 32, "is_latest": True}],
            }
        ],
        "data_groupings": [{"name": "g", "instrument_module": "CHAI/LFA", "filter_rules": []}],
        "pipelines": [
            {
                "name": name,
                "data_grouping": "g",
                "processing_location": "local",
                "trigger": {"type": "MANUAL"},
                "priority": priority,
                "steps": steps,
            }
        ],
    }
    path = write_yaml(root / "spec.yaml", spec)
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([path]), user="tester")
        if scans:  # 0: apply an edited spec to the same pipeline
            register_simulation(session, SimulationRequest(scans=scans, seed=7))
