"""The QA metrics of a run: the top-level numbers of the JSON files it writes under `qa/`.

A step's program reports its quality as JSON objects in its QA_METRIC products
(`qa/<name>.json`); each top-level field whose value is a number is a metric, named by
its field (`tsys_k`, `rms_k`, `flagged_fraction`). Nested objects, strings, booleans and
lists are kept in the products but are no metrics. A metric is one number per run: the
same name in two files is a contract violation, named with both files, since a gate
could not tell which one it holds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ccat_wm.errors import CcatWmError


class QaMetricsError(CcatWmError):
    """A run's QA files cannot give its metrics (not a JSON object, or a name twice)."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def file_metrics(name: str, text: str | bytes) -> dict[str, float]:
    """Return the metrics of one QA file: its top-level fields whose value is a number."""
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise QaMetricsError(f"{name}: not JSON ({exc}); a QA file holds one JSON object") from None
    if not isinstance(data, dict):
        raise QaMetricsError(
            f"{name}: a JSON {type(data).__name__}, expected an object of named metrics"
        )
    return {
        str(key): float(value)
        for key, value in data.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def run_metrics(files: Mapping[str, str | bytes]) -> dict[str, float]:
    """Return a run's metrics from its QA files (`name -> content`), every name once.

    Raises `QaMetricsError` naming the file that is not a JSON object, or the metric
    two files both report and the two files.
    """
    metrics: dict[str, float] = {}
    source: dict[str, str] = {}
    for name in sorted(files):
        for metric, value in file_metrics(name, files[name]).items():
            if metric in source:
                raise QaMetricsError(
                    f"metric {metric!r} is reported by both {source[metric]} and {name}; "
                    "a metric is one number per run: rename one of them"
                )
            metrics[metric], source[metric] = value, name
    return metrics
