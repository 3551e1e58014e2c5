"""Commands about runs: `plan`, `run`, `retry`, `status`, `logs`, `cancel`, `trigger`.

Each command imports the domain modules it uses when it runs (`ccat-wm status` loads no
gap evaluator, `plan` no log reader, neither Prefect): a command starts in a fraction
of a second (`bench/cli_bench.py`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ccat_ops_db.models import RunStatus
from ccat_wm.cli import complete
from ccat_wm.cli.common import RUN_ID, Moment, engine
from ccat_wm.cli.render import render_runs_table
from ccat_wm.errors import CcatWmError
from ccat_wm.execution import stopping
from ccat_wm.selection.dimensions import ALL_KEY_DISPLAY

if TYPE_CHECKING:  # the driver loads Prefect: only for commands that run flows
    from ccat_wm.cli.driver import FlowRunResult


def _keys(sub_groups: tuple[str, ...]) -> list[str]:
    """Sub-group keys as typed (`all` is the all-data key, stored as the empty string)."""
    return [("" if k == ALL_KEY_DISPLAY else k) for k in sub_groups]


def _report_flow_run(pipeline: str, result: FlowRunResult) -> None:
    """Print the runs a flow run executed and what is failed; raise if the flow run failed."""
    click.echo(render_runs_table(result.runs) if result.runs else "no gaps: nothing to run")
    click.echo(f"flow run {result.flow_run_id}: {result.state}")
    if result.runs:
        _summarize_products(result.flow_run_id)
    ui = prefect_ui_url()
    if ui:
        click.echo(f"in the Prefect UI: {ui}/runs/flow-run/{result.flow_run_id}")
    if stopping.stop_requested():
        click.echo(f"stopped: {result.message}", err=True)
        sys.exit(stopping.exit_code())
    if result.failed_sub_groups:
        click.echo(
            f"{result.failed_sub_groups} sub-group(s) of {pipeline} failed with their retries "
            f"exhausted; retry them with: ccat-wm retry {pipeline}"
        )
    if result.failed:
        raise CcatWmError(
            f"pipeline {pipeline!r} flow run {result.flow_run_id} ended {result.state}: "
            f"{result.message}; see `ccat-wm status {pipeline} --status FAILED` and "
            "`ccat-wm logs RUN_ID`"
        )


def _summarize_products(flow_run_id: str) -> None:
    """Print what the flow run's runs made: counts by type, then the maps and plots."""
    from sqlalchemy.orm import Session

    from ccat_wm.catalog import flow_run_products

    with Session(engine()) as session:
        made = flow_run_products(session, flow_run_id)
    counts = ", ".join(f"{n} {kind}" for kind, n in made.counts.items())
    click.echo(f"products made: {counts or 'none'}")
    for path in made.maps:
        click.echo(f"  map:  {path}")
    for path in made.plots:
        click.echo(f"  plot: {path}")
    if made.maps or made.plots:
        click.echo("  (`ccat-wm products --since 1h` lists them all)")


@click.command()
@click.argument("pipeline", required=False, shell_complete=complete.pipelines)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--at", type=Moment(), default=None, help="Evaluate as of this time (ISO 8601).")
@click.option(
    "--with",
    "with_specs",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Plan as if this spec file were applied (repeatable); nothing is written.",
)
def plan(
    pipeline: str | None, as_json: bool, at: dt.datetime | None, with_specs: tuple[Path, ...]
) -> None:
    """Show what needs (re)processing, why, when, and which command runs it; writes nothing.

    With `--with SPEC.yaml`, the files are applied in a transaction that is rolled
    back: the plan shows the gaps and CPU-hours that applying them would cause.
    """
    import getpass

    from sqlalchemy.orm import Session

    from ccat_wm.cli.render import (
        render_plan_json,
        render_plan_table,
        render_what_if,
        render_what_if_json,
    )
    from ccat_wm.gaps.plan import make_plan
    from ccat_wm.gaps.what_if import plan_with
    from ccat_wm.spec.loader import load_spec_files

    now = at or dt.datetime.now(dt.UTC)
    if with_specs:
        loaded = load_spec_files(list(with_specs))
        with Session(engine()) as session:
            what_if = plan_with(session, loaded, now, pipeline, user=getpass.getuser())
        click.echo(render_what_if_json(what_if) if as_json else render_what_if(what_if))
        _fail_on_evaluation_errors(what_if.after.errors)
        return
    with Session(engine()) as session, session.begin():
        result = make_plan(session, now, pipeline)
    click.echo(render_plan_json(result) if as_json else render_plan_table(result))
    _fail_on_evaluation_errors(result.errors)


