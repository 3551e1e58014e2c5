"""Text renderings of the provenance commands: `lineage`, `verify`, `reproduce`, `invalidate`."""

from __future__ import annotations

import datetime as dt
import json
import shlex
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ccat_wm.cli.render import hours, table
from ccat_wm.quality.standing import who_decided
from ccat_wm.selection.dimensions import display_key

if TYPE_CHECKING:  # types only
    from ccat_wm.execution.control import Lineage
    from ccat_wm.execution.invalidation import InvalidationResult
    from ccat_wm.execution.reproduce import ReproduceReport
    from ccat_wm.execution.verify import VerifyReport


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
    # long: the report's lines in the order they print, one block per kind of run
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
    lines += _left_out_lines(lineage.left_out, listed * 4)
    lines.append(f"raw data packages ({len(lineage.raw_data_packages)}):")
    packages = lineage.raw_data_packages
    lines += [f"  {p['name']}  sha256 {p['checksum']}" for p in packages[: listed * 4]]
    if len(packages) > listed * 4:
        lines.append(f"  ... {len(packages) - listed * 4} more (--json lists all)")
    return "\n".join(lines)


def _left_out_lines(left_out: list[dict[str, Any]], listed: int) -> list[str]:
    """Say which runs a quality decision kept out of the chain, and why."""
    if not left_out:
        return []
    lines = [f"left out by a quality decision ({len(left_out)}; their data is not in it):"]
    for r in left_out[:listed]:
        who = who_decided(r["source"], r["decided_by"])
        lines.append(
            f"  {r['step']}[{display_key(r['sub_group_key'])}] run {r['run_id']}, "
            f"out of run {r['left_out_of']}: {r['message']} ({who}, {r['decided_at']})"
        )
    if len(left_out) > listed:
        lines.append(f"  ... {len(left_out) - listed} more (--json lists all)")
    return lines


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
            (i.pipeline, i.step, i.runs, i.current, i.products, hours(i.cpu_hours))
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
            f"{hours(result.cpu_hours)} CPU-hours to re-make"
        )
    if result.dry_run:
        lines.append("dry run: nothing was written")
    elif not result.undo:
        lines.append(
            "next: `ccat-wm plan` lists the gaps (reason invalidated); "
            "`ccat-wm run PIPELINE` re-makes them"
        )
    return "\n".join(lines)
