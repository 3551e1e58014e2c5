"""A flow run cancelled in Prefect whose own process cannot act (hung, or gone): the next
trigger tick cancels its runs in the ops DB and their SLURM jobs from the ops DB records.

Real `prefect server start`, real ops DB, real SLURM: the flow run exists only on the
server (no process will ever run its cancellation hook), its run is SUBMITTED with a
real SLURM job, and the flow run is set Cancelled as the UI does.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from tests.flows.conftest import setup_pipeline, tool_step
from tests.helpers import SLURM_TEST_SETTINGS, run_cli, wait_until

pytestmark = [pytest.mark.db, pytest.mark.usefixtures("slurm_cluster")]
RUN = m.ExecutedReductionStep


def test_the_trigger_tick_cancels_runs_and_jobs_of_a_cancelled_flow_run_without_a_process(
    engine: Engine, cli_env: dict[str, str], prefect_api: dict[str, str], tmp_path: Path
) -> None:
    location = {
        "site": "test", "location_type": "PROCESSING", "backend": "slurm", "runtime": "host",
        "path": str(tmp_path / "runs"), "settings": SLURM_TEST_SETTINGS,
    }  # fmt: skip
    setup_pipeline(engine, tmp_path, [tool_step("reduce")], scans=1, location=location)
    api = prefect_api["PREFECT_API_URL"]
    flow = httpx.post(f"{api}/flows/", json={"name": "ccat-pipeline"}, timeout=30).json()
    flow_run = httpx.post(
        f"{api}/flow_runs/", json={"flow_id": flow["id"], "name": "t"}, timeout=30
    ).json()
    script = tmp_path / "sleep.sh"
    script.write_text("#!/bin/sh\nsleep 300\n")
    job_id = subprocess.run(
        ["sbatch", "--parsable", "--partition=debug", "--account=ccat", "--mem=100M",
         f"--output={tmp_path / 'job.out'}", str(script)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    run_env = cli_env | prefect_api
    with Session(engine) as session, session.begin():  # the state a hung flow run leaves
        step_id = session.scalar(select(m.ReductionStep.id))
        version_id = session.scalar(select(m.ReductionSoftwareVersion.id))
        run = RUN(
            reduction_step_id=step_id, reduction_software_version_id=version_id,
            status=m.RunStatus.SUBMITTED, sub_group_key="executed_obs_unit=x",
            reason=m.GapReason.NEW, input_fingerprint="f" * 64, config_fingerprint="c" * 64,
            hpc_job_id=job_id, prefect_flow_run_id=flow_run["id"],
        )  # fmt: skip
        session.add(run)
        session.flush()
        run_id = run.id
    httpx.post(
        f"{api}/flow_runs/{flow_run['id']}/set_state",
        json={"state": {"type": "CANCELLED", "name": "Cancelled"}, "force": True},
        timeout=30,
    ).raise_for_status()

    ticked = run_cli(run_env, "trigger", "--json")
    assert ticked.returncode == 0, ticked.stderr
    assert json.loads(ticked.stdout)["cancelled"] == [run_id]
    with Session(engine) as session:
        assert session.scalar(select(RUN.status).where(RUN.id == run_id)) is m.RunStatus.CANCELLED
    wait_until(
        f"SLURM job {job_id} to be CANCELLED in accounting",
        lambda: sacct_state(job_id).startswith("CANCELLED"),
        timeout=60,
        every=1,
    )


def sacct_state(job_id: str) -> str:
    """The job's state in SLURM's accounting ('' until it is recorded)."""
    out = subprocess.run(
        ["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={job_id}",
         "--format=State"], capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return out[0] if out else ""
