"""A pipeline at a glance: per step, its sub-groups current, due, in flight and failed.

The view an operator opens first (Dagster users know it from its partition pages): one
Prefect artifact per pipeline under a stable key (`<pipeline>-overview`), replaced by
every flow run of the pipeline and every trigger tick that created or started its runs
(`tasks.artifacts`). Per step: how many sub-groups are current, the gaps by
reason, the runs in flight, the failed sub-groups with the command that retries each;
and, when it fits, a picture of step x sub-group coloured by state.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.execution.failures import retry_command
from ccat_wm.gaps.plan import make_plan
from ccat_wm.selection.dimensions import display_key

RUN = m.ExecutedReductionStep
PICTURE_CELLS = 4000
"""Largest step x sub-group grid drawn (beyond it the counts say it all)."""
STATES = ("current", "due", "in flight", "failed")
NO_RUN = "#eeeeee"
"""Colour of a cell without a run or gap: waiting for its upstream, or not a key of the step."""
COLOURS = {"current": "#2e9e44", "due": "#e0b000", "in flight": "#2f6fd6", "failed": "#d62f2f"}


@dataclass(slots=True)
class StepOverview:
    """One step's sub-groups by state."""

    step: str
    current: int = 0
    in_flight: int = 0
    failed: int = 0
    gaps: Counter[str] = field(default_factory=Counter)
    """Due sub-groups by gap reason (`new`, `inputs_changed`, ...)."""


@dataclass(slots=True)
class Overview:
    """A pipeline's state, built from the ops DB at one moment."""

    pipeline: str
    evaluated_at: dt.datetime
    steps: list[StepOverview]
    cells: dict[tuple[str, str], str]
    """(step, sub-group key) -> one of `STATES`."""
    failed: list[tuple[str, str, str]]
    """(step, sub-group key, the command that retries it)."""


def pipeline_overview(session: Session, pipeline: str, now: dt.datetime) -> Overview:
    """Build the pipeline's overview (read-only: a plan and one query of its runs)."""
    # long: one plan and one query folded into one record
    with session.begin():
        plan = make_plan(session, now, pipeline)
    with session.begin():
        rows = session.execute(
            select(m.ReductionStep.name, RUN.sub_group_key, RUN.status, RUN.is_current)
            .join(RUN.reduction_step)
            .join(m.ReductionStep.pipeline)
            .where(
                m.Pipeline.name == pipeline,
                or_(RUN.is_current, RUN.status.in_(list(m.UNFINISHED_STATUSES))),
            )
        ).all()
        order = session.scalars(
            select(m.ReductionStep.name)
            .join(m.ReductionStep.pipeline)
            .where(m.Pipeline.name == pipeline)
            .order_by(m.ReductionStep.step_order)
        ).all()
    cells: dict[tuple[str, str], str] = {}
    for step, key, status, current in rows:
        state = "in flight" if status in m.UNFINISHED_STATUSES else "current" if current else None
        if state is not None and cells.get((step, key)) != "in flight":
            cells[(step, key)] = state
    failed = []
    for gap in plan.gaps:
        where = (gap.step, gap.sub_group_key)
        if gap.reason is m.GapReason.FAILED:
            cells[where] = "failed"
            failed.append(
                (gap.step, gap.sub_group_key, retry_command(pipeline, gap.sub_group_key, gap.step))
            )
        elif cells.get(where) != "in flight":
            cells[where] = f"due:{gap.reason.value}"
    steps = []
    for name in order:
        overview = StepOverview(name)
        for (step, _), state in cells.items():
            if step != name:
                continue
            if state.startswith("due:"):
                overview.gaps[state.removeprefix("due:")] += 1
            elif state == "current":
                overview.current += 1
            elif state == "in flight":
                overview.in_flight += 1
            else:
                overview.failed += 1
        steps.append(overview)
    shown = {where: ("due" if s.startswith("due:") else s) for where, s in cells.items()}
    return Overview(pipeline, plan.evaluated_at, steps, shown, sorted(failed))


def overview_markdown(overview: Overview, *, picture: bytes | None = None) -> str:
    """Render the overview as the artifact's markdown (the picture inline, as a data URI)."""
    stamp = overview.evaluated_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    lines = [
        f"## {overview.pipeline} at a glance ({stamp})", "",
        "| step | current | due (by reason) | in flight | failed |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for s in overview.steps:
        due = ", ".join(f"{n} {reason}" for reason, n in sorted(s.gaps.items())) or "0"
        lines.append(f"| {s.step} | {s.current} | {due} | {s.in_flight} | {s.failed} |")
    if overview.failed:
        lines += ["", f"### Failed sub-groups ({len(overview.failed)})", ""]
        lines += [
            f"- `{step}[{display_key(key)}]`: `{command}`"
            for step, key, command in overview.failed[:50]
        ]
        if len(overview.failed) > 50:
            lines.append(
                f"- ... and {len(overview.failed) - 50} more (`ccat-wm plan {overview.pipeline}`)"
            )
    if picture is not None:
        encoded = base64.b64encode(picture).decode()
        lines += ["", f"![{overview.pipeline}: step x sub-group](data:image/png;base64,{encoded})"]
    return "\n".join(lines)


def overview_picture(overview: Overview) -> bytes | None:
    """Draw step x sub-group coloured by state as a PNG; None when there is nothing or too much."""
    steps = [s.step for s in overview.steps]
    keys = sorted({key for _, key in overview.cells})
    if not keys or len(steps) * len(keys) > PICTURE_CELLS:
        return None
    import matplotlib  # noqa: PLC0415 - slow to import; only where a picture is drawn

    matplotlib.use("Agg")
    from matplotlib import pyplot  # noqa: PLC0415
    from matplotlib.colors import ListedColormap  # noqa: PLC0415
    from matplotlib.patches import Patch  # noqa: PLC0415

    index = {state: i + 1 for i, state in enumerate(STATES)}
    grid = [[index.get(overview.cells.get((step, key), ""), 0) for key in keys] for step in steps]
    colours = ListedColormap([NO_RUN, *(COLOURS[s] for s in STATES)])
    width = min(16.0, 4.0 + 0.3 * len(keys))
    figure, axes = pyplot.subplots(figsize=(width, 1.5 + 0.45 * len(steps)), dpi=100)
    cells = len(steps) * len(keys)
    axes.pcolormesh(
        grid, cmap=colours, vmin=0, vmax=len(STATES),
        edgecolors="white", linewidth=0.5 if cells <= 600 else 0,
    )  # fmt: skip
    axes.invert_yaxis()
    axes.set_yticks([i + 0.5 for i in range(len(steps))], steps)
    labels = [display_key(k) for k in keys] if len(keys) <= 30 else []
    axes.set_xticks([i + 0.5 for i in range(len(labels))], labels)
    axes.tick_params(axis="x", labelrotation=90, labelsize=7)
    axes.set_xlabel(f"{len(keys)} sub-group(s)")
    axes.legend(
        handles=[
            *(Patch(color=COLOURS[s], label=s) for s in STATES),
            Patch(color=NO_RUN, label="no run (yet)"),
        ],
        loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False,
    )  # fmt: skip
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")  # labels and legend included
    pyplot.close(figure)
    return buffer.getvalue()
