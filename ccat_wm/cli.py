"""The `ccat-wm` command line: thin commands over the functions the tasks use too.

Every command exits 0 on success and non-zero with a one-line cause on stderr
otherwise (a rejected spec lists its problems on the following lines).
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import secrets
import sys
from dataclasses import asdict
from pathlib import Path

import click
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ccat_ops_db import migrate
from ccat_wm import demo as demo_module
from ccat_wm.db import display_url, get_engine, resolve_db_url
from ccat_wm.embedded_pg import stop_embedded_server
from ccat_wm.errors import CcatWmError, DatabaseError
from ccat_wm.execution.control import cancel_run, product_lineage
from ccat_wm.execution.report import run_rows
from ccat_wm.execution.waves import pipeline_by_name
from ccat_wm.gaps.plan import make_plan
from ccat_wm.prefect_settings import apply_prefect_defaults
from ccat_wm.render import render_lineage, render_plan_json, render_plan_table, render_runs_table
from ccat_wm.selection.dimensions import ALL_KEY_DISPLAY
from ccat_wm.settings import Settings, load_settings
from ccat_wm.simulate.catalog import DEFAULT_LINES, DEFAULT_PROGRAM, DEFAULT_SOURCES
from ccat_wm.simulate.register import SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files


def _engine(settings: Settings, *, require_schema: bool = True) -> Engine:
    engine = get_engine(resolve_db_url(settings))
    if require_schema:
        check_schema(engine)
    return engine


def check_schema(engine: Engine) -> None:
    """Refuse to work on an ops DB that is not at the current schema."""
    try:
        current = migrate.current_revision(engine)
    except Exception as exc:
        raise DatabaseError(
            f"cannot reach the ops DB at {display_url(engine.url)}: {type(exc).__name__}; "
            "check CCAT_OPS_DB_URL"
        ) from None
    heads = migrate.head_revisions()
    if current not in heads:
        raise DatabaseError(
            f"the ops DB is at schema revision {current or 'none (empty)'}, expected "
            f"{', '.join(heads)}; run `ccat-wm db upgrade`"
        )


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """CCAT workflow manager: decide what needs (re)processing, run it, record provenance."""


@cli.group()
def db() -> None:
    """Manage the ops DB (CCAT_OPS_DB_URL, or the embedded server when unset)."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Migrate the ops DB to the current schema."""
    engine = _engine(load_settings(), require_schema=False)
    migrate.upgrade(engine)
    click.echo(
        f"ops DB at {display_url(engine.url)} is at revision {migrate.current_revision(engine)}"
    )


