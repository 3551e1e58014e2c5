"""What a flow run did, for its Prefect artifacts and for `ccat-wm status`.

Plain rows rendered by the CLI (table and `--json`) and by the flow's artifacts alike.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, exists, func, select
from sqlalchemy.orm import Session, aliased

from ccat_ops_db import models as m
from ccat_wm.execution.layout import run_root
from ccat_wm.execution.sizing import describe
from ccat_wm.quality.standing import decision_line
from ccat_wm.selection.dimensions import display_key

RUN = m.ExecutedReductionStep


@dataclass(frozen=True, slots=True)
class RunRow:
    """One run as `ccat-wm status` and the flow's run table show it."""

    id: int
    pipeline: str
    step: str
    sub_group_key: str
    status: str
    reason: str
    retry_count: int
    hpc_job_id: str | None
    processing_time_s: float | None
    peak_memory_gb: float | None
    cpu_hours: float | None
    failure_reason: str | None
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    """When the first attempt started staging."""
    finished_at: dt.datetime | None = None
    """When it reached a final status."""
    flow_run_id: str | None = None
    """The Prefect flow run that executed it."""
    flow_run_url: str | None = None
    """The flow run's page in the Prefect UI (only with a Prefect server)."""
    run_dir: str | None = None
    """The run's directory at its processing location (inputs, outputs, logs)."""
    requested_resources: dict[str, Any] | None = None
    """What its latest attempt asked for (escalated after OUT_OF_MEMORY or TIMEOUT)."""
    failure_kind: str | None = None
    """The class of its latest failure (OUT_OF_MEMORY, TIMEOUT, EXIT_CODE, ...)."""
    qa_rejection: str | None = None
    """Why the quality decision in force rejects it (its products feed no downstream
    step): the latest decision's message, and who took it."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (times as ISO 8601 in UTC)."""
        out = asdict(self)
        for name in ("created_at", "started_at", "finished_at"):
            moment = out[name]
            out[name] = moment.astimezone(dt.UTC).isoformat() if moment else None
        return out


def _runs_query() -> Select[*tuple[Any, ...]]:
    query: Select[*tuple[Any, ...]] = (
        select(
            RUN.id,
            m.Pipeline.name,
            m.ReductionStep.name,
            RUN.sub_group_key,
            RUN.status,
            RUN.reason,
            RUN.retry_count,
            RUN.hpc_job_id,
            RUN.processing_time_s,
            RUN.peak_memory_gb,
            RUN.cpu_hours,
            RUN.failure_reason,
            RUN.created_at,
            RUN.started_at,
            RUN.finished_at,
            RUN.prefect_flow_run_id,
            m.DataLocation.path,
            RUN.requested_resources,
            RUN.failure_kind,
            case((RUN.qa_rejected, decision_line(RUN.id)), else_=None),
        )
        .join(RUN.reduction_step)
        .join(m.ReductionStep.pipeline)
        .join(m.Pipeline.processing_location)
    )
    return query


def _row(values: Any, ui_url: str | None) -> RunRow:
    (rid, pipeline, step, key, status, reason, retries, job, wall, mem, cpu, why,
     created, started, finished, flow_run, base, requested, kind, rejection) = values  # fmt: skip
    url = f"{ui_url.rstrip('/')}/runs/flow-run/{flow_run}" if ui_url and flow_run else None
    run_dir = str(run_root(Path(base), pipeline, key, rid)) if base else None
    return RunRow(
        rid, pipeline, step, key, status.value, reason.value, retries, job, wall, mem, cpu, why,
        created, started, finished, flow_run, url, run_dir, requested,
        kind.value if kind else None, rejection,
    )  # fmt: skip


