"""The dimension hierarchy, sub-group keys and the downstream-grouping rule."""

from __future__ import annotations

import pytest

from ccat_wm.selection.dimensions import closure, display_key, finer_dimensions, sub_group_key
from ccat_wm.selection.tables import join_path


def test_scan_determines_obs_unit_source_line_and_program() -> None:
    assert closure(["executed_obs_unit"]) == {
        "executed_obs_unit",
        "obs_unit",
        "source",
        "line",
        "observing_program",
    }
    assert closure(["instrument_module"]) == {"instrument_module", "instrument"}
    assert closure([]) == frozenset()


@pytest.mark.parametrize(
    ("upstream", "downstream", "finer"),
    [
        (["executed_obs_unit"], ["source", "line"], []),
        (["executed_obs_unit"], [], []),
        (["source", "line"], [], []),
        ([], ["executed_obs_unit"], ["executed_obs_unit"]),
        (["source", "line"], ["executed_obs_unit"], ["executed_obs_unit"]),
        (["executed_obs_unit"], ["instrument_module"], ["instrument_module"]),
        (["executed_obs_unit", "instrument_module"], ["source", "instrument"], []),
    ],
)
def test_downstream_may_only_group_by_what_upstream_determines(
    upstream: list[str], downstream: list[str], finer: list[str]
) -> None:
    assert finer_dimensions(upstream, downstream) == finer


def test_sub_group_key_is_sorted_pairs_joined_by_bar() -> None:
    assert sub_group_key({"source": "NGC253", "line": "CO43"}) == "line=CO43|source=NGC253"
    assert sub_group_key({}) == ""
    assert display_key("") == "all"
    assert display_key("line=CO43") == "line=CO43"


def test_join_paths_are_rooted_at_raw_data_package() -> None:
    assert join_path("Line") == ["RawDataPackage", "ExecutedObsUnit", "ObsUnit", "Line"]
    assert join_path("Instrument") == ["RawDataPackage", "InstrumentModule", "Instrument"]
    assert join_path("RawDataPackage") == ["RawDataPackage"]