@db.command("url")
def db_url() -> None:
    """Print the ops DB URL in use (password masked); starts the embedded server if needed."""
    click.echo(display_url(resolve_db_url(load_settings())))


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL server (no effect with CCAT_OPS_DB_URL set)."""
    settings = load_settings()
    if settings.ops_db_url:
        click.echo("CCAT_OPS_DB_URL is set; there is no embedded server to stop")
        return
    stopped = stop_embedded_server(settings.home)
    click.echo("embedded server stopped" if stopped else "embedded server was not running")


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--dry-run", is_flag=True, help="Validate and print what would change; write nothing."
)
@click.option(
    "--user", default=None, help="Author recorded on new pipelines (default: login name)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the changes as JSON.")
def apply(files: tuple[Path, ...], dry_run: bool, user: str | None, as_json: bool) -> None:
    """Create or update sites, locations, software, groupings and pipelines from YAML."""
    loaded = load_spec_files(files)
    engine = _engine(load_settings())
    with Session(engine) as session:
        changes = apply_specs(session, loaded, user=user or getpass.getuser())
        if dry_run:
            session.rollback()
        else:
            session.commit()
    if as_json:
        payload = {"dry_run": dry_run, "changes": [asdict(c) for c in changes]}
        click.echo(json.dumps(payload, indent=2))
        return
    for change in changes:
        click.echo(change.render())
    verb = "would change" if dry_run else "changed"
    click.echo(f"{len(changes)} object(s) {verb}" if changes else "no changes")


@cli.command()
@click.option("--scans", type=int, required=True, help="Number of new scans.")
@click.option(
    "--sources",
    default=",".join(DEFAULT_SOURCES),
    show_default=True,
    help="Comma-separated source names.",
)
@click.option(
    "--lines",
    default=",".join(DEFAULT_LINES),
    show_default=True,
    help="Comma-separated line names.",
)
@click.option(
    "--seed", type=int, default=None, help="Seed for reproducible data (default: random, printed)."
)
@click.option("--program", default=DEFAULT_PROGRAM, show_default=True, help="Observing program.")
@click.option(
    "--location", default=None, help="Archive location (default: the only LONG_TERM_ARCHIVE one)."
)
@click.option("--start", type=click.DateTime(), default=None, help="UTC start of the first scan.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def simulate(
    *,
    scans: int,
    sources: str,
    lines: str,
    seed: int | None,
    program: str,
    location: str | None,
    start: dt.datetime | None,
    as_json: bool,
) -> None:
    """Register synthetic CHAI observations with real small files in an archive location."""
    request = SimulationRequest(
        scans=scans,
        seed=seed if seed is not None else secrets.randbelow(2**31),
        sources=_split(sources),
        lines=_split(lines),
        program=program,
        location=location,
        start=start.replace(tzinfo=dt.UTC) if start else None,
    )
    engine = _engine(load_settings())

    def progress(done: int, total: int) -> None:
        if not as_json and (done == total or done % max(1, total // 10) == 0):
            click.echo(f"simulated {done}/{total} scans", err=True)

    with Session(engine) as session, session.begin():
        result = register_simulation(session, request, progress)
    from flows.events import announce_raw_data  # noqa: PLC0415 - loads Prefect

    announce_raw_data(result.archive, result.package_count, result.scan_names)
    if as_json:
        click.echo(json.dumps({**asdict(result), "seed": request.seed}))
        return
    click.echo(
        f"registered {len(result.scan_names)} scans "
        f"({result.scan_names[0]} .. {result.scan_names[-1]}), "
        f"{result.package_count} raw data packages, {result.total_bytes} bytes in archive "
        f"{result.archive!r} (seed {request.seed})"
    )


@cli.command()
@click.argument("pipeline", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--at", type=click.DateTime(), default=None, help="Evaluate as of this UTC time.")
def plan(pipeline: str | None, as_json: bool, at: dt.datetime | None) -> None:
    """Show what needs (re)processing, why and when, with blast radius and cost; writes nothing."""
    now = at.replace(tzinfo=dt.UTC) if at else dt.datetime.now(dt.UTC)
    with Session(_engine(load_settings())) as session, session.begin():
        result = make_plan(session, now, pipeline)
    click.echo(render_plan_json(result) if as_json else render_plan_table(result))


@cli.command()
@click.argument("pipeline")
@click.option(
    "--sub-group",
    "sub_groups",
    multiple=True,
    help="Run only this sub-group key (repeatable; `all` for the all-data sub-group).",
)
@click.option("--force", is_flag=True, help="Run every sub-group, also those with a current run.")
def run(pipeline: str, sub_groups: tuple[str, ...], force: bool) -> None:
    """Run a pipeline now (a manual run): every ready gap, or the given sub-groups."""
    from flows.run import run_pipeline  # noqa: PLC0415 - Prefect loads only for commands that run flows

    engine = _engine(load_settings())
    keys = [("" if k == ALL_KEY_DISPLAY else k) for k in sub_groups] or None
    result = run_pipeline(engine, pipeline, sub_groups=keys, force=force)
    click.echo(render_runs_table(result.runs) if result.runs else "no gaps: nothing to run")
    click.echo(f"flow run {result.flow_run_id}: {result.state}")
    if result.failed:
        raise CcatWmError(
            f"pipeline {pipeline!r} flow run {result.flow_run_id} ended {result.state}: "
            f"{result.message}; see `ccat-wm status {pipeline}`"
        )


@cli.command()
@click.argument("pipeline", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True)
def status(pipeline: str | None, as_json: bool, limit: int) -> None:
    """List runs, newest first: status, reason, retries, job id and metrics."""
    with Session(_engine(load_settings())) as session:
        if pipeline is not None:
            pipeline_by_name(session, pipeline)
        rows = run_rows(session, pipeline=pipeline, limit=limit)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        click.echo(render_runs_table(rows))


@cli.command()
@click.argument("run_id", type=int)
def cancel(run_id: int) -> None:
    """Cancel a run that has not finished, and stop its backend job."""
    with Session(_engine(load_settings())) as session:
        result = cancel_run(session, run_id)
    job = f"; job {result.hpc_job_id} stopped" if result.job_cancelled else ""
    click.echo(f"run {run_id} cancelled (was {result.previous_status}){job}")


@cli.command()
@click.argument("product")
@click.option("--json", "as_json", is_flag=True, help="Print the lineage as JSON.")
def lineage(product: str, as_json: bool) -> None:
    """Show a product's provenance (by id or file path): runs, software, configs, raw data."""
    with Session(_engine(load_settings())) as session:
        result = product_lineage(session, product)
    click.echo(json.dumps(result.as_dict(), indent=2) if as_json else render_lineage(result))