def _fail_on_evaluation_errors(errors: dict[str, str]) -> None:
    """Name each pipeline that could not be evaluated (on stderr) and exit 1."""
    for name, why in sorted(errors.items()):
        click.echo(f"error: pipeline {name!r} was not evaluated: {why}", err=True)
    if errors:
        raise SystemExit(1)


@click.command()
@click.argument("pipeline", shell_complete=complete.pipelines)
@click.option(
    "--sub-group",
    "sub_groups",
    multiple=True,
    help="Run only this sub-group key (repeatable; `all` for the all-data sub-group).",
)
@click.option(
    "--force", is_flag=True, help="Run every sub-group, also those with a current run or failed."
)
def run(pipeline: str, sub_groups: tuple[str, ...], force: bool) -> None:
    """Run a pipeline now (a manual run): every ready gap, or the given sub-groups."""
    stopping.arm()
    from ccat_wm.cli.driver import run_pipeline  # loads Prefect

    result = run_pipeline(engine(), pipeline, sub_groups=_keys(sub_groups) or None, force=force)
    _report_flow_run(pipeline, result)


@click.command()
@click.argument("pipeline", shell_complete=complete.pipelines)
@click.option(
    "--step",
    default=None,
    help="Only failed sub-groups of this step.",
    shell_complete=complete.steps,
)
@click.option(
    "--sub-group", "sub_groups", multiple=True, help="Only this sub-group key (repeatable)."
)
@click.option("--run", "run_ids", type=RUN_ID, multiple=True, help="The sub-group of this run.")
def retry(
    pipeline: str, step: str | None, sub_groups: tuple[str, ...], run_ids: tuple[int, ...]
) -> None:
    """Give failed sub-groups (retries exhausted) a fresh retry budget and run them now."""
    stopping.arm()
    from ccat_wm.cli.driver import retry_pipeline  # loads Prefect
    from ccat_wm.cli.render import render_retry

    retried, outcome = retry_pipeline(
        engine(), pipeline, step=step, sub_groups=_keys(sub_groups), run_ids=list(run_ids)
    )
    click.echo(render_retry(retried))
    if outcome is None:
        return
    _report_flow_run(pipeline, outcome)


def prefect_ui_url() -> str | None:
    """Return the Prefect UI's base URL when a server is set (`PREFECT_UI_URL` or the API's)."""
    ui = os.environ.get("PREFECT_UI_URL")
    if ui:
        return ui
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        return None
    api = api.rstrip("/")
    return api[: -len("/api")] if api.endswith("/api") else api


