"""A `ccat-wm run` killed with SIGKILL never blocks later runs (issue: slots leaked forever).

Real parts: the CLI in subprocesses, the real PostgreSQL, the local backend, and Prefect's
ephemeral server (which dies with the process, and with it the slot leases it kept in
memory) or a `prefect server start` that lives on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from tests.flows.conftest import setup_pipeline, tool_step
from tests.helpers import CCAT_WM, run_cli, wait_until

RUN = m.ExecutedReductionStep


def _statuses(engine: Engine) -> dict[int, str]:
    with Session(engine) as session:
        return {r.id: r.status.value for r in session.scalars(select(RUN).order_by(RUN.id))}


def _history(engine: Engine, run_id: int) -> list[str]:
    with Session(engine) as session:
        rows = session.scalars(
            select(m.RunStatusChange.status)
            .where(m.RunStatusChange.executed_reduction_step_id == run_id)
            .order_by(m.RunStatusChange.id)
        )
        return [str(s) for s in rows]


@pytest.mark.parametrize(
    "server",
    [
        pytest.param("ephemeral", marks=pytest.mark.prefect_ephemeral),
        pytest.param("prefect-server", marks=pytest.mark.prefect_server),
    ],
)
def test_a_killed_run_is_adopted_and_its_slots_freed_within_two_minutes(
    engine: Engine,
    tmp_path: Path,
    cli_env: dict[str, str],
    server: str,
    request: pytest.FixtureRequest,
) -> None:
    env = dict(cli_env)
    if server == "prefect-server":
        env |= request.getfixturevalue("prefect_api")
    else:
        env.pop("PREFECT_API_URL", None)
        env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    track = tmp_path / "track"
    track.mkdir()
    step = tool_step(
        "reduce",
        max_concurrent_runs=2,
        parameters={"sleep": 8, "track": str(track)},
    )
    setup_pipeline(
        engine, tmp_path, [step], scans=3, name=f"killed-{server.split('-', maxsplit=1)[0]}"
    )
    pipeline = f"killed-{server.split('-', maxsplit=1)[0]}"
    first = subprocess.Popen(
        [CCAT_WM, "run", pipeline], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )

    def two_running() -> bool:
        assert first.poll() is None, first.stdout.read() if first.stdout else ""
        return list(_statuses(engine).values()).count("RUNNING") >= 2

    wait_until("two runs RUNNING", two_running, timeout=120)
    os.kill(first.pid, signal.SIGKILL)  # as an operator's `kill -9`: no cleanup at all
    first.wait()

    started = time.monotonic()
    rerun = run_cli(env, "run", pipeline, timeout=240)
    took = time.monotonic() - started

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert took < 120, f"the rerun took {took:.0f} s"
    statuses = _statuses(engine)
    assert sorted(statuses.values()) == ["COMPLETED"] * 3, statuses
    for run_id in statuses:  # exactly once: one way through the lifecycle to COMPLETED
        assert _history(engine, run_id).count("COMPLETED") == 1
    starts = [
        line for line in (track / "events.log").read_text().splitlines() if line.startswith("start")
    ]
    # Adopted, not restarted: the two jobs in flight when the command died and the third
    # each started once (README, "What survives what").
    assert len(starts) == 3, starts
