"""Run directories and result collection on real files (no DB)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ccat_ops_db.models import DataProductType as T
from ccat_wm.execution.collect import ContractViolationError, checksum_outputs, scan_outputs
from ccat_wm.execution.layout import OUTPUT_CLASSES, RunLayout, dirname_to_key, key_to_dirname


@pytest.mark.parametrize(
    "key",
    [
        "",
        "executed_obs_unit=scan-000001",
        "line=CO43|source=NGC253",
        "source=Sgr B2/N+1|line=C:O",
        "source=all",
        "source=..",
    ],
)
def test_sub_group_directories_are_safe_and_reversible(key: str) -> None:
    name = key_to_dirname(key)
    assert dirname_to_key(name) == key
    assert "/" not in name and " " not in name and "+" not in name and ":" not in name
    assert name not in {".", ".."}


def layout(tmp_path: Path, *, final: bool) -> RunLayout:
    out = RunLayout.for_run(tmp_path, "p", "source=X", 1, "grid", is_final=final)
    out.create()
    for kind in OUTPUT_CLASSES:  # as the software makes them
        (out.output / kind).mkdir()
    return out


def test_outputs_are_classified_by_directory_with_sidecar_metadata(tmp_path: Path) -> None:
    run = layout(tmp_path, final=True)
    files = {
        "science/cube.fits": T.SCIENCE, "qa/rms.json": T.QA_METRIC, "plots/map.png": T.PLOT,
        "statistics/stats.json": T.STATISTICS, "logs/grid.log": T.LOG,
        "science/deep/nested.dat": T.SCIENCE,
    }  # fmt: skip
    for rel in files:
        (run.output / rel).parent.mkdir(parents=True, exist_ok=True)
        (run.output / rel).write_text(rel)
    (run.output / "science/cube.fits.meta.json").write_text(json.dumps({"line": "CO43"}))
    found = {str(o.path.relative_to(run.output)): o for o in scan_outputs(run)}
    assert {k: v.data_product_type for k, v in found.items()} == files
    assert found["science/cube.fits"].metadata == {"line": "CO43"}
    records = checksum_outputs(found.values())
    assert all(r.size == len(str(r.path.relative_to(run.output))) for r in records)


def test_science_of_an_intermediate_step_and_top_level_files_are_intermediates(
    tmp_path: Path,
) -> None:
    run = layout(tmp_path, final=False)
    (run.output / "science" / "a.npz").write_text("a")
    (run.output / "top.npz").write_text("b")
    (run.output / "qa" / "m.json").write_text("{}")
    kinds = {o.path.name: o.data_product_type for o in scan_outputs(run)}
    assert kinds == {"a.npz": T.INTERMEDIATE, "top.npz": T.INTERMEDIATE, "m.json": T.QA_METRIC}


def test_every_contract_violation_is_reported_with_its_file(tmp_path: Path) -> None:
    run = layout(tmp_path, final=True)
    (run.output / "stray.txt").write_text("x")
    (run.output / "extra").mkdir()
    (run.output / "science" / "escape").symlink_to("/etc/hostname")
    (run.output / "qa" / "m.json").write_text("{}")
    (run.output / "qa" / "m.json.meta.json").write_text("[1, 2")
    (run.output / "plots" / "p.png").write_text("png")
    (run.output / "plots" / "p.png.meta.json").write_text("[1, 2]")
    (run.output / "statistics" / "gone.json.meta.json").write_text("{}")
    with pytest.raises(ContractViolationError) as info:
        scan_outputs(run)
    text = str(info.value)
    for name in (
        "stray.txt",
        "'extra'",
        "escape: symlink leaves",
        "m.json.meta.json: malformed sidecar, not JSON",
        "p.png.meta.json: malformed sidecar, expected a JSON object, got list",
        "gone.json.meta.json: sidecar of 'gone.json', which does not exist",
    ):
        assert name in text
    assert len(info.value.problems) == 6


def test_a_symlink_inside_the_output_directory_is_allowed(tmp_path: Path) -> None:
    run = layout(tmp_path, final=True)
    (run.output / "science" / "a.dat").write_text("a")
    (run.output / "science" / "latest").symlink_to(run.output / "science" / "a.dat")
    assert sorted(o.path.name for o in scan_outputs(run)) == ["a.dat", "latest"]
