"""What failed in a flow run, said the way an operator acts on it (the Prefect UI, the CLI).

A failure is a sub-group's run that ended FAILED: it is named by its step and sub-group
(`calibrate[executed_obs_unit=scan-000001]`), not only its run id, with the failure's
kind and reason, how many attempts it made, the log of its last attempt and the one
command that retries it. The flow run's message, its `failures` artifact and each failed
task run's page are built from these rows, so they agree.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.execution.layout import RunLayout
from ccat_wm.selection.dimensions import display_key

RUN = m.ExecutedReductionStep
DEPENDS = m.reduction_step_dependency
LISTED_IN_MESSAGE = 5
"""Failures a flow run's message names; the artifact lists them all."""


@dataclass(frozen=True, slots=True)
class Failure:
    """One sub-group whose run failed in a flow run."""

    run_id: int
    pipeline: str
    step: str
    sub_group_key: str
    kind: str
    reason: str
    attempts: int
    """Attempts the run made, counted from 1."""
    log_path: str | None

    @property
    def name(self) -> str:
        """`step[sub-group]`, as the task run is named."""
        return task_run_name(self.step, self.sub_group_key)

    @property
    def next_command(self) -> str:
        """The command that retries this sub-group once its cause is fixed."""
        return retry_command(self.pipeline, self.sub_group_key, self.step)

    def as_row(self) -> dict[str, Any]:
        """Return the `failures` artifact's row (the command before the long log path)."""
        return {
            "step": self.step, "sub_group": display_key(self.sub_group_key), "run": self.run_id,
            "kind": self.kind, "reason": first_line(self.reason), "attempts": self.attempts,
            "next": self.next_command, "log": self.log_path or "",
        }  # fmt: skip


def task_run_name(step: str, sub_group_key: str) -> str:
    """Return the name of a sub-group's task run: `step[sub-group]`."""
    return f"{step}[{display_key(sub_group_key)}]"


def retry_command(pipeline: str, sub_group_key: str, step: str | None = None) -> str:
    """Return `ccat-wm retry PIPELINE [--step S] --sub-group KEY`, quoted for a shell."""
    argv = ["ccat-wm", "retry", pipeline]
    if step is not None:
        argv += ["--step", step]
    return shlex.join([*argv, "--sub-group", display_key(sub_group_key)])


def first_line(text: str, limit: int = 300) -> str:
    """Return the first line of a reason, cut to `limit` characters (tables, one-liners)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def flow_run_failures(session: Session, flow_run_id: str) -> list[Failure]:
    """Return the runs a flow run owns that ended FAILED, by step and sub-group."""
    rows = session.execute(
        select(
            RUN.id, m.Pipeline.name, m.ReductionStep.name, RUN.sub_group_key, RUN.failure_kind,
            RUN.failure_reason, RUN.retry_count, m.DataLocation.path,
            ~exists().where(DEPENDS.c.depends_on_step_id == m.ReductionStep.id),
        )
        .join(RUN.reduction_step)
        .join(m.ReductionStep.pipeline)
        .join(m.Pipeline.processing_location)
        .where(RUN.prefect_flow_run_id == flow_run_id, RUN.status == m.RunStatus.FAILED)
        .order_by(m.ReductionStep.name, RUN.sub_group_key, RUN.id)
    ).all()  # fmt: skip
    failures = []
    for rid, pipeline, step, key, kind, reason, retries, base, final in rows:
        layout = RunLayout.for_run(Path(base), pipeline, key, rid, step, is_final=bool(final))
        failures.append(
            Failure(
                rid, pipeline, step, key, kind.value if kind else "UNKNOWN",
                reason or "no reason recorded", retries + 1, str(layout.attempt_log(retries)),
            )
        )  # fmt: skip
    return failures


def failures_message(failures: list[Failure], total: int, not_run: int = 0) -> str:
    """Return the flow run's one-line message: how many failed of how many, and which.

    `total`: the runs the flow run executed (its runs artifact counts the same); a
    follow-up whose upstream failed never became a run and is not counted there, but
    `not_run` of them (task runs ending `UpstreamFailed`) are named as such.
    """
    named = "; ".join(
        f"{f.name}: {first_line(f.reason, 160)}" for f in failures[:LISTED_IN_MESSAGE]
    )
    more = len(failures) - LISTED_IN_MESSAGE
    tail = f"; and {more} more (the flow run's failures artifact lists them)" if more > 0 else ""
    waiting = (
        f" {not_run} downstream sub-group(s) were not run: they wait for these." if not_run else ""
    )
    return (
        f"{len(failures)} of {total} sub-group run(s) failed: {named}{tail}.{waiting} Fix the "
        "cause, then press Retry on this flow run (or run the command in the failures artifact)"
    )
