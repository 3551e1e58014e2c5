"""Import direction is the architecture: keep it from eroding (STYLE.md point 1)."""

from __future__ import annotations

import ast
import importlib.util
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
    "flows": {CLI, "deployments"},  # and of ours only FLOWS_MAY_IMPORT (test below)
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


FLOWS_MAY_IMPORT = {
    "ccat_wm.settings": "settings, read when used, and the constants deployments share",
    "ccat_wm.errors": "the error records a flow run ends with",
    "ccat_wm.execution.stopping": "the command's stop signal, which the flow's wait loop watches",
}
"""What flows import of ours besides `tasks` and `flows`: tasks are Prefect's only door
into the ops DB and the domain, and flows only define flows and sequence tasks."""
PRODUCT_PACKAGES = ("ccat_wm", "ccat_ops_db", "flows", "tasks", "deployments", "infra")
MODULE_LINES = 400
FUNCTION_LINES = 50
LONG_FUNCTION = "# long:"
"""The comment that says why a function is longer than `FUNCTION_LINES`."""


def _our_modules(path: Path) -> set[str]:
    """The modules of ours that `path` imports (absolute imports)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found |= {n for n in names if n.split(".")[0] in OURS}
    return found


def test_flows_import_only_tasks_settings_and_records() -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(bad)
        for path in (REPO / "flows").rglob("*.py")
        if (
            bad := {
                m for m in _our_modules(path)
                if m.split(".")[0] not in {"tasks", "flows"} and m not in FLOWS_MAY_IMPORT
            }
        )
    }  # fmt: skip
    assert offenders == {}


def _product_files() -> list[Path]:
    return [
        path
        for package in PRODUCT_PACKAGES
        for path in (REPO / package).rglob("*.py")
        if "migrations" not in path.parts
    ]


def test_no_product_module_is_over_400_lines() -> None:
    """Migrations aside: a longer module holds more than one thing; split it by what."""
    long = {
        str(p.relative_to(REPO)): n
        for p in _product_files()
        if (n := len(p.read_text().splitlines())) > MODULE_LINES
    }
    assert long == {}


def test_a_function_over_50_lines_says_why() -> None:
    """A function longer than `FUNCTION_LINES` carries a `# long: <why>` comment."""
    unexplained = []
    for path in _product_files():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            assert node.end_lineno is not None
            body = lines[node.lineno - 1 : node.end_lineno]
            if len(body) > FUNCTION_LINES and not any(LONG_FUNCTION in line for line in body):
                unexplained.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert unexplained == []


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


def test_the_layers_picture_finds_no_import_against_the_rule() -> None:
    """`docs/layers.py` (which draws docs/images/layers.png) reads the same imports and
    finds every pair of layers it draws allowed; it does see the arrows it draws."""
    spec = importlib.util.spec_from_file_location("layers", REPO / "docs" / "layers.py")
    assert spec is not None and spec.loader is not None
    layers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layers)
    pairs, against, lines = layers.imports_between_layers()
    assert against == set()
    assert {("CLI", "flows"), ("flows", "tasks"), ("tasks", "domain"), ("domain", "models")} <= set(
        pairs
    )
    assert ("flows", "domain") not in pairs and ("domain", "tasks") not in pairs
    assert lines["domain"] > lines["flows"] > 0


def test_except_base_exception_only_cleans_up_and_re_raises() -> None:
    """Ctrl-C and exit pass through: a handler of `BaseException` ends by re-raising it."""
    swallowing = []
    for path in _product_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ExceptHandler) or node.type is None:
                continue
            names = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            if not any(isinstance(n, ast.Name) and n.id == "BaseException" for n in names):
                continue
            last = node.body[-1]
            if not (isinstance(last, ast.Raise) and last.exc is None):
                swallowing.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert swallowing == []
