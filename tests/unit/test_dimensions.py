"""The dimension hierarchy, sub-group keys and the downstream-grouping rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccat_wm.selection.dimensions import (
    DIMENSIONS,
    closure,
    display_key,
    finer_dimensions,
    parse_key,
    sub_group_key,
)
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


# Any text PostgreSQL can store (no NUL, no lone surrogates), separators favoured.
KEY_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from("|=\\ab"),
        st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    ),
    max_size=12,
)
KEY_VALUES = st.dictionaries(st.sampled_from(sorted(DIMENSIONS)), KEY_TEXT, max_size=4)


@settings(max_examples=2000, deadline=None)
@given(KEY_VALUES, KEY_VALUES)
def test_different_sub_groups_never_share_a_key(one: dict[str, str], other: dict[str, str]) -> None:
    assert (sub_group_key(one) == sub_group_key(other)) == (one == other)
    assert parse_key(sub_group_key(one)) == one


def test_separators_in_names_are_escaped_so_two_data_sets_stay_apart() -> None:
    merged_before = "observing_program=A|source=B|source=C"
    first = sub_group_key({"observing_program": "A|source=B", "source": "C"})
    second = sub_group_key({"observing_program": "A", "source": "B|source=C"})
    assert first == "observing_program=A\\|source=B|source=C"
    assert second == "observing_program=A|source=B\\|source=C"
    assert merged_before not in (first, second)
    assert sub_group_key({"source": "x\\"}) == "source=x\\\\"