def run_rows(
    session: Session,
    *,
    pipeline: str | None = None,
    flow_run: str | None = None,
    statuses: Sequence[m.RunStatus] = (),
    step: str | None = None,
    since: dt.datetime | None = None,
    limit: int | None = None,
    ui_url: str | None = None,
    history: bool = True,
) -> list[RunRow]:
    """Return runs, newest first, narrowed by pipeline, flow run, statuses, step and time.

    `since`: runs created at or after that moment. `ui_url`: the Prefect UI's base URL,
    to link each run's flow run. `history=False`: leave out failures that are no longer
    a problem (`superseded`).
    """
    query = _runs_query().order_by(RUN.id.desc())
    query = query.where(*_narrowed(pipeline, flow_run, statuses, step, since))
    if not history:
        query = query.where(~superseded())
    if limit is not None:
        query = query.limit(limit)
    return [_row(r, ui_url) for r in session.execute(query)]


def _narrowed(
    pipeline: str | None,
    flow_run: str | None,
    statuses: Sequence[m.RunStatus],
    step: str | None,
    since: dt.datetime | None,
) -> list[ColumnElement[bool]]:
    """Return the conditions narrowing runs (over RUN joined to its step and pipeline)."""
    conditions: list[ColumnElement[bool]] = []
    if pipeline is not None:
        conditions.append(m.Pipeline.name == pipeline)
    if flow_run is not None:
        conditions.append(RUN.prefect_flow_run_id == flow_run)
    if statuses:
        conditions.append(RUN.status.in_(list(statuses)))
    if step is not None:
        conditions.append(m.ReductionStep.name == step)
    if since is not None:
        conditions.append(RUN.created_at >= since)
    return conditions


def superseded() -> ColumnElement[bool]:
    """Select FAILED or CANCELLED runs whose sub-group has a later COMPLETED run of its step."""
    later = aliased(RUN)
    return and_(
        RUN.status.in_([m.RunStatus.FAILED, m.RunStatus.CANCELLED]),
        exists().where(
            later.reduction_step_id == RUN.reduction_step_id,
            later.sub_group_key == RUN.sub_group_key,
            later.id > RUN.id,
            later.status == m.RunStatus.COMPLETED,
        ),
    )


def hidden_history(
    session: Session,
    *,
    pipeline: str | None = None,
    statuses: Sequence[m.RunStatus] = (),
    step: str | None = None,
    since: dt.datetime | None = None,
) -> int:
    """Count the superseded failures that `run_rows(..., history=False)` leaves out."""
    query = (
        select(func.count())
        .select_from(RUN)
        .join(RUN.reduction_step)
        .join(m.ReductionStep.pipeline)
        .where(superseded(), *_narrowed(pipeline, None, statuses, step, since))
    )
    return int(session.scalar(query) or 0)


def _utc(moment: dt.datetime | None) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment else ""


def run_table(rows: list[RunRow]) -> list[dict[str, Any]]:
    """Return the flow run's table artifact: what ran, why, when, where, how it ended."""
    return [
        {
            "run": r.id,
            "step": r.step,
            "sub_group": display_key(r.sub_group_key),
            "status": r.status,
            "why": r.reason,
            "failure": r.failure_reason or "",
            "qa": r.qa_rejection or "",
            "attempts": r.retry_count + 1,
            "job_id": r.hpc_job_id or "",
            "requested": describe(r.requested_resources) if r.requested_resources else "",
            "started": _utc(r.started_at),
            "finished": _utc(r.finished_at),
            "wall_s": round(r.processing_time_s, 2) if r.processing_time_s is not None else "",
            "peak_mem_gb": round(r.peak_memory_gb, 4) if r.peak_memory_gb is not None else "",
            "cpu_hours": round(r.cpu_hours, 6) if r.cpu_hours is not None else "",
            "run_dir": r.run_dir or "",
        }
        for r in sorted(rows, key=lambda r: r.id)
    ]


INLINE_IMAGES = 6
"""Maps shown inline in a flow run's products artifact at most (the rest are linked)."""
INLINE_IMAGE_BYTES = 400_000
"""A larger PNG is listed by its path only (artifacts live in the Prefect database)."""


