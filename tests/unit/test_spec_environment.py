"""`${VAR}` in spec values comes from the environment; unset is an error with its place."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccat_wm.errors import SpecError
from ccat_wm.spec.expand import expand_environment
from ccat_wm.spec.loader import load_spec_file

SITE_SPEC = """\
sites:
  - {name: cologne}
locations:
  - name: archive
    site: cologne
    location_type: LONG_TERM_ARCHIVE
    path: "${SITE}/archive"
  - name: local
    site: cologne
    location_type: PROCESSING
    backend: local
    path: "${SITE}/local"
"""


def test_values_are_expanded_where_written_and_nothing_else_is() -> None:
    data = {"a": "${X}/y", "b": ["$X", "{param}", "$${X}", 3], "c": {"d": "pre ${X} ${Y}"}}
    out, problems = expand_environment(data, {"X": "/x", "Y": "y"})
    assert out == {"a": "/x/y", "b": ["$X", "{param}", "${X}", 3], "c": {"d": "pre /x y"}}
    assert problems == []


def test_an_unset_or_bad_variable_is_named_with_its_field() -> None:
    _, problems = expand_environment({"p": ["${NOPE}", "${1x}"]}, {})
    assert problems == [
        (("p", 0), "${NOPE} is not set in the environment"),
        (("p", 1), "${1x} is not a variable name (letters, digits and _)"),
    ]


def test_a_spec_file_takes_its_paths_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tmp_path / "site.yaml"
    spec.write_text(SITE_SPEC)
    monkeypatch.setenv("SITE", "/srv/site")
    loaded = load_spec_file(spec)
    assert [loc.path for loc in loaded.spec.locations] == ["/srv/site/archive", "/srv/site/local"]
    monkeypatch.delenv("SITE")
    with pytest.raises(SpecError) as error:
        load_spec_file(spec)
    assert error.value.problems == [
        f"{spec}:7: locations[0].path: ${{SITE}} is not set in the environment",
        f"{spec}:12: locations[1].path: ${{SITE}} is not set in the environment",
    ]
