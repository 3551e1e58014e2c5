"""Import direction is the architecture: keep it from eroding (STYLE.md point 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OURS = {"ccat_wm", "ccat_ops_db", "flows", "tasks", "deployments", "infra"}
FORBIDDEN = {
    "ccat_ops_db": OURS - {"ccat_ops_db"} | {"prefect"},
    "infra": {"prefect", "ccat_ops_db", "sqlalchemy", "flows", "tasks", "deployments"},
    "ccat_wm": {"prefect", "flows", "tasks", "deployments"},
}
TOP_LAYER = {"ccat_wm/cli.py", "ccat_wm/demo.py"}
"""The CLI layer sits above the flows it starts (CLI -> driver -> backend)."""


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_it_may(package: str) -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(_imports(path) & FORBIDDEN[package])
        for path in (REPO / package).rglob("*.py")
        if _imports(path) & FORBIDDEN[package] and str(path.relative_to(REPO)) not in TOP_LAYER
    }
    assert offenders == {}


def test_no_shell_true_anywhere() -> None:
    hits = [
        str(p.relative_to(REPO))
        for pkg in OURS
        for p in (REPO / pkg).rglob("*.py")
        if "shell=True" in p.read_text()
    ]
    assert hits == []