@click.command()
@click.argument("pipeline", required=False, shell_complete=complete.pipelines)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in RunStatus], case_sensitive=False),
    help="Only runs in this status (repeatable).",
)
@click.option("--step", default=None, help="Only runs of this step.", shell_complete=complete.steps)
@click.option(
    "--since", type=Moment(), default=None, help="Only runs created since (ISO 8601, or 6h, 2d)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True)
@click.option(
    "--history",
    is_flag=True,
    help="Also failed or cancelled runs whose sub-group completed since (hidden by default).",
)
def status(  # noqa: PLR0917 - one parameter per click option
    pipeline: str | None,
    statuses: tuple[str, ...],
    step: str | None,
    since: dt.datetime | None,
    as_json: bool,
    limit: int,
    history: bool,
) -> None:
    """List runs, newest first: status, reason, attempts, job id, times and metrics.

    Current problems by default: a failed or cancelled run whose sub-group has a later
    COMPLETED run of its step is shown only with `--history` (the table says how many
    it hid).
    """
    from sqlalchemy.orm import Session

    from ccat_wm.execution.report import hidden_history, run_rows
    from ccat_wm.lookup import pipeline_by_name

    wanted = [RunStatus(s.upper()) for s in statuses]
    with Session(engine()) as session:
        if pipeline is not None:
            pipeline_by_name(session, pipeline)
        rows = run_rows(
            session, pipeline=pipeline, statuses=wanted, step=step, since=since, limit=limit,
            ui_url=prefect_ui_url(), history=history,
        )  # fmt: skip
        hidden = 0 if history else hidden_history(
            session, pipeline=pipeline, statuses=wanted, step=step, since=since
        )  # fmt: skip
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    click.echo(render_runs_table(rows))
    if hidden:
        click.echo(
            f"{hidden} failed or cancelled run(s) whose sub-group completed since are not "
            "shown; --history lists them"
        )


@click.command()
@click.argument("run_id", type=RUN_ID)
@click.option(
    "--attempt",
    type=click.IntRange(min=0),
    default=None,
    help="Which attempt (1 = the first); default the latest.",
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the attempt ends.")
def logs(run_id: int, attempt: int | None, follow: bool) -> None:
    """Print a run's job log (stdout and stderr of one attempt), on any backend."""
    from ccat_wm.execution.logs import attempt_summary, follow_log, run_log, stream_log

    ops_db = engine()
    log = run_log(ops_db, run_id, attempt)
    click.echo(
        f"# run {run_id} attempt {log.attempt + 1} of {log.attempts} ({log.status}): {log.path}",
        err=True,
    )
    summary = attempt_summary(ops_db, run_id, log.attempt)
    if summary:
        click.echo(f"# attempt {log.attempt + 1}: {summary}", err=True)
    if follow:
        final = follow_log(ops_db, log, lambda text: click.echo(text, nl=False))
        click.echo(f"# run {run_id} is {final}", err=True)
    else:
        stream_log(ops_db, log, lambda text: click.echo(text, nl=False))
    for path in log.extra:
        click.echo(f"# also written by the software in this attempt: {path}", err=True)


@click.command()
@click.argument("run_id", type=RUN_ID)
def cancel(run_id: int) -> None:
    """Cancel a run that has not finished, and stop its backend job."""
    from sqlalchemy.orm import Session

    from ccat_wm.execution.control import cancel_run

    with Session(engine()) as session:
        result = cancel_run(session, run_id)
    job = f"; job {result.hpc_job_id} stopped" if result.job_cancelled else ""
    click.echo(f"run {run_id} cancelled (was {result.previous_status}){job}")


@click.command()
@click.option(
    "--location",
    default=None,
    help="Only this processing location's pipelines.",
    shell_complete=complete.locations,
)
@click.option("--json", "as_json", is_flag=True, help="Print what the tick did as JSON.")
def trigger(location: str | None, as_json: bool) -> None:
    """One trigger tick: create the due runs and start their flows.

    Due runs are those of the CONTINUOUS pipelines and of the CRON pipelines whose cron
    tick has come: a site may run this from the system's cron instead of a Prefect server.
    """
    engine()  # the schema check, before Prefect starts
    from flows.trigger import trigger_flow  # loads Prefect

    result = trigger_flow(location=location, interval_s=0.0, include_cron=True)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        _fail_on_evaluation_errors(result["errors"])
        return
    for pipeline, count in sorted(result["created"].items()):
        click.echo(f"{pipeline}: {count} new run(s)")
    for pipeline, how in sorted(result["started"].items()):
        click.echo(f"{pipeline}: {how}")
    if result["cancelled"]:
        click.echo(f"cancelled runs of flow runs cancelled in Prefect: {result['cancelled']}")
    if result["crashed"]:
        click.echo(f"flow runs without heartbeats marked Crashed: {result['crashed']}")
    if not (result["created"] or result["started"] or result["cancelled"] or result["crashed"]):
        click.echo("nothing to do")
    _fail_on_evaluation_errors(result["errors"])
