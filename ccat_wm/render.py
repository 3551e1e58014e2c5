"""Text and JSON renderings of CLI results, from the same dataclasses."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from ccat_wm.gaps.plan import Plan
from ccat_wm.selection.dimensions import display_key


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds") if moment else None


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Render left-aligned columns separated by two spaces."""
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def render_plan_table(plan: Plan) -> str:
    """Render the plan as people read it: gaps, then blast radius and cost per step."""
    headers = ("pipeline", "step", "sub_group_key", "reason", "ready", "eligible_at", "inputs")
    rows = [
        (g.pipeline, g.step, display_key(g.sub_group_key), g.reason.value,
         "yes" if g.ready else "no", _iso(g.eligible_at), g.inputs)
        for g in plan.gaps
    ]  # fmt: skip
    parts = [table(headers, rows) if rows else "no gaps"]
    if plan.costs:
        cost_rows = [
            (
                c.pipeline,
                c.step,
                c.runs,
                f"{c.cpu_hours_per_run:.3g}",
                f"{c.cpu_hours:.3g}",
                c.basis,
            )
            for c in plan.costs
        ]
        parts += ["", "blast radius and estimated cost:"]
        parts.append(table(("pipeline", "step", "runs", "cpu_h/run", "cpu_h", "basis"), cost_rows))
        parts.append(
            f"total: {sum(c.runs for c in plan.costs)} runs, {plan.total_cpu_hours:.3g} CPU-hours"
        )
    return "\n".join(parts)


def render_plan_json(plan: Plan) -> str:
    """Render the plan as JSON: `gaps`, `blast_radius` per step, `total_cpu_hours`."""
    payload = {
        "evaluated_at": _iso(plan.evaluated_at),
        "gaps": [
            {
                "pipeline": g.pipeline,
                "step": g.step,
                "sub_group_key": g.sub_group_key,
                "reason": g.reason.value,
                "ready": g.ready,
                "eligible": g.eligible,
                "eligible_at": _iso(g.eligible_at),
                "inputs": g.inputs,
                "input_fingerprint": g.input_fingerprint,
            }
            for g in plan.gaps
        ],
        "blast_radius": [
            {
                "pipeline": c.pipeline,
                "step": c.step,
                "runs": c.runs,
                "cpu_hours_per_run": c.cpu_hours_per_run,
                "cpu_hours": c.cpu_hours,
                "basis": c.basis,
            }
            for c in plan.costs
        ],
        "total_cpu_hours": plan.total_cpu_hours,
    }
    return json.dumps(payload, indent=2)
