"""Draw the layers of the code and the imports between them: `python docs/layers.py`.

Reads every module's imports (its abstract syntax tree; nothing is imported or run),
sorts the modules into the layers of docs/development.md, counts the importing modules
per pair of layers, and draws `docs/images/layers.png`: a box per layer (its lines of
code), an arrow per pair with the count, grey where the layer rule allows it and red
where it does not. `tests/unit/test_architecture.py` enforces the same rule.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

REPO = Path(__file__).resolve().parents[1]
PICTURE = REPO / "docs" / "images" / "layers.png"
SHARED = ("ccat_wm.settings", "ccat_wm.errors", "ccat_wm.execution.stopping")
"""What every layer may import: settings, errors and the command's stop signal."""
LAYERS = {  # layer: (position (x, y), what it may import besides SHARED)
    "CLI": ((2.0, 4.0), {"flows", "tasks", "deployments", "domain", "models", "infra"}),
    "flows": ((2.0, 3.0), {"flows", "tasks"}),
    "deployments": ((0.0, 3.0), {"domain", "models"}),
    "tasks": ((2.0, 2.0), {"tasks", "domain", "models"}),
    "domain": ((2.0, 1.0), {"domain", "models", "infra"}),
    "models": ((0.8, 0.0), {"models"}),
    "infra": ((3.2, 0.0), {"infra"}),
}


def layer_of(module: str) -> str | None:
    """Return the layer of a dotted module name of ours (None: not ours)."""
    top = module.split(".", maxsplit=1)[0]
    if module == "ccat_wm.cli" or module.startswith("ccat_wm.cli."):
        return "CLI"
    return {
        "ccat_wm": "domain",
        "ccat_ops_db": "models",
        "flows": "flows",
        "tasks": "tasks",
        "deployments": "deployments",
        "infra": "infra",
    }.get(top)


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_between_layers() -> tuple[Counter[tuple[str, str]], set[tuple[str, str]], Counter[str]]:
    """Count the modules importing across each pair of layers; say which pairs break the rule.

    Returns (importing modules per (from, to) layer pair, the pairs against the rule,
    lines of code per layer).
    """
    pairs: Counter[tuple[str, str]] = Counter()
    against: set[tuple[str, str]] = set()
    lines: Counter[str] = Counter()
    for top in ("ccat_wm", "ccat_ops_db", "flows", "tasks", "deployments", "infra"):
        for path in sorted((REPO / top).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            source = layer_of(_module_name(path))
            assert source is not None
            text = path.read_text()
            lines[source] += len(text.splitlines())
            seen: set[str] = set()
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.Import):
                    seen |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    seen.add(node.module)
            targets = {layer_of(m) for m in seen if m not in SHARED} - {None, source}
            for target in targets:
                assert target is not None
                pairs[(source, target)] += 1
                if target not in LAYERS[source][1]:
                    against.add((source, target))
    return pairs, against, lines


def draw(path: Path = PICTURE) -> set[tuple[str, str]]:
    """Draw the picture at `path`; return the pairs of layers that break the rule."""
    pairs, against, lines = imports_between_layers()
    fig, ax = plt.subplots(figsize=(9, 6.5))
    width, height = 1.3, 0.5
    for name, ((x, y), _) in LAYERS.items():
        box = FancyBboxPatch(
            (x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.03",
            facecolor="#dbe7f3", edgecolor="#3b5b7a",
        )  # fmt: skip
        ax.add_patch(box)
        ax.text(x, y + 0.06, name, ha="center", va="center", fontsize=12, weight="bold")
        ax.text(x, y - 0.14, f"{lines[name]:,} lines", ha="center", va="center", fontsize=8)
    for (source, target), count in sorted(pairs.items()):
        (x0, y0), (x1, y1) = LAYERS[source][0], LAYERS[target][0]
        bad = (source, target) in against
        skips = x0 == x1 and abs(y0 - y1) > 1  # past a layer between: around it, on the right
        start = (x0 + width / 2, y0) if skips else (x0, y0 - height / 2 if y1 < y0 else y0)
        end = (x1 + width / 2, y1) if skips else (x1, y1 + height / 2 if y1 < y0 else y1)
        rad = -0.5 / abs(y0 - y1) if skips else 0.12
        arrow = FancyArrowPatch(
            start, end, arrowstyle="-|>", mutation_scale=14,
            color="#c0392b" if bad else "#7f8c8d", connectionstyle=f"arc3,rad={rad}",
            linewidth=2.2 if bad else 1.2, shrinkA=4, shrinkB=4,
        )  # fmt: skip
        ax.add_patch(arrow)
        label_x = x0 + width / 2 + 0.3 if skips else (x0 + x1) / 2 + 0.08
        ax.text(label_x, (y0 + y1) / 2, str(count), fontsize=8, color="#34495e")
    ax.set_xlim(-0.9, 4.0)
    ax.set_ylim(-0.5, 4.5)
    ax.set_axis_off()
    ax.set_title(
        "Layers and the modules importing across them (red: against the rule; "
        "settings, errors and the stop signal are shared)",
        fontsize=9,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return against


if __name__ == "__main__":
    broken = draw()
    print(f"wrote {PICTURE.relative_to(REPO)}")
    for source, target in sorted(broken):
        print(f"against the rule: {source} -> {target}")
    sys.exit(1 if broken else 0)
