"""Import direction is the architecture: keep it from eroding (STYLE.md point 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OURS = {"ccat_wm", "ccat_ops_db", "flows", "tasks", "deployments", "infra"}
CLI = "ccat_wm.cli"
"""The top layer: the command line, above the flows it starts (CLI -> flows -> tasks ->
domain -> models and infra). It may import anything; nothing imports it."""
LAYERS = {
    # layer (a package, or a sub-package given as a dotted name): what it must not import
    CLI: set(),
    "ccat_wm": {"prefect", "flows", "tasks", "deployments", CLI},
    "ccat_ops_db": OURS - {"ccat_ops_db"} | {"prefect"},
    "infra": {"prefect", "ccat_ops_db", "sqlalchemy", "flows", "tasks", "deployments"},
    "flows": {CLI, "deployments"},  # shared constants live in ccat_wm.settings
    "tasks": {"flows", CLI},
    "deployments": {CLI},
}


def _imports(path: Path) -> set[str]:
    """Top-level packages imported, plus `ccat_wm.cli` when the CLI package is imported."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    modules: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
    for module in modules:
        names.add(module.split(".")[0])
        if module == CLI or module.startswith(CLI + "."):
            names.add(CLI)
    return names


def _files(layer: str) -> list[Path]:
    """The layer's modules; a package layer leaves out its sub-package layers."""
    root = REPO / layer.replace(".", "/")
    inner = [REPO / other.replace(".", "/") for other in LAYERS if other.startswith(layer + ".")]
    return [
        path for path in root.rglob("*.py") if not any(path.is_relative_to(sub) for sub in inner)
    ]


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layer_imports_only_what_it_may(layer: str) -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(_imports(path) & LAYERS[layer])
        for path in _files(layer)
        if _imports(path) & LAYERS[layer]
    }
    assert offenders == {}


def test_the_cli_is_one_package_with_a_module_per_command_group() -> None:
    assert not (REPO / "ccat_wm" / "cli.py").exists()
    modules = {p.stem for p in (REPO / "ccat_wm" / "cli").glob("*.py")}
    assert {"db", "specs", "runs", "provenance", "deploy", "demo"} <= modules


def test_flows_open_no_orm_sessions() -> None:
    """Flows call tasks and domain functions; sessions belong to those."""
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "flows").rglob("*.py")
        if "Session(" in p.read_text() or "sqlalchemy.orm" in p.read_text()
    ]
    assert offenders == []


def test_no_shell_true_anywhere() -> None:
    hits = [
        str(p.relative_to(REPO))
        for pkg in OURS
        for p in (REPO / pkg).rglob("*.py")
        if "shell=True" in p.read_text()
    ]
    assert hits == []
