"""`ccat-wm lineage` as text: what made a map of 1,000 scans stays a screenful."""

from __future__ import annotations

from ccat_wm.cli.render_provenance import render_lineage
from ccat_wm.execution.control import Lineage, LineageRun


def _run(run_id: int, step: str, key: str, software: str, config: str) -> LineageRun:
    return LineageRun(
        run_id, "chai", step, key, "COMPLETED", software, "1.4.0", "sha256:" + "a" * 64,
        config, {"mode": "hot_cold"}, f"chai-{step} --run {run_id}", [f"chai-{step}", "--mode"],
    )  # fmt: skip


def test_each_software_config_and_template_is_printed_once_with_its_runs() -> None:
    runs = [_run(1001, "grid", "line=CO43|source=NGC253", "chai-gridding", "grid")]
    runs += [
        _run(i, "calibrate", f"executed_obs_unit=scan-{i:06d}", "chai-calibration", "hot-cold")
        for i in range(1, 1001)
    ]
    packages = [{"id": i, "name": f"p{i}", "checksum": "c" * 64, "size": 1} for i in range(1000)]
    lineage = Lineage(7, "/maps/ngc253.fits", "SCIENCE", "d" * 64, 123, runs, packages)

    text = render_lineage(lineage)

    assert len(text.splitlines()) < 60
    assert text.count("software chai-calibration 1.4.0") == 1
    assert text.count("software chai-gridding 1.4.0") == 1
    assert "chai / calibrate: 1000 run(s), ids 1-1000" in text
    assert "chai / grid: 1 run(s), ids 1001" in text
    assert "template chai-calibrate --mode" in text
    assert "... 995 more run(s) of the same kind (--json lists all)" in text
    assert "raw data packages (1000):" in text and "... 980 more (--json lists all)" in text
    # --json keeps every run in full
    assert len(lineage.as_dict()["runs"]) == 1001


def test_runs_that_differ_in_config_are_separate_groups() -> None:
    runs = [
        _run(1, "calibrate", "executed_obs_unit=scan-000001", "chai-calibration", "hot-cold"),
        _run(2, "calibrate", "executed_obs_unit=scan-000002", "chai-calibration", "sky-dip"),
        _run(3, "calibrate", "executed_obs_unit=scan-000003", "chai-calibration", "hot-cold"),
    ]
    text = render_lineage(Lineage(1, "/x", "SCIENCE", "d" * 64, 1, runs, []))
    assert "chai / calibrate: 2 run(s), ids 1, 3" in text
    assert "chai / calibrate: 1 run(s), ids 2" in text


def test_each_group_says_where_and_how_long_it_ran_and_an_image_only_for_a_container() -> None:
    host = [
        LineageRun(
            i, "chai", "calibrate", f"k{i}", "COMPLETED", "chai-calibration", "1.4.0",
            "sha256:" + "a" * 64, "hot-cold", {}, "chai-calibrate", ["chai-calibrate"],
            image_repository="ghcr.io/ccatobs/chai-calibration", location="local",
            backend="local", runtime="host", started_at=f"2026-12-07T04:00:0{i}+00:00",
            finished_at=f"2026-12-07T04:00:0{2 * i}+00:00",
        )
        for i in (1, 2)
    ]  # fmt: skip
    podman = LineageRun(
        3, "chai", "grid", "g", "COMPLETED", "chai-gridding", "2.1.0", "sha256:" + "b" * 64,
        "grid", {}, "chai-grid", ["chai-grid"], image_repository="ghcr.io/ccatobs/chai-gridding",
        location="ramses", backend="slurm", runtime="podman",
    )  # fmt: skip
    text = render_lineage(Lineage(1, "/x", "SCIENCE", "d" * 64, 1, [podman, *host], []))
    assert "    ran on   ramses (slurm, podman container)\n" in text
    assert (
        f"software chai-gridding 2.1.0 image ghcr.io/ccatobs/chai-gridding@sha256:{'b' * 64}"
        in text
    )
    assert "    ran on   local (local, no container); 3.0 s in all, 1.0-2.0 s per run\n" in text
    assert "    software chai-calibration 1.4.0\n" in text  # no image: none ran
    assert "ghcr.io/ccatobs/chai-calibration" not in text
