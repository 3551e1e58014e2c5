"""Names become safe path components; location paths are absolute and normalized."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccat_wm.execution.layout import dirname_to_key, key_to_dirname
from ccat_wm.paths import from_path_component, normalized_location_path, path_component


@pytest.mark.parametrize(
    "name", [".", "..", "...", "a/../b", "../../etc", "", "\x00", "%empty", "x\x00y"]
)
def test_no_name_becomes_a_component_that_leaves_its_directory(name: str) -> None:
    component = path_component(name)
    assert component not in ("", ".", "..")
    assert "/" not in component and "\x00" not in component
    assert os.path.normpath(os.path.join("/root", component)).startswith("/root/")
    assert from_path_component(component) == name


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=30))
def test_path_components_are_reversible_and_stay_inside(name: str) -> None:
    component = path_component(name)
    assert from_path_component(component) == name
    assert os.path.dirname(os.path.normpath(os.path.join("/root", component))) == "/root"
    key = f"source={name}"
    assert dirname_to_key(key_to_dirname(key)) == key


def test_location_paths_are_stored_normalized_and_must_be_absolute() -> None:
    assert normalized_location_path("/data/x/../y//z/.") == "/data/y/z"
    with pytest.raises(ValueError, match="relative; expected an absolute path"):
        normalized_location_path("data/pipelines")
