"""Test time per module from JUnit reports (`make test` writes test-artifacts/junit.xml).

    python bench/test_times.py BEFORE.xml [AFTER.xml]

Prints, per test module, the minutes its tests took (setup, call and teardown, summed
over the module's tests) in each report, the ratio after/before, and the totals. With
pytest-xdist the sums add up the workers' time: compare the wall time of the runs (the
last line of pytest's output, or test-artifacts/ci-times.txt) for the suite as a whole.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path


def module_minutes(report: Path) -> Counter[str]:
    """Minutes per test module (`tests/<dir>/<module>.py`) in one JUnit report."""
    minutes: Counter[str] = Counter()
    for case in ET.parse(report).iter("testcase"):
        parts = (case.get("classname") or "").split(".")
        module = "/".join(parts[:3]) + ".py" if parts[0] == "tests" else parts[0]
        minutes[module] += float(case.get("time") or 0) / 60
    return minutes


def main(paths: list[str]) -> None:
    reports = [module_minutes(Path(p)) for p in paths]
    modules = sorted(set().union(*reports), key=lambda m: -reports[0].get(m, 0))
    header = "| module | " + " | ".join(Path(p).name for p in paths)
    print(header + (" | after/before |" if len(paths) == 2 else " |"))
    print("|---" * (len(paths) + 1 + (len(paths) == 2)) + "|")
    for module in [*modules, "total"]:
        values = [sum(r.values()) if module == "total" else r.get(module, 0.0) for r in reports]
        cells = " | ".join(f"{v:.2f}" for v in values)
        ratio = f" | {values[1] / values[0]:.2f}" if len(values) == 2 and values[0] else ""
        print(f"| `{module}` | {cells}{ratio} |")


if __name__ == "__main__":
    main(sys.argv[1:])
