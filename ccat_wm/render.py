"""Text and JSON renderings of CLI results, from the same dataclasses."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from ccat_wm.execution.control import Lineage
from ccat_wm.execution.report import RunRow
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


def _cell(value: object, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_runs_table(rows: Sequence[RunRow]) -> str:
    """`ccat-wm status` as a table: one line per run, newest first."""
    if not rows:
        return "no runs"
    header = (
        "id", "pipeline", "step", "sub_group_key", "status", "reason", "retries",
        "hpc_job_id", "time_s", "peak_gb", "cpu_h",
    )  # fmt: skip
    body = [
        (
            str(r.id),
            r.pipeline,
            r.step,
            display_key(r.sub_group_key),
            r.status,
            r.reason,
            str(r.retry_count),
            _cell(r.hpc_job_id),
            _cell(r.processing_time_s, 2),
            _cell(r.peak_memory_gb, 3),
            _cell(r.cpu_hours, 5),
        )
        for r in rows
    ]
    text = table(header, body)
    failures = [
        f"  run {r.id}: {r.failure_reason}"
        for r in rows
        if r.status == "FAILED" and r.failure_reason
    ]
    return "\n".join([text, *(["failures:", *failures] if failures else [])])


def render_lineage(lineage: Lineage) -> str:
    """`ccat-wm lineage` as text: the product, the runs that made it, the raw data."""
    lines = [
        f"product {lineage.product_id} ({lineage.data_product_type}, {lineage.file_size} bytes)",
        f"  path      {lineage.file_path}",
        f"  sha256    {lineage.checksum}",
        f"runs ({len(lineage.runs)}), most downstream first:",
    ]
    for run in lineage.runs:
        lines.append(
            f"  run {run.run_id}: {run.pipeline} / {run.step}[{display_key(run.sub_group_key)}] "
            f"{run.status}"
        )
        lines.append(f"    software {run.software} {run.version} ({run.digest or 'no digest'})")
        lines.append(f"    config   {run.config} {json.dumps(run.parameters, sort_keys=True)}")
        if run.execution_command:
            lines.append(f"    command  {run.execution_command}")
    lines.append(f"raw data packages ({len(lineage.raw_data_packages)}):")
    lines += [f"  {p['name']}  sha256 {p['checksum']}" for p in lineage.raw_data_packages]
    return "\n".join(lines)
