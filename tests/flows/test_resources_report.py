"""`ccat-wm resources`: requested against used per step, suggestions, badput, and the plot."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from ccat_ops_db import models as m
from ccat_wm.cli.driver import run_pipeline
from tests.flows.conftest import setup_pipeline, tool_step
from tests.helpers import cli_json, run_cli

pytestmark = [pytest.mark.db, pytest.mark.usefixtures("prefect_server")]


def test_resources_compares_requested_with_used_and_counts_failed_attempts(
    engine: Engine, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    setup_pipeline(
        engine,
        tmp_path,
        [
            tool_step(
                "hog",
                parameters={"mode": "hog", "arg": 120},
                config_resources={"cpu": 2, "memory_gb": 4, "time_hours": 2},
            ),
            tool_step("broken", max_retries=1, parameters={"fail_key": "scan-00000"}),
        ],
        scans=3,
    )
    run_pipeline(engine, "t")

    listed = cli_json(cli_env, "resources", "t", "--json", "--plot", str(tmp_path / "r.png"))

    report = {r["step"]: r for r in listed}
    hog, broken = report["hog"], report["broken"]
    assert hog["requested"] == {"cpu": 2, "memory_gb": 4.0, "time_hours": 2.0, "gpu": 0}
    assert (hog["completed_attempts"], hog["failed_attempts"]) == (3, 0)
    assert 0.12 < hog["memory_gb"]["p50"] <= hog["memory_gb"]["p95"] < 0.5  # it held 120 MB
    assert hog["wall_s"]["p50"] >= 5  # it holds the memory five seconds
    # Suggested: p95 x 1.2, memory rounded up to 0.1 GB, time to the minute.
    assert hog["suggested"]["memory_gb"] == pytest.approx(
        max(0.1, -(-hog["memory_gb"]["p95"] * 1.2 // 0.1) * 0.1)
    )
    assert hog["suggested"]["time_hours"] == pytest.approx(1 / 60)
    assert 0 < hog["cpu_efficiency"] < 0.6  # mostly asleep, on 2 CPUs
    assert hog["badput_cpu_hours_total"] == 0
    assert (broken["completed_attempts"], broken["failed_attempts"]) == (0, 6)
    with engine.connect() as conn:
        held = conn.scalar(
            select(func.sum(m.RunAttempt.processing_time_s)).where(
                m.RunAttempt.status == m.RunStatus.FAILED
            )
        )
    assert broken["badput_cpu_hours"] == {"EXIT_CODE": pytest.approx(held / 3600)}
    png = (tmp_path / "r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 1200 and height >= 500  # two readable panels side by side

    table = run_cli(cli_env, "resources", "t", "--step", "hog")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["pipeline", "step", "runs", "failed"]
    assert lines[1].split()[:5] == ["t", "hog", "3", "0", "2"]
    assert "suggested = 95th percentile" in table.stdout
    missing = run_cli(cli_env, "resources", "nope")
    assert missing.returncode == 1 and "no pipeline 'nope'" in missing.stderr
