"""`ccat-wm resources --plot`: requested against used memory and time per step (matplotlib)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt

from ccat_wm.execution.usage import StepUsage


def plot_usage(report: Sequence[StepUsage], path: Path) -> None:
    """Draw, per step, requested / p95 used / median used / suggested memory and wall time.

    Bars on a log scale, so that a step using a hundredth of its request shows as clearly
    as one using all of it; a step without COMPLETED attempts has no used bars.
    """
    labels = [f"{u.pipeline}\n{u.step}" for u in report]
    series = {
        "memory (GB)": (
            [u.requested.memory_gb for u in report],
            [u.memory_gb_p95 or math.nan for u in report],
            [u.memory_gb_p50 or math.nan for u in report],
            [u.suggested_memory_gb or math.nan for u in report],
        ),
        "wall time (h)": (
            [u.requested.time_hours for u in report],
            [(u.wall_s_p95 or math.nan) / 3600 for u in report],
            [(u.wall_s_p50 or math.nan) / 3600 for u in report],
            [u.suggested_time_hours or math.nan for u in report],
        ),
    }
    width = max(6.0, 1.4 * len(report) + 2)
    figure, axes = plt.subplots(1, 2, figsize=(2 * width, 4.8), layout="constrained")
    names = ("requested", "used p95", "used median", "suggested")
    colours = ("#9e9e9e", "#d62728", "#ff9896", "#1f77b4")
    bar = 0.2
    for axis, (title, values) in zip(axes, series.items(), strict=True):
        for index, (name, colour, heights) in enumerate(zip(names, colours, values, strict=True)):
            positions = [x + (index - 1.5) * bar for x in range(len(report))]
            axis.bar(positions, heights, bar, label=name, color=colour)
        axis.set_xticks(range(len(report)), labels)
        axis.set_title(f"{title}: requested vs used per step")
        axis.set_ylabel(f"{title}, log scale")
        # Log scale: use is often a hundredth of the request, and the ratio is the point.
        axis.set_yscale("log")
        axis.grid(axis="y", which="both", alpha=0.3)
    axes[0].legend(loc="upper right")
    figure.suptitle("ccat-wm resources: COMPLETED attempts")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
