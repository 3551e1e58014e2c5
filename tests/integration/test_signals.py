"""`ccat-wm run` stops within seconds of SIGTERM or Ctrl-C and loses nothing.

Real parts: the CLI in a subprocess, the real PostgreSQL, the local backend, Prefect's
ephemeral server (which the command starts and must stop) or a `prefect server start`
that lives on. Two of three runs are RUNNING (the step's limit is 2) when the signal
comes: the command exits within 10 s without a traceback, its flow run ends Cancelled,
the third run never starts, both jobs keep running, no slot of theirs is given back and
no Prefect server process of the command is left. The next `ccat-wm run` adopts the two
runs and starts the third: each job ran exactly once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.execution.runner import RunExecutor
from ccat_wm.execution.waves import prepare_wave
from ccat_wm.settings import Settings
from tests.flows.conftest import setup_pipeline, tool_step
from tests.helpers import CCAT_WM, run_cli, wait_gone, wait_until

RUN = m.ExecutedReductionStep


def _statuses(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return [s.value for s in session.scalars(select(RUN.status).order_by(RUN.id))]


def _starts(track: Path) -> list[str]:
    events = track / "events.log"
    lines = events.read_text().splitlines() if events.exists() else []
    return [line for line in lines if line.startswith("start")]


def _with_home(home: str) -> list[int]:
    """Processes (not zombies) whose environment has PREFECT_HOME=`home`."""
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and (
                proc.environ().get("PREFECT_HOME") == home
            ):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def _active_slots(env: dict[str, str], name: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read() -> int:
        async with get_client() as client:
            limit = await client.read_global_concurrency_limit_by_name(name)
            return limit.active_slots

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        return asyncio.run(read())


def _start(
    env: dict[str, str], pipeline: str, engine: Engine, outputs: Path
) -> subprocess.Popen[str]:
    """Start `ccat-wm run` with its output in files (a child it leaves must not hold a pipe)."""
    with (outputs / "out").open("w") as out, (outputs / "err").open("w") as err:
        command = subprocess.Popen(
            [CCAT_WM, "run", pipeline], env=env, text=True, stdout=out, stderr=err
        )
    command.outputs = outputs  # type: ignore[attr-defined]

    def two_running() -> bool:
        assert command.poll() is None, _outputs(command)
        return _statuses(engine).count("RUNNING") == 2

    wait_until("two runs RUNNING", two_running, timeout=120)
    return command


def _finish(command: subprocess.Popen[str], timeout: float) -> tuple[str, str, float]:
    """Wait for the command's end; its outputs and how long it took (fails with them)."""
    started = time.monotonic()
    try:
        command.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        command.kill()
        command.wait()
        out, err = _outputs(command)
        raise AssertionError(f"still running {timeout} s after the signal:\n{out}\n{err}") from None
    took = time.monotonic() - started
    return (*_outputs(command), took)


def _outputs(command: subprocess.Popen[str]) -> tuple[str, str]:
    outputs: Path = command.outputs  # type: ignore[attr-defined]
    return (outputs / "out").read_text(), (outputs / "err").read_text()


@pytest.mark.parametrize(
    "server",
    [
        pytest.param("ephemeral", marks=pytest.mark.prefect_ephemeral),
        pytest.param("prefect-server", marks=pytest.mark.prefect_server),
    ],
)
def test_sigterm_stops_the_command_and_the_next_run_adopts_its_jobs_once(
    engine: Engine,
    tmp_path: Path,
    cli_env: dict[str, str],
    server: str,
    request: pytest.FixtureRequest,
) -> None:
    env = dict(cli_env)
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    if server == "prefect-server":
        env |= request.getfixturevalue("prefect_api")
    else:
        env.pop("PREFECT_API_URL", None)
    track, release = tmp_path / "track", tmp_path / "release"
    track.mkdir()
    pipeline = f"stop-{server.split('-', maxsplit=1)[0]}"
    step = tool_step(
        "reduce", max_concurrent_runs=2,
        parameters={"mode": "wait", "arg": str(release), "track": str(track)},
    )  # fmt: skip
    setup_pipeline(engine, tmp_path, [step], scans=3, name=pipeline)
    command = _start(env, pipeline, engine, tmp_path)

    command.send_signal(signal.SIGTERM)
    out, err, took = _finish(command, 60)

    assert took <= 10, f"exited {took:.1f} s after SIGTERM"
    assert command.returncode == 143, out + err
    assert "Traceback" not in out + err, err
    assert ": Cancelled" in out, out
    assert "stopped by SIGTERM" in err and "left in flight" in err, err
    assert sorted(_statuses(engine)) == ["PENDING", "RUNNING", "RUNNING"]
    assert len(_starts(track)) == 2  # no new job after the signal; both keep running
    if server == "prefect-server":  # the jobs still run: their slots stay taken
        assert _active_slots(env, f"ccat-step:{pipeline}:reduce") == 2
    else:  # the command's own Prefect server went with it
        wait_until(
            "no process of the command's Prefect home",
            lambda: not _with_home(env["PREFECT_HOME"]),
            timeout=10,
        )

    release.touch()
    rerun = run_cli(env, "run", pipeline, timeout=240)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _statuses(engine) == ["COMPLETED"] * 3
    assert len(_starts(track)) == 3, _starts(track)  # adopted, not started again


