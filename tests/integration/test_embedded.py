"""The newcomer's path: no settings at all, the embedded PostgreSQL from pip."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from ccat_ops_db import migrate
from tests.helpers import run_cli


def _first_demo(env: dict[str, str], home: Path) -> str:
    """The output of the first `ccat-wm demo` in `home`: the one CI's `make demo` ran just
    before the tests (`CCAT_WM_DEMO_HOME`, `CCAT_WM_DEMO_LOG`, set by .ci/run with the same
    settings-free environment), or a run of its own when there is none."""
    if os.environ.get("CCAT_WM_DEMO_LOG") and Path(os.environ["CCAT_WM_DEMO_HOME"]) == home:
        return Path(os.environ["CCAT_WM_DEMO_LOG"]).read_text()
    first = run_cli(env, "demo")
    assert first.returncode == 0, first.stderr
    return first.stdout + first.stderr


@pytest.mark.embedded
@pytest.mark.prefect_ephemeral
def test_demo_runs_on_the_embedded_server_with_no_settings(tmp_path: Path) -> None:
    # Prefect's analytics stay off without being told (ccat-wm's default): no telemetry
    # error on a machine without internet.
    unset = ("CCAT_OPS_DB_URL", "PIPELINE_BASE_DIR", "PREFECT_SERVER_ANALYTICS_ENABLED")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    home = Path(os.environ.get("CCAT_WM_DEMO_HOME") or tmp_path / "home")
    env["CCAT_WM_HOME"] = str(home)
    try:
        first = _first_demo(env, home)
        assert "Traceback" not in first and "ERROR" not in first, first[-3000:]
        assert "[3/5] simulated 24 scans, 48 raw data packages (scan-000024 in poor weather)" in (
            first
        )
        assert "[5/5] runs: 51 COMPLETED" in first  # no baseline of the rejected scan
        assert (
            "left out of the maps: calibrate[executed_obs_unit=scan-000024] rejected: tsys_k = "
        ) in first and "(needs tsys_k < 2000) (the step's QA gate)" in first
        maps = [line.split("map: ")[1] for line in first.splitlines() if "map: " in line]
        assert maps and all(Path(p).exists() for p in maps)
        assert any(p.endswith(".moment0.png") for p in maps)
        # 24 scans, about six per source and line: four filled maps an astronomer's tools read.
        cubes = [Path(p) for p in maps if p.endswith(".cube.fits")]
        assert len(cubes) == 4
        for cube in cubes:
            data, header = fits.getdata(cube), fits.getheader(cube)
            assert data.shape[1] >= 32 and data.shape[2] >= 32
            assert np.isnan(data).all(axis=0).mean() < 0.10, cube
            assert WCS(header).has_celestial and header["TELESCOP"] == "FYST"
        assert (home / "postgres" / "PG_VERSION").exists()
        assert f"left running: the embedded PostgreSQL (data in {home / 'postgres'})" in first
        assert "`ccat-wm db stop` stops it" in first
        assert len(list((home / "archive").rglob("*.npz"))) == 48

        second = run_cli(env, "demo")
        assert second.returncode == 0, second.stderr
        assert "[2/5] applied chai-demo.yaml: 0 change(s)" in second.stdout
        assert "24 scans already registered; not simulating more" in second.stdout
        assert "[4/5] no gaps: everything is up to date, nothing to run" in second.stdout
        assert "[5/5] runs: 51 COMPLETED" in second.stdout

        url = run_cli(env, "db", "url")
        assert url.stdout.startswith("postgresql+psycopg://") and str(home) in url.stdout.replace(
            "%2F", "/"
        )
    finally:
        stopped = run_cli(env, "db", "stop")
    assert stopped.returncode == 0 and "embedded server stopped" in stopped.stdout
    assert not (home / "postgres" / "postmaster.pid").exists()


@pytest.mark.embedded
def test_commands_refuse_an_unmigrated_db(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CCAT_OPS_DB_URL"}
    env["CCAT_WM_HOME"] = str(tmp_path / "home")
    try:
        result = run_cli(env, "simulate", "--scans", "1")
        assert result.returncode == 1
        head = migrate.head_revisions()[0]
        assert result.stderr.strip() == (
            f"error: the ops DB is at schema revision none (empty), expected {head}; run `ccat-wm db upgrade`"
        )
    finally:
        run_cli(env, "db", "stop")


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["db"],
        ["db", "upgrade"],
        ["db", "url"],
        ["db", "stop"],
        ["apply"],
        ["simulate"],
        ["plan"],
        ["run"],
        ["status"],
        ["cancel"],
        ["lineage"],
        ["demo"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = run_cli(dict(os.environ), *command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: ccat-wm")


@pytest.mark.embedded
def test_settings_come_only_from_their_documented_names(tmp_path: Path) -> None:
    """With no CCAT_WM_HOME, the home is ~/.local/share/ccat-wm; look-alikes are ignored."""
    documented = ("CCAT_OPS_DB_URL", "CCAT_WM_HOME", "PIPELINE_BASE_DIR", "CCAT_WM_FLOW_WORKERS")
    env = {k: v for k, v in os.environ.items() if k not in documented}
    env |= {"HOME": str(tmp_path), "FLOW_WORKERS": "0", "MAX_TASK_RUNS": "0", "OPS_DB_URL": "x"}
    try:
        url = run_cli(env, "db", "url")  # FLOW_WORKERS=0 would be a validation error if read
        assert url.returncode == 0, url.stderr
        home = tmp_path / ".local" / "share" / "ccat-wm"
        assert (home / "postgres" / "PG_VERSION").exists()
        assert not (tmp_path / "postgres").exists()
    finally:
        assert run_cli(env, "db", "stop").returncode == 0
