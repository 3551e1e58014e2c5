"""`ccat-wm qa accept|reject`: a person's quality decision on completed runs."""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from typing import Any

import click
from sqlalchemy.orm import Session

from ccat_wm.cli import complete
from ccat_wm.cli.common import RUN_ID, engine


@click.group()
def qa() -> None:
    """Accept or reject completed runs' quality (overrides the step's QA gate), or --undo."""


def _options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the options both decisions take."""
    for option in reversed(
        [
            click.option("--run", "runs", multiple=True, type=RUN_ID, help="A run id."),
            click.option(
                "--sub-group", "sub_groups", multiple=True,
                help="The current run of this sub-group key of --step (repeatable).",
            ),
            click.option("--step", default=None, help="The step of --sub-group.",
                         shell_complete=complete.steps),
            click.option("--pipeline", default=None, help="The pipeline of --step, if several.",
                         shell_complete=complete.pipelines),
            click.option("--reason", default="", help="Why (required; kept with the decision)."),
            click.option("--undo", is_flag=True,
                         help="Take your decision back: the step's gate decides again."),
            click.option("--user", default=None, help="Who decides (default: login name)."),
            click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
        ]
    ):  # fmt: skip
        command = option(command)
    return command


@qa.command("accept")
@_options
def accept(**options: Any) -> None:
    """Accept runs: their products feed the downstream steps again."""
    _decide(rejected=False, **options)


@qa.command("reject")
@_options
def reject(**options: Any) -> None:
    """Reject runs: their products feed no downstream step (the runs stay COMPLETED)."""
    _decide(rejected=True, **options)


def _decide(
    *,
    rejected: bool,
    runs: tuple[int, ...],
    sub_groups: tuple[str, ...],
    step: str | None,
    pipeline: str | None,
    reason: str,
    undo: bool,
    user: str | None,
    as_json: bool,
) -> None:
    """Record the decision on every run named, in one transaction, and say what it changed."""
    from ccat_wm.quality.people import QaDecisionError, current_run, decide

    if sub_groups and step is None:
        raise QaDecisionError("--sub-group needs --step (the step whose run is judged)")
    if not runs and not sub_groups:
        raise QaDecisionError("name the runs: --run ID, or --sub-group KEY --step STEP")
    with Session(engine()) as session, session.begin():
        ids = [*runs, *(current_run(session, pipeline, step or "", k) for k in sub_groups)]
        done = decide(
            session, ids, rejected=rejected, reason=reason, user=user or getpass.getuser(),
            undo=undo,
        )  # fmt: skip
    if as_json:
        rows = [
            {"run_id": d.run_id, "step": d.step, "sub_group_key": d.sub_group_key,
             "rejected_before": d.rejected_before, "rejected": d.rejected,
             "qa_changed": [{"step": s, "sub_group_key": k} for s, k in d.gaps()],
             "followed": [{"step": f.step, "sub_group_key": f.sub_group_key, "run_id": f.run_id,
                           "rejected": f.rejected, "message": f.message} for f in d.derived]}
            for d in done
        ]  # fmt: skip
        click.echo(json.dumps(rows, indent=2))
        return
    for d in done:
        state = "rejected" if d.rejected else "accepted"
        was = "rejected" if d.rejected_before else "accepted"
        line = f"run {d.run_id} {d.step}[{d.sub_group_key}]: {state}"
        line += f" (was {was})" if d.rejected != d.rejected_before else " (unchanged)"
        click.echo(line)
        for f in d.derived:
            click.echo(f"  {f.step}[{f.sub_group_key}]: run {f.run_id} {f.message}")
        for s, k in d.gaps():
            click.echo(f"  {s}[{k}]: inputs changed, a gap with reason qa_changed")
