"""Run directories and result collection on real files (no DB)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ccat_ops_db.models import DataProductType as T
from ccat_wm.execution.collect import (
    ContractViolationError,
    checksum_outputs,
    scan_outputs,
    verify_unchanged,
)
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


def test_a_symlink_inside_the_output_directory_is_an_alias_kept_but_not_registered(
    tmp_path: Path,
) -> None:
    """A link is judged by its text, never followed: the file it names is the product."""
    run = layout(tmp_path, final=True)
    (run.output / "science" / "a.dat").write_text("a")
    (run.output / "science" / "latest").symlink_to(run.output / "science" / "a.dat")
    (run.output / "science" / "relative").symlink_to("a.dat")
    assert sorted(o.path.name for o in scan_outputs(run)) == ["a.dat"]
    assert (run.output / "science" / "latest").is_symlink()


def test_collection_opens_only_regular_files_and_names_every_broken_rule(
    tmp_path: Path,
) -> None:
    """A FIFO (which blocked collection forever), loops, dangling links, NaN, NUL, bytes."""
    run = layout(tmp_path, final=True)
    science = run.output / "science"
    os.mkfifo(science / "pipe.fits")
    (science / "loop").symlink_to(science / "loop")
    (science / "dangling").symlink_to(science / "nowhere")
    (science / "nan.fits").write_text("x")
    (science / "nan.fits.meta.json").write_text('{"rms": NaN}')
    (science / "nul.fits").write_text("x")
    (science / "nul.fits.meta.json").write_text('{"note": "a\\u0000b"}')
    (run.output / "qa" / os.fsdecode(b"bad-\xff.json")).write_text("{}")
    archive = tmp_path / "archive.npz"
    archive.write_text("raw")
    os.link(archive, science / "input-link.npz")
    with pytest.raises(ContractViolationError) as info:
        scan_outputs(run)
    problems = info.value.problems
    for expected in (
        "pipe.fits: a named pipe (FIFO), not a regular file",
        "loop: symlink loop",
        "dangling: dangling symlink",
        "nan.fits.meta.json: malformed sidecar, not JSON (NaN is not a JSON number",
        "nul.fits.meta.json: malformed sidecar, holds the NUL character",
        "bad-\\xff.json: file name is not UTF-8",
        "input-link.npz: a hard link shared with 1 other file(s)",
    ):
        assert sum(expected in p for p in problems) == 1, (expected, problems)
    assert len(problems) == 7
    assert all(p.encode("utf-8") for p in problems)  # printable and storable
    assert oct(archive.stat().st_mode)[-3:] == "644"


def test_hashing_a_file_replaced_by_a_pipe_fails_at_once_naming_it(tmp_path: Path) -> None:
    run = layout(tmp_path, final=True)
    product = run.output / "science" / "map.fits"
    product.write_text("x")
    outputs = scan_outputs(run)
    product.unlink()
    os.mkfifo(product)  # swapped in after the scan: opened without blocking, refused
    with pytest.raises(ContractViolationError, match=r"map\.fits: was replaced by a named pipe"):
        checksum_outputs(outputs)


def test_a_product_changed_after_hashing_is_caught(tmp_path: Path) -> None:
    run = layout(tmp_path, final=True)
    product = run.output / "science" / "map.fits"
    product.write_text("first")
    records = checksum_outputs(scan_outputs(run))
    verify_unchanged(records)
    product.write_text("rewritten by a leftover process")
    with pytest.raises(ContractViolationError, match=r"map\.fits: changed while it was collected"):
        verify_unchanged(records)
