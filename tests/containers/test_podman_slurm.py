"""Podman jobs on the real SLURM cluster: accounted by SLURM, and ended with their job.

`conmon` detaches from the process that starts a container; on SLURM, podman runs in
its own PID namespace so that the container stays in the job's process tree.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import psutil
import pytest
from sqlalchemy import Engine

from ccat_ops_db import models as m
from infra.example_image import BuiltImage
from tests.containers.test_isolation import _apply, _run_column, _run_ids, _step
from tests.helpers import CCAT_WM, podman_location, run_cli, wait_until

pytestmark = pytest.mark.db


def _holders(token: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline[:1] == ["python3"] and any(token in arg for arg in cmdline):
            found.append(proc)
    return found


def test_slurm_accounts_the_container_and_a_cancel_ends_it(
    engine: Engine,
    tmp_path: Path,
    run_env: dict[str, str],
    example_image: BuiltImage,
    slurm_cluster: None,
) -> None:
    """The container's 300 MB are the job's MaxRSS; a cancelled run's container (which
    ignores SIGTERM) is gone with its job, not left running."""
    token = uuid.uuid4().hex
    _apply(engine, tmp_path, example_image, {
        "measured": ("slurmpod", _step("allocate", "300")),
        "held": ("slurmpod", _step("hold", f"200:{token}", memory_gb=2)),
    }, extra_locations=[podman_location("slurmpod", tmp_path / "slurm-runs", slurm=True)], scans=1)  # fmt: skip

    done = run_cli(run_env, "run", "measured", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    peaks = _run_column(engine, "measured", m.ExecutedReductionStep.peak_memory_gb)
    assert peaks and all(p is not None and p >= 0.29 for p in peaks), peaks

    # The held run: its program (ignoring SIGTERM) must end when the run is cancelled.
    env = dict(run_env)
    held = subprocess.Popen(
        [CCAT_WM, "run", "held"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:

        def started() -> list[psutil.Process]:
            assert held.poll() is None, held.stdout.read().decode() if held.stdout else ""
            return _holders(token)

        wait_until("the held container to start", started, timeout=240, every=0.5)
        run_id = _run_ids(engine, "held")[0]
        cancelled = run_cli(run_env, "cancel", str(run_id))
        assert cancelled.returncode == 0, cancelled.stderr
        wait_until(
            "the container to end with its cancelled SLURM job",
            lambda: _holders(token) == [],
            timeout=90,
            every=0.5,
        )
        held.wait(timeout=180)
    finally:
        if held.poll() is None:
            held.kill()
    (status,) = _run_column(engine, "held", m.ExecutedReductionStep.status)
    assert status is m.RunStatus.CANCELLED
