"""Text and JSON renderings of CLI results, from the same dataclasses."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ccat_wm.cli.render_quality import flip_lines, flips_json, rejected_json, rejected_lines
from ccat_wm.selection.dimensions import display_key

if TYPE_CHECKING:  # types only: a command imports what it runs, not every command's
    from ccat_wm.execution.report import RunRow
    from ccat_wm.execution.retention import Removal
    from ccat_wm.execution.retry import RetryResult
    from ccat_wm.execution.usage import StepUsage
    from ccat_wm.gaps.plan import Plan
    from ccat_wm.gaps.what_if import WhatIf


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds") if moment else None


NARROWEST = 20
"""Columns are not elided below this width (nor below their header's): times, statuses
and ids stay whole, long paths and keys give way."""


def terminal_width() -> int | None:
    """Return the width tables must fit on a terminal (`COLUMNS`, else its size).

    None when the output is a pipe or a file: whole values there, for grep and scripts.
    """
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size().columns


def _elide(text: str, width: int) -> str:
    """Shorten `text` to `width` by dropping its middle (a path keeps its file name)."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


def _fit(widths: list[int], floors: list[int], width: int) -> list[int]:
    """Narrow the widest columns until the table fits `width` (or none can narrow)."""
    widths = list(widths)
    while sum(widths) + 2 * (len(widths) - 1) > width:
        widest = max(range(len(widths)), key=lambda i: widths[i] - floors[i])
        if widths[widest] <= floors[widest]:
            break
        widths[widest] -= 1
    return widths


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    width: int | None = None,
    *,
    detect: bool = True,
) -> str:
    """Render left-aligned columns separated by two spaces, fitting `width` or the terminal.

    On a terminal the widest columns are elided in the middle
    until the table fits; `--json` always has every value whole. `detect=False` with no
    `width`: no limit.
    """
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    if width is None and detect:
        width = terminal_width()
    if width is not None:
        floors = [min(w, max(len(str(h)), NARROWEST)) for w, h in zip(widths, headers, strict=True)]
        widths = _fit(widths, floors, width)
    return "\n".join(
        "  ".join(_elide(c, w).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def hours(value: float) -> str:
    """CPU-hours in one fixed-point format (never `7.73e-05` beside `0.000223`)."""
    return f"{value:.6f}" if value < 1 else f"{value:,.2f}"


def render_plan_table(plan: Plan) -> str:
    """Render the plan as people read it: gaps, then blast radius and cost per step."""
    from ccat_wm.gaps.plan import next_action

    headers = (
        "pipeline", "step", "sub_group_key", "reason", "ready", "eligible_at", "inputs", "next",
    )  # fmt: skip
    rows = [
        (g.pipeline, g.step, display_key(g.sub_group_key), g.reason.value,
         "yes" if g.ready else "no", _iso(g.eligible_at), g.inputs, next_action(g))
        for g in plan.gaps
    ]  # fmt: skip
    parts = [table(headers, rows) if rows else "no gaps"]
    if plan.costs:
        cost_rows = [
            (
                c.pipeline,
                c.step,
                c.runs,
                hours(c.cpu_hours_per_run),
                hours(c.cpu_hours),
                c.basis,
            )
            for c in plan.costs
        ]
        parts += ["", "blast radius and estimated cost:"]
        parts.append(table(("pipeline", "step", "runs", "cpu_h/run", "cpu_h", "basis"), cost_rows))
        parts.append(
            f"total: {sum(c.runs for c in plan.costs)} runs, "
            f"{hours(plan.total_cpu_hours)} CPU-hours"
        )
    failed = [g for g in plan.gaps if g.reason.value == "failed"]
    if plan.retry_costs:
        pipelines = sorted({c.pipeline for c in plan.retry_costs})
        parts.append(
            f"retrying the {len(failed)} failed sub-group(s) would run "
            f"{sum(c.runs for c in plan.retry_costs)} run(s), downstream included, about "
            f"{hours(sum(c.cpu_hours for c in plan.retry_costs))} CPU-hours: "
            + "; ".join(f"ccat-wm retry {p}" for p in pipelines)
        )
    parts += rejected_lines(plan.rejected)
    return "\n".join(parts)


def render_plan_json(plan: Plan) -> str:
    """Render the plan as JSON: `gaps`, `blast_radius` per step, `total_cpu_hours`."""
    from ccat_wm.gaps.plan import next_action

    payload = {
        "evaluated_at": _iso(plan.evaluated_at),
        "errors": plan.errors,
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
                "next": next_action(g),
            }
            for g in plan.gaps
        ],
        "retry_cost": [
            {
                "pipeline": c.pipeline,
                "step": c.step,
                "runs": c.runs,
                "cpu_hours": c.cpu_hours,
                "basis": c.basis,
            }
            for c in plan.retry_costs
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
        "rejected": rejected_json(plan.rejected),
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
        "id", "pipeline", "step", "sub_group_key", "status", "reason", "attempts",
        "requested", "hpc_job_id", "started", "finished", "time_s", "peak_gb", "cpu_h",
    )  # fmt: skip
    body = [
        (
            str(r.id),
            r.pipeline,
            r.step,
            display_key(r.sub_group_key),
            r.status,
            r.reason,
            str(r.retry_count + 1),  # attempts count from 1 wherever people read them
            _request_cell(r.requested_resources),
            _cell(r.hpc_job_id),
            short_time(r.started_at),
            short_time(r.finished_at),
            _cell(r.processing_time_s, 2),
            _cell(r.peak_memory_gb, 3),
            _cell(r.cpu_hours, 5),
        )
        for r in rows
    ]
    text = table(header, body)
    failures = [
        f"  run {r.id}: [{r.failure_kind or 'FAILED'}] {r.failure_reason}"
        for r in rows
        if r.status == "FAILED" and r.failure_reason
    ]
    rejected = [f"  run {r.id}: {r.qa_rejection}" for r in rows if r.qa_rejection]
    parts = [
        text,
        *(["failures (`ccat-wm logs RUN_ID` prints a run's log):", *failures] if failures else []),
        *(
            ["rejected by a quality decision (their products feed no downstream step; "
             "`ccat-wm qa accept` takes them back):", *rejected]
            if rejected else []
        ),
    ]  # fmt: skip
    links = [f"  run {r.id}: {r.flow_run_url}" for r in rows if r.flow_run_url]
    if links:
        parts += ["flow runs in the Prefect UI:", *links[:20]]
    return "\n".join(parts)


def render_resources_table(report: Sequence[StepUsage]) -> str:
    """`ccat-wm resources` as a table: one line per step, then the badput per failure kind."""
    headers = (
        "pipeline", "step", "runs", "failed", "cpu", "mem_req_gb", "mem_p50", "mem_p95",
        "mem_suggest", "time_req_h", "wall_p50_h", "wall_p95_h", "time_suggest_h", "cpu_eff",
        "badput_cpu_h",
    )  # fmt: skip
    rows = [
        (
            u.pipeline, u.step, u.completed, u.failed, u.requested.cpu,
            f"{u.requested.memory_gb:.3g}", _cell(u.memory_gb_p50, 3), _cell(u.memory_gb_p95, 3),
            _cell(u.suggested_memory_gb, 2), f"{u.requested.time_hours:.3g}",
            _cell(_per_hour(u.wall_s_p50), 4), _cell(_per_hour(u.wall_s_p95), 4),
            _cell(u.suggested_time_hours, 3),
            f"{u.cpu_efficiency:.0%}" if u.cpu_efficiency is not None else "-",
            hours(u.badput_total),
        )
        for u in report
    ]  # fmt: skip
    lines = [table(headers, rows)]
    badput = [
        f"  {u.pipeline}.{u.step}: "
        + ", ".join(f"{kind} {hours(h)}" for kind, h in sorted(u.badput_cpu_hours.items()))
        for u in report
        if u.badput_cpu_hours
    ]
    if badput:
        lines += ["CPU-hours held by failed attempts (CPUs x wall), per failure kind:", *badput]
    lines.append(
        "suggested = 95th percentile of COMPLETED attempts x headroom; set it as the step's "
        "resources (memory_gb, time_hours) in its spec and apply"
    )
    return "\n".join(lines)


def render_gc_table(report: Sequence[Removal]) -> str:
    """`ccat-wm gc` as a table: per location, what was removed and the bytes freed."""
    if not report:
        return "no processing locations"
    headers = (
        "location", "staged_copies", "completed_workspaces", "failed_run_dirs", "files",
        "bytes_freed", "products_kept",
    )  # fmt: skip
    rows = [
        (r.location + (" (FAILED, see below)" if r.error else ""), r.staged_copies,
         r.completed_workspaces, r.failed_run_directories, r.files_removed,
         f"{r.bytes_freed:,}", r.products_kept)
        for r in report
    ]  # fmt: skip
    verb = "would free" if report[0].dry_run else "freed"
    total = sum(r.bytes_freed for r in report)
    return f"{table(headers, rows)}\n{verb} {total:,} bytes in all" + (
        " (dry run: nothing was removed)" if report[0].dry_run else ""
    )


def _per_hour(seconds: float | None) -> float | None:
    return seconds / 3600 if seconds is not None else None


def _request_cell(request: Mapping[str, Any] | None) -> str:
    """Render a latest attempt's request as a table cell: `1c 0.4G 2h` (`-`: none recorded)."""
    if not request:
        return "-"
    cell = (
        f"{request.get('cpu', 1)}c {float(request.get('memory_gb', 1)):.3g}G "
        f"{float(request.get('time_hours', 1)):.3g}h"
    )
    return f"{cell} {request['gpu']}gpu" if request.get("gpu") else cell


def short_time(moment: dt.datetime | None) -> str:
    """`2026-11-29 23:57:05Z` (UTC, marked as such), or `-`."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"


def render_retry(result: RetryResult) -> str:
    """Render what `ccat-wm retry` created, before it runs them."""
    if not result.created:
        return f"no failed sub-groups in {result.pipeline}: nothing to retry"
    lines = [
        f"{len(result.created)} failed sub-group(s) of {result.pipeline} get a fresh retry budget:"
    ]
    lines += [
        f"  run {c.id}: {c.step}[{display_key(c.sub_group_key)}] reason {c.reason.value}"
        for c in result.created
    ]
    return "\n".join(lines)


def render_what_if(what_if: WhatIf) -> str:
    """`plan --with` as text: the changes, the plan after them, and what they add."""
    lines = ["applying the files would make these changes (nothing was written):"]
    lines += [f"  {c.render()}" for c in what_if.changes] or ["  none"]
    lines += flip_lines(what_if.qa_flips)
    lines += ["", "plan after the change:", render_plan_table(what_if.after), ""]
    new = what_if.new_gaps
    reasons = Counter(g.reason.value for g in new)
    lines.append(
        f"the change causes {len(new)} gap(s)"
        + (f" ({', '.join(f'{n} {r}' for r, n in sorted(reasons.items()))})" if new else "")
        + f": {hours(what_if.before.total_cpu_hours)} -> "
        f"{hours(what_if.after.total_cpu_hours)} estimated CPU-hours "
        f"({'-' if what_if.added_cpu_hours < 0 else '+'}{hours(abs(what_if.added_cpu_hours))})"
    )
    return "\n".join(lines)


def render_what_if_json(what_if: WhatIf) -> str:
    """`plan --with --json`: `changes`, `plan` (after), `new_gaps`, CPU-hours before and after."""
    after = json.loads(render_plan_json(what_if.after))
    new = {(g.pipeline, g.step, g.sub_group_key, g.reason.value) for g in what_if.new_gaps}
    payload = {
        "changes": [c.render() for c in what_if.changes],
        "plan": after,
        "new_gaps": [
            g for g in after["gaps"]
            if (g["pipeline"], g["step"], g["sub_group_key"], g["reason"]) in new
        ],
        "qa_flips": flips_json(what_if.qa_flips),
        "cpu_hours_before": what_if.before.total_cpu_hours,
        "cpu_hours_after": what_if.after.total_cpu_hours,
    }  # fmt: skip
    return json.dumps(payload, indent=2)
