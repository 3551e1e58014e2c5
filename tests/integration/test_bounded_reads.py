"""Readers of what a job wrote stream it and open only regular files (real CLI, real DB).

`ccat-wm logs` (and `--follow`) prints a multi-gigabyte attempt log with flat memory,
and names an attempt log that a job replaced by a symlink or a FIFO instead of reading
or blocking on it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.helpers import CCAT_WM, run_cli
from tests.integration.test_signals import _complete_one_run

GNU_TIME = "/usr/bin/time"
"""GNU time (Debian package `time`, installed by .ci/run) measures the command's peak RSS."""
LOG_BYTES = 2 << 30
"""A sparse 2 GiB log: reading it all into memory is what must not happen."""


@pytest.fixture
def run_log(engine: Engine, tmp_path: Path) -> Path:
    release, track = tmp_path / "release", tmp_path / "track"
    track.mkdir()
    product = Path(_complete_one_run(engine, tmp_path, release, track))
    run_root = next(p for p in product.parents if p.name.startswith("run-"))
    (log,) = (run_root / "logs").glob("*-attempt-1.log")
    return log


@pytest.mark.parametrize("follow", [False, True], ids=["logs", "logs-follow"])
def test_a_huge_log_is_printed_with_flat_memory(
    run_log: Path, cli_env: dict[str, str], tmp_path: Path, follow: bool
) -> None:
    os.chmod(run_log, 0o644)
    os.truncate(run_log, LOG_BYTES)
    peak = tmp_path / "peak-kib"
    args = [GNU_TIME, "--format", "%M", "--output", str(peak),
            CCAT_WM, "logs", "1", *(["--follow"] if follow else [])]  # fmt: skip
    done = subprocess.run(args, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    peak_mib = int(peak.read_text().split()[-1]) / 1024
    assert peak_mib < 400, f"ccat-wm logs peaked at {peak_mib:.0f} MiB for a 2 GiB log"


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_replaced_log_is_named_not_read(
    run_log: Path, cli_env: dict[str, str], tmp_path: Path, kind: str
) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("host secret\n")
    run_log.unlink()
    if kind == "symlink":
        run_log.symlink_to(secret)
    else:
        os.mkfifo(run_log)
    for args in (("logs", "1"), ("logs", "1", "--follow")):
        done = run_cli(cli_env, *args, timeout=60)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "host secret" not in done.stdout
        what = "a symlink" if kind == "symlink" else "a named pipe (FIFO)"
        assert f"the attempt log {run_log} was replaced by {what}; it is not read" in done.stderr