def image_markdown(path: Path, *, inline: bool = True) -> str:
    """Return a PNG as markdown: inline (a data URI the Prefect UI renders), else its path."""
    try:
        size = path.stat().st_size
        data = path.read_bytes() if inline and size <= INLINE_IMAGE_BYTES else None
    except OSError:
        return f"- `{path}` (not readable here)"
    if data is None:
        return f"- `{path}` ({size} bytes, not shown inline)"
    encoded = base64.b64encode(data).decode("ascii")
    return f"### `{path.name}`\n\n![{path.name}](data:image/png;base64,{encoded})\n\n`{path}`"


def products_markdown(session: Session, flow_run: str, *, listed: int = 25) -> str:
    """Markdown summary of the products of a flow run's runs: counts by type, science files.

    Maps and plots (PNG products) are shown inline, up to `INLINE_IMAGES`; every science
    product's path is listed (up to `listed`).
    """
    # long: the markdown's sections in the order they print
    product = m.DataProduct
    in_run = product.executed_reduction_step_id == RUN.id
    counts = session.execute(
        select(
            product.data_product_type, func.count(), func.coalesce(func.sum(product.file_size), 0)
        )
        .join(RUN, in_run)
        .where(RUN.prefect_flow_run_id == flow_run)
        .group_by(product.data_product_type)
        .order_by(product.data_product_type)
    ).all()
    science = session.scalars(
        select(product.file_path)
        .join(RUN, in_run)
        .where(
            RUN.prefect_flow_run_id == flow_run,
            product.data_product_type == m.DataProductType.SCIENCE,
        )
        .order_by(product.file_path)
        .limit(listed)
    ).all()
    lines = ["# Products of this flow run", "", "| type | files | bytes |", "|---|---:|---:|"]
    lines += [f"| {kind.value} | {n} | {size} |" for kind, n, size in counts]
    if not counts:
        lines.append("| (none) | 0 | 0 |")
    if science:
        lines += ["", "## Science products", ""]
        lines += [f"- `{path}`" for path in science]
    images = session.scalars(
        select(product.file_path)
        .join(RUN, in_run)
        .where(
            RUN.prefect_flow_run_id == flow_run,
            product.data_product_type.in_([m.DataProductType.PLOT, m.DataProductType.SCIENCE]),
            func.lower(product.file_path).like("%.png"),
        )
        .order_by(product.file_path)
        .limit(listed)
    ).all()
    if images:
        lines += ["", "## Maps and plots", ""]
        lines += [
            image_markdown(Path(path), inline=n < INLINE_IMAGES) for n, path in enumerate(images)
        ]
    return "\n".join(lines)


ARTIFACT_ROWS = 1000
"""Runs a flow run's table artifact lists at most: a 100,000-run wave's full table was
about half the flow process's memory at its end, and the UI cannot show it anyway."""


def artifact_rows(
    session: Session, flow_run: str, *, limit: int = ARTIFACT_ROWS
) -> tuple[list[RunRow], int]:
    """Return up to `limit` runs of a flow run, those that did not complete first, and the total."""
    others = [s for s in m.RunStatus if s is not m.RunStatus.COMPLETED]
    rows = run_rows(session, flow_run=flow_run, statuses=others, limit=limit)
    if len(rows) < limit:
        completed = [m.RunStatus.COMPLETED]
        rows += run_rows(session, flow_run=flow_run, statuses=completed, limit=limit - len(rows))
    total = session.scalar(select(func.count()).where(RUN.prefect_flow_run_id == flow_run))
    return rows, int(total or 0)


def count_failed_sub_groups(session: Session, pipeline: str, now: dt.datetime) -> int:
    """How many sub-groups of the pipeline are `failed` (retries exhausted) at `now`."""
    from ccat_wm.gaps.plan import make_plan  # noqa: PLC0415 - `status` needs no gap evaluator

    plan = make_plan(session, now, pipeline)
    return sum(1 for g in plan.gaps if g.reason is m.GapReason.FAILED)
