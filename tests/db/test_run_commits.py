"""A run commits twice, and records every status all the same (real PostgreSQL, local jobs).

The runner keeps the moves between a run's start and its end in memory and writes them
with its end (`Unrecorded`), unless the job runs long (RUNNING shows while it runs) or
its outputs are large (COLLECTING_RESULTS shows while they are hashed). A process that
dies while a short job runs leaves the run STAGING_DATA; the adopter finds the job.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.execution import job_end
from ccat_wm.execution.runner import RunExecutor
from ccat_wm.execution.waves import prepare_wave
from ccat_wm.settings import Settings
from tests.flows.conftest import setup_pipeline, tool_step
from tests.helpers import wait_until

pytestmark = pytest.mark.db
S = m.RunStatus
LIFECYCLE = [S.PENDING, S.STAGING_DATA, S.SUBMITTED, S.RUNNING, S.COLLECTING_RESULTS, S.COMPLETED]


def one_run(engine: Engine, tmp_path: Path, **parameters: Any) -> int:
    """Apply a one-step pipeline over one scan and create its PENDING run."""
    setup_pipeline(engine, tmp_path, [tool_step("reduce", parameters=parameters)], scans=1)
    with Session(engine) as session, session.begin():
        wave = prepare_wave(session, "t", dt.datetime.now(dt.UTC), claim_as="test", manual=True)
    (item,) = wave.items
    assert item.run_id is not None
    return item.run_id


@pytest.fixture
def commits(engine: Engine) -> Iterator[list[float]]:
    """The commits made on `engine` (their count is what the test looks at)."""
    made: list[float] = []

    def count(conn: Any) -> None:
        del conn
        made.append(1.0)

    event.listen(engine, "commit", count)
    yield made
    event.remove(engine, "commit", count)


def history(engine: Engine, run_id: int) -> list[S]:
    change = m.RunStatusChange
    with engine.connect() as conn:
        return list(
            conn.scalars(
                select(change.status)
                .where(change.executed_reduction_step_id == run_id)
                .order_by(change.id)
            )
        )


def attempt_row(engine: Engine, run_id: int) -> Any:
    attempt = m.RunAttempt
    with engine.connect() as conn:
        return conn.execute(
            select(attempt).where(attempt.executed_reduction_step_id == run_id)
        ).one()


def test_a_short_local_run_commits_twice_and_records_every_status(
    engine: Engine, tmp_path: Path, commits: list[float]
) -> None:
    run_id = one_run(engine, tmp_path)
    commits.clear()

    outcome = RunExecutor(engine, Settings()).execute(run_id)

    assert outcome.status is S.COMPLETED
    assert len(commits) == 2
    assert history(engine, run_id) == LIFECYCLE
    attempt = attempt_row(engine, run_id)  # written by the triggers, move by move
    assert attempt.hpc_job_id and attempt.submitted_at is not None
    assert (attempt.status, attempt.exit_code) == (S.COMPLETED, 0)
    with Session(engine) as session:  # the staged package's copy went out with the end
        copies = session.scalars(select(m.RawDataPackageCopy.path)).all()
    assert any("/.staging/" in path for path in copies), copies


def test_a_long_local_job_shows_running_with_its_job_id_while_it_runs(
    engine: Engine, tmp_path: Path, commits: list[float]
) -> None:
    run_id = one_run(engine, tmp_path, sleep=4)
    commits.clear()
    done: list[Any] = []
    worker = threading.Thread(
        target=lambda: done.append(RunExecutor(engine, Settings()).execute(run_id))
    )
    worker.start()

    def running() -> Any:
        with Session(engine) as session:
            run = session.get_one(m.ExecutedReductionStep, run_id)
            return run.status is S.RUNNING and run.hpc_job_id

    # Recorded after RECORD_RUNNING_AFTER_S, while the job still sleeps.
    wait_until("RUNNING with the job id while the job runs", running, timeout=3.5, every=0.05)
    assert not done
    worker.join(60)

    assert done[0].status is S.COMPLETED
    assert len(commits) == 3
    assert history(engine, run_id) == LIFECYCLE


def test_large_outputs_are_hashed_after_collecting_results_is_committed(
    engine: Engine, tmp_path: Path, commits: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_end, "QUICK_COLLECTION_BYTES", 0)  # any output is "large"
    run_id = one_run(engine, tmp_path)
    commits.clear()

    outcome = RunExecutor(engine, Settings()).execute(run_id)

    assert outcome.status is S.COMPLETED
    assert len(commits) == 3  # start; job end up to COLLECTING_RESULTS; products, COMPLETED
    assert history(engine, run_id) == LIFECYCLE


EXECUTE = """
import sys
from sqlalchemy import create_engine
from ccat_wm.execution.runner import RunExecutor
from ccat_wm.settings import Settings
RunExecutor(create_engine(sys.argv[1]), Settings()).execute(int(sys.argv[2]))
"""


def test_a_process_that_dies_while_a_short_job_runs_leaves_it_to_be_found(
    engine: Engine, tmp_path: Path
) -> None:
    """Killed before SUBMITTED was committed: the adopter finds the job by name; one job ran."""
    track = tmp_path / "track"
    track.mkdir()
    run_id = one_run(engine, tmp_path, sleep=0.8, track=str(track))
    url = engine.url.render_as_string(hide_password=False)
    process = subprocess.Popen(
        [sys.executable, "-c", EXECUTE, url, str(run_id)], cwd=Path(__file__).parents[2]
    )
    events = track / "events.log"
    wait_until("the job to start", lambda: events.exists() and "start" in events.read_text())
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert history(engine, run_id) == [S.PENDING, S.STAGING_DATA]

    outcome = RunExecutor(engine, Settings()).execute(run_id)

    assert outcome.status is S.COMPLETED
    starts = [line for line in events.read_text().splitlines() if line.startswith("start")]
    assert len(starts) == 1, starts
    assert history(engine, run_id) == LIFECYCLE