@pytest.mark.prefect_ephemeral
def test_a_second_ctrl_c_exits_at_once_and_leaves_no_prefect_server(
    engine: Engine, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    env = {k: v for k, v in cli_env.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    release = tmp_path / "release"
    step = tool_step(
        "reduce", max_concurrent_runs=2, parameters={"mode": "wait", "arg": str(release)}
    )
    setup_pipeline(engine, tmp_path, [step], scans=2, name="twice")
    command = _start(env, "twice", engine, tmp_path)
    command.send_signal(signal.SIGINT)
    wait_until("the first Ctrl-C's message", lambda: "stopping" in _outputs(command)[1], every=0.01)
    command.send_signal(signal.SIGINT)  # while the first one's graceful stop goes on
    out, err, took = _finish(command, 30)
    assert took < 3, f"exited {took:.1f} s after the second Ctrl-C"
    assert command.returncode == 130, out + err
    assert "Traceback" not in out + err, err
    assert "Ctrl-C again exits at once" in err and "exiting now" in err, err
    wait_until(
        "no process of the command's Prefect home",
        lambda: not _with_home(env["PREFECT_HOME"]),
        timeout=10,
    )
    release.touch()
    rerun = run_cli(env, "run", "twice", timeout=240)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _statuses(engine) == ["COMPLETED"] * 2


def _complete_one_run(engine: Engine, tmp_path: Path, release: Path, track: Path) -> str:
    """Run a one-step pipeline's single run (no Prefect); return its science product's path."""
    step = tool_step(
        "reduce", parameters={"mode": "wait", "arg": str(release), "track": str(track)}
    )
    setup_pipeline(engine, tmp_path, [step], scans=1, name="remake")
    with Session(engine) as session, session.begin():
        wave = prepare_wave(session, "remake", dt.datetime.now(dt.UTC), claim_as="t", manual=True)
    (run_id,) = [i.run_id for i in wave.items if i.run_id is not None]
    release.touch()
    assert RunExecutor(engine, Settings()).execute(run_id).status is m.RunStatus.COMPLETED
    with Session(engine) as session:
        return session.scalars(
            select(m.DataProduct.file_path).where(
                m.DataProduct.data_product_type == m.DataProductType.SCIENCE
            )
        ).one()


def test_sigterm_stops_reproduce_and_cancels_its_job(
    engine: Engine, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """Nothing of a re-execution is kept: its job is stopped and the scratch removed."""
    release, track, scratch = tmp_path / "release", tmp_path / "track", tmp_path / "tmp"
    track.mkdir()
    scratch.mkdir()
    product = _complete_one_run(engine, tmp_path, release, track)
    release.unlink()  # the re-execution waits for it
    env = cli_env | {"TMPDIR": str(scratch)}
    with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
        command = subprocess.Popen(
            [CCAT_WM, "reproduce", product], env=env, text=True, stdout=out, stderr=err
        )
    command.outputs = tmp_path  # type: ignore[attr-defined]
    wait_until("the re-execution's job to start", lambda: len(_starts(track)) == 2)
    command.send_signal(signal.SIGTERM)
    out, err, took = _finish(command, 60)
    assert took <= 10, f"exited {took:.1f} s after SIGTERM"
    assert command.returncode == 143, out + err
    assert "Traceback" not in out + err, err
    assert "stopped: reproduce stopped: its job" in err and "was cancelled" in err, err
    wait_gone(f"--track {track}", timeout=10)  # the re-execution's job is gone
    assert list(scratch.iterdir()) == []  # its scratch directory too


def test_reproduce_keep_refuses_the_archive_and_run_trees(
    engine: Engine, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    release, track = tmp_path / "release", tmp_path / "track"
    track.mkdir()
    product = _complete_one_run(engine, tmp_path, release, track)
    for inside in (tmp_path / "archive" / "remade", tmp_path / "runs" / "remade"):
        done = run_cli(cli_env, "reproduce", product, "--keep", str(inside))
        assert done.returncode != 0
        assert "--keep" in done.stderr and "inside location" in done.stderr, done.stderr
        assert not inside.exists()
    alias = tmp_path / "alias"
    alias.symlink_to(tmp_path / "runs")
    done = run_cli(cli_env, "reproduce", product, "--keep", str(alias / "x"))
    assert done.returncode != 0 and "inside location 'local'" in done.stderr, done.stderr
    assert len(_starts(track)) == 1  # nothing was re-executed