@cli.command()
@click.option("--location", default=None, help="Only this processing location's pipelines.")
@click.option("--json", "as_json", is_flag=True, help="Print what the tick did as JSON.")
def trigger(location: str | None, as_json: bool) -> None:
    """One trigger tick: create the CONTINUOUS pipelines' due runs and start their flows."""
    _engine(load_settings())  # the schema check, before Prefect starts
    from flows.trigger import trigger_flow  # noqa: PLC0415 - loads Prefect

    result = trigger_flow(location=location, interval_s=0.0)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for pipeline, count in sorted(result["created"].items()):
        click.echo(f"{pipeline}: {count} new run(s)")
    for pipeline, how in sorted(result["started"].items()):
        click.echo(f"{pipeline}: {how}")
    if result["cancelled"]:
        click.echo(f"cancelled runs of flow runs cancelled in Prefect: {result['cancelled']}")
    if not (result["created"] or result["started"] or result["cancelled"]):
        click.echo("nothing to do")


@cli.command()
@click.option(
    "--prefect-yaml",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("prefect.yaml"),
    show_default=True,
    help="Prefect project file whose ccat-wm deployments are rendered.",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
def deploy(prefect_yaml: Path, as_json: bool) -> None:
    """Sync the pipelines into prefect.yaml and the locations into Prefect work pools."""
    from deployments.sync import deploy as deploy_pipelines  # noqa: PLC0415 - loads Prefect

    with Session(_engine(load_settings())) as session:
        result = deploy_pipelines(session, prefect_yaml)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "prefect_yaml": str(result.prefect_yaml),
                    "deployments": result.deployments,
                    "work_pools": [asdict(p) for p in result.pools],
                    "crash_automation": result.crash_automation,
                    "reconciled": asdict(result.reconciled) if result.reconciled else None,
                },
                indent=2,
            )
        )
        return
    for pool in result.pools:
        click.echo(f"work pool {pool.name} ({pool.type}): {pool.action}")
    click.echo(f"automation that crashes flow runs without heartbeats: {result.crash_automation}")
    if result.reconciled:
        done = result.reconciled
        for name in done.deleted_deployments:
            click.echo(f"deployment {name} deleted (its pipeline is gone)")
        for label in done.deleted_schedules:
            click.echo(f"schedule deleted: {label}")
        for label in done.paused:
            click.echo(f"schedule paused: {label}")
        for label in done.resumed:
            click.echo(f"schedule resumed: {label}")
    click.echo(
        f"{len(result.deployments)} deployment(s) rendered into {result.prefect_yaml}; "
        "register them with: prefect deploy --all"
    )


@cli.command()
def demo() -> None:
    """Run the example pipeline end to end on the embedded defaults (again: nothing to do)."""
    demo_module.run_demo(load_settings(), click.echo)


def main() -> None:
    """Entry point: run the CLI, turning our errors into a one-line cause and exit code 1."""
    apply_prefect_defaults()  # before Prefect is imported; a user's value wins
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CcatWmError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
