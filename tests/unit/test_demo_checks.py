"""`ccat-wm demo` says up front when the example programs are missing, before any run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ccat_wm.cli import demo
from ccat_wm.errors import CcatWmError
from ccat_wm.settings import Settings


def test_demo_programs_are_the_example_software_of_the_spec() -> None:
    assert demo.demo_programs() == ["chai-baseline", "chai-calibrate", "chai-grid"]


def test_missing_programs_stop_the_demo_before_it_touches_the_ops_db(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setattr(sys, "executable", str(empty / "python"))
    monkeypatch.setenv("PATH", str(empty))
    # An unreachable ops DB: the check must fail first, with the install command.
    settings = Settings(CCAT_OPS_DB_URL="postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(
        CcatWmError,
        match=r"programs are not installed: chai-baseline, chai-calibrate, chai-grid; "
        r"install them with `.*/bin/pip install -e examples/chai-software`",
    ):
        demo.run_demo(settings, print)


def test_installed_programs_pass_the_check() -> None:
    demo.check_demo_programs()  # the test environment installs the example software
