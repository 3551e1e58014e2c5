"""Backends under test: the local one and the real single-node SLURM cluster of this machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM_TEST_SETTINGS = {
    "slurm_partition": "debug",
    "slurm_account": "ccat",
    "slurm_poll_interval_s": 0.3,
    "slurm_array_window_s": 0.2,
}
"""Settings of the test SLURM location: the cluster of infra/slurm/start-cluster.sh."""


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Start (or find running) the single-node SLURM cluster; fail loudly if it cannot."""
    result = subprocess.run(
        [str(REPO / "infra" / "slurm" / "start-cluster.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, f"SLURM cluster did not start:\n{result.stdout}\n{result.stderr}"
