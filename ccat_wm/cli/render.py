"""Text and JSON renderings of CLI results, from the same dataclasses."""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import shutil
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ccat_wm.selection.dimensions import display_key

if TYPE_CHECKING:  # types only: a command imports what it runs, not every command's
    from ccat_wm.execution.control import Lineage
    from ccat_wm.execution.invalidation import InvalidationResult
    from ccat_wm.execution.report import RunRow
    from ccat_wm.execution.reproduce import ReproduceReport
    from ccat_wm.execution.retention import Removal
    from ccat_wm.execution.retry import RetryResult
    from ccat_wm.execution.usage import StepUsage
    from ccat_wm.execution.verify import VerifyReport
    from ccat_wm.gaps.plan import Plan
    from ccat_wm.gaps.what_if import WhatIf


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds") if moment else None


NARROWEST = 20
"""Columns are not elided below this width (nor below their header's): times, statuses
and ids stay whole, long paths and keys give way."""


def terminal_width() -> int | None:
    """Return the width tables must fit: the terminal's, or `COLUMNS`; None when piped."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit():
        return int(columns)
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None  # a pipe or a file: whole values, for grep and scripts


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


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], width: int | None = None) -> str:
    """Render left-aligned columns separated by two spaces, fitting the terminal.

    On a terminal (or with `COLUMNS` set) the widest columns are elided in the middle
    until the table fits; `--json` always has every value whole.
    """
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    width = terminal_width() if width is None else width
    if width is not None:
        floors = [min(w, max(len(str(h)), NARROWEST)) for w, h in zip(widths, headers, strict=True)]
        widths = _fit(widths, floors, width)
    return "\n".join(
        "  ".join(_elide(c, w).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _hours(value: float) -> str:
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
                _hours(c.cpu_hours_per_run),
                _hours(c.cpu_hours),
                c.basis,
            )
            for c in plan.costs
        ]
        parts += ["", "blast radius and estimated cost:"]
        parts.append(table(("pipeline", "step", "runs", "cpu_h/run", "cpu_h", "basis"), cost_rows))
        parts.append(
            f"total: {sum(c.runs for c in plan.costs)} runs, "
            f"{_hours(plan.total_cpu_hours)} CPU-hours"
        )
    failed = [g for g in plan.gaps if g.reason.value == "failed"]
    if plan.retry_costs:
        pipelines = sorted({c.pipeline for c in plan.retry_costs})
        parts.append(
            f"retrying the {len(failed)} failed sub-group(s) would run "
            f"{sum(c.runs for c in plan.retry_costs)} run(s), downstream included, about "
            f"{_hours(sum(c.cpu_hours for c in plan.retry_costs))} CPU-hours: "
            + "; ".join(f"ccat-wm retry {p}" for p in pipelines)
        )
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
    parts = [
        text,
        *(["failures (`ccat-wm logs RUN_ID` prints a run's log):", *failures] if failures else []),
    ]
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
            _hours(u.badput_total),
        )
        for u in report
    ]  # fmt: skip
    lines = [table(headers, rows)]
    badput = [
        f"  {u.pipeline}.{u.step}: "
        + ", ".join(f"{kind} {_hours(h)}" for kind, h in sorted(u.badput_cpu_hours.items()))
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


def _id_ranges(ids: Sequence[int]) -> str:
    """`1, 2, 3, 7, 9, 10` -> `1-3, 7, 9-10`."""
    parts: list[str] = []
    ordered = sorted(set(ids))
    start = prev = ordered[0]
    for value in [*ordered[1:], None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if value is not None:
            start = prev = value
    return ", ".join(parts)


_SNAPSHOT_NOTE = {
    "recorded": "when each run started (its own snapshot)",
    "backfilled": "reconstructed by the upgrade to snapshots (migration 0005)",
    "none": "never started: the current config, which it would use",
}


def _known(value: dict[str, Any] | None, withheld: list[str] | None = None) -> str:
    """Return a recorded mapping as JSON, `unknown` when not recorded; secrets by name."""
    if value is None:
        return "unknown"
    shown = json.dumps(value, sort_keys=True)
    return shown + (f" (secret values withheld: {', '.join(withheld)})" if withheld else "")


def _where(location: str, backend: str, runtime: str, runs: Sequence[Any]) -> str:
    """Say where a group of runs ran and for how long: location, backend, runtime, wall time."""
    spent = [
        (
            dt.datetime.fromisoformat(r.finished_at) - dt.datetime.fromisoformat(r.started_at)
        ).total_seconds()
        for r in runs
        if r.started_at and r.finished_at
    ]
    where = f"{location or 'unknown location'} ({backend or 'unknown backend'}, "
    where += "no container" if runtime == "host" else f"{runtime or 'unknown'} container"
    if spent:
        total = sum(spent)
        where += f"); {total:.1f} s in all" + (
            f", {min(spent):.1f}-{max(spent):.1f} s per run" if len(spent) > 1 else ""
        )
    else:
        where += ")"
    return where


def render_lineage(lineage: Lineage, *, listed: int = 5) -> str:
    """`ccat-wm lineage` as text: the product, what made it, the raw data.

    Runs are grouped by what they ran (step, software version, config, command
    template): each distinct combination is printed once with the runs that used it,
    so a map made from 1,000 scans stays a screenful. `--json` has every run in full.
    """
    lines = [
        f"product {lineage.product_id} ({lineage.data_product_type}, {lineage.file_size} bytes)",
        f"  path      {lineage.file_path}",
        f"  sha256    {lineage.checksum}",
        f"runs ({len(lineage.runs)}), most downstream first, grouped by what they ran:",
    ]
    groups: dict[tuple[str, ...], list[Any]] = {}
    for run in lineage.runs:
        what = (
            run.pipeline, run.step, run.software, run.version, run.digest or "no digest",
            run.image_repository or "", run.config, _known(run.parameters),
            shlex.join(run.command_template) if run.command_template is not None else "unknown",
            _known(run.environment, run.withheld_environment), _known(run.resources),
            run.snapshot, ", ".join(run.unknown), run.location or "", run.backend or "",
            run.runtime or "",
        )  # fmt: skip
        groups.setdefault(what, []).append(run)
    for (
        pipeline, step, software, version, digest, image, config, params, template,
        environment, resources, snapshot, unknown, location, backend, runtime,
    ), runs in groups.items():  # fmt: skip
        lines.append(
            f"  {pipeline} / {step}: {len(runs)} run(s), ids {_id_ranges([r.run_id for r in runs])}"
        )
        lines.append(f"    ran on   {_where(location, backend, runtime, runs)}")
        container = runtime not in ("", "host")  # an image exists only where a container ran
        lines.append(
            f"    software {software} {version}"
            + (f" image {image or software}@{digest}" if container else "")
        )
        lines.append(f"    config   {config} {params}")
        lines.append(f"    template {template}")
        lines.append(f"    env      {environment}")
        lines.append(f"    resources {resources}")
        lines.append(
            f"    recorded {_SNAPSHOT_NOTE[snapshot]}"
            + (f"; unknown: {unknown}" if unknown else "")
        )
        statuses = Counter(r.status for r in runs)
        lines.append("    status   " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
        for run in runs[:listed]:
            lines.append(f"    run {run.run_id} [{display_key(run.sub_group_key)}]")
            if run.execution_command:
                lines.append(f"      command {run.execution_command}")
        if len(runs) > listed:
            lines.append(
                f"    ... {len(runs) - listed} more run(s) of the same kind (--json lists all)"
            )
    lines.append(f"raw data packages ({len(lineage.raw_data_packages)}):")
    packages = lineage.raw_data_packages
    lines += [f"  {p['name']}  sha256 {p['checksum']}" for p in packages[: listed * 4]]
    if len(packages) > listed * 4:
        lines.append(f"  ... {len(packages) - listed * 4} more (--json lists all)")
    return "\n".join(lines)


def render_verify(report: VerifyReport, *, listed: int = 20) -> str:
    """`ccat-wm verify` as text: one summary line, then each kind of finding."""
    rate = report.bytes / report.seconds / 1e9 if report.seconds else 0.0
    scope = f"pipeline {report.pipeline}" if report.pipeline else "all pipelines"
    lines = [
        f"verified {report.files} file(s), {report.bytes / 1e9:.3f} GB, of {scope} in "
        f"{report.seconds:.2f} s ({rate:.2f} GB/s): "
        + ("OK" if report.ok else f"{len(report.missing)} missing, {len(report.changed)} "
           f"changed, {len(report.unexpected)} unexpected")
    ]  # fmt: skip
    for title, findings in (("missing", report.missing), ("changed", report.changed)):
        if findings:
            lines.append(f"{title} ({len(findings)}):")
        for f in findings[:listed]:
            if f.problem == "missing":
                detail = f"expected {f.expected_size} bytes"
            elif f.problem == "size":
                detail = f"{f.actual_size} bytes, recorded {f.expected_size}"
            elif f.problem == "not-a-file":
                detail = f"{f.note} (a regular file was recorded)"
            else:
                detail = f"sha256 {f.actual_sha256}, recorded {f.expected_sha256}"
            lines.append(f"  {f.path}  ({f.kind} {f.id}): {detail}")
        if len(findings) > listed:
            lines.append(f"  ... {len(findings) - listed} more (--json lists all)")
    if report.unexpected:
        lines.append(f"unexpected ({len(report.unexpected)}), recorded by nothing in the ops DB:")
        lines += [f"  {path}" for path in report.unexpected[:listed]]
        if len(report.unexpected) > listed:
            lines.append(f"  ... {len(report.unexpected) - listed} more (--json lists all)")
    return "\n".join(lines)


def render_what_if(what_if: WhatIf) -> str:
    """`plan --with` as text: the changes, the plan after them, and what they add."""
    lines = ["applying the files would make these changes (nothing was written):"]
    lines += [f"  {c.render()}" for c in what_if.changes] or ["  none"]
    lines += ["", "plan after the change:", render_plan_table(what_if.after), ""]
    new = what_if.new_gaps
    reasons = Counter(g.reason.value for g in new)
    lines.append(
        f"the change causes {len(new)} gap(s)"
        + (f" ({', '.join(f'{n} {r}' for r, n in sorted(reasons.items()))})" if new else "")
        + f": {_hours(what_if.before.total_cpu_hours)} -> "
        f"{_hours(what_if.after.total_cpu_hours)} estimated CPU-hours "
        f"({'-' if what_if.added_cpu_hours < 0 else '+'}{_hours(abs(what_if.added_cpu_hours))})"
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
        "cpu_hours_before": what_if.before.total_cpu_hours,
        "cpu_hours_after": what_if.after.total_cpu_hours,
    }  # fmt: skip
    return json.dumps(payload, indent=2)


def render_reproduce(report: ReproduceReport) -> str:
    """`ccat-wm reproduce` as text: each re-made run, then each recorded file compared."""
    where = (
        report.directory if report.kept else "a temporary directory (removed; --keep DIR keeps it)"
    )
    lines = [f"re-made product {report.product_id} ({report.product_path}) in {where}:"]
    for run in report.runs:
        outcome = run.state
        if run.command:
            outcome = f"job {run.job_id} ({run.backend}) {run.state} in {run.seconds:.1f} s"
        lines.append(f"  run {run.run_id} {run.step} [{display_key(run.sub_group_key)}]: {outcome}")
        if run.command:
            lines.append(f"    command {run.command}")
        if run.problem:
            lines.append(f"    problem {run.problem}")
    lines.append(f"files the final run recorded ({len(report.files)}):")
    for f in report.files:
        if f.identical:
            lines.append(f"  identical  {f.path}")
        else:
            lines.append(f"  DIFFERS    {f.path}")
            lines.append(f"             recorded sha256 {f.recorded_sha256}")
            lines.append(f"             re-made  sha256 {f.remade_sha256 or '(not made)'}")
    differing = len(report.differing)
    lines.append(
        "bit-identical: every recorded file was re-made exactly" if report.identical
        else f"NOT reproduced: {differing} of {len(report.files)} file(s) differ"
        + ("" if all(r.state == "COMPLETED" and not r.problem for r in report.runs)
           else "; a run could not be re-made (above)")
    )  # fmt: skip
    return "\n".join(lines)


NAMED = 10
"""Sub-groups and products named per step; `--json` lists them all."""


def _listed(items: Sequence[str]) -> str:
    more = f", and {len(items) - NAMED} more" if len(items) > NAMED else ""
    return ", ".join(items[:NAMED]) + more


def _named_impact(result: InvalidationResult) -> list[str]:
    """Name the sub-groups that become gaps and the products that stop being current."""
    lines = []
    for step in result.impact:
        if step.sub_groups:
            keys = [f"{step.step}[{display_key(k)}]" for k in step.sub_groups]
            lines.append(f"  {step.pipeline} sub-groups to re-make: {_listed(keys)}")
        if step.product_paths:
            lines.append(f"  {step.pipeline}/{step.step} products: {_listed(step.product_paths)}")
    return lines


def render_invalidation(result: InvalidationResult) -> str:
    """`ccat-wm invalidate` as text: what was marked, then the runs it reached per step."""
    verb = "undid the invalidation of" if result.undo else "invalidated"
    if result.dry_run:
        verb = "would " + ("undo the invalidation of" if result.undo else "invalidate")
    why = f" -- {result.reason!r}" if result.reason else ""
    ids = ", ".join(map(str, result.invalidation_ids))
    recorded = "" if result.dry_run else f" (invalidation {ids})"  # a dry run records none
    lines = [f"{verb} {', '.join(result.targets)}{recorded} by {result.user}{why}"]
    if result.impact:
        lines.append("runs the data flowed into:" if not result.undo else "runs it had reached:")
        rows = [
            (i.pipeline, i.step, i.runs, i.current, i.products, _hours(i.cpu_hours))
            for i in result.impact
        ]
        headers = ("pipeline", "step", "runs", "current", "products", "cpu_h")
        lines.append(table(headers, rows))
        if not result.undo:
            lines += _named_impact(result)
    if result.undo:
        lines.append(f"{result.restored_runs} run(s) current again")
    else:
        lines.append(
            f"total: {sum(i.current for i in result.impact)} run(s) no longer current, "
            f"{sum(i.products for i in result.impact)} product(s), about "
            f"{_hours(result.cpu_hours)} CPU-hours to re-make"
        )
    if result.dry_run:
        lines.append("dry run: nothing was written")
    elif not result.undo:
        lines.append(
            "next: `ccat-wm plan` lists the gaps (reason invalidated); "
            "`ccat-wm run PIPELINE` re-makes them"
        )
    return "\n".join(lines)
