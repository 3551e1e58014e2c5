"""`ccat-wm lineage`: where a product came from."""

from __future__ import annotations

import getpass
import json
import shutil
import sys
import tempfile
from pathlib import Path

import click
from sqlalchemy.orm import Session

from ccat_wm.cli import complete
from ccat_wm.cli.common import RUN_ID, engine
from ccat_wm.cli.render_provenance import (
    render_invalidation,
    render_lineage,
    render_reproduce,
    render_verify,
)
from ccat_wm.execution import stopping
from ccat_wm.execution.control import product_lineage
from ccat_wm.execution.invalidation import Target, TargetKind, undo_invalidation
from ccat_wm.execution.invalidation import invalidate as mark_invalid
from ccat_wm.execution.prov_export import product_prov
from ccat_wm.execution.reproduce import keep_problem, reproduce_product
from ccat_wm.execution.verify import verify as verify_files
from ccat_wm.settings import load_settings


@click.command()
@click.argument("product")
@click.option("--json", "as_json", is_flag=True, help="Print the lineage as JSON (every run).")
@click.option(
    "--prov", "as_prov", is_flag=True, help="Print it as W3C PROV-JSON (entities, runs, agents)."
)
def lineage(product: str, as_json: bool, as_prov: bool) -> None:
    """Show a product's provenance (by id or file path): runs, software, configs, raw data.

    Each run's values are the ones it recorded when it started (its snapshot).
    """
    if as_json and as_prov:
        raise click.UsageError("give --json or --prov, not both")
    with Session(engine()) as session:
        if as_prov:
            click.echo(product_prov(session, product).serialize(indent=2))
            return
        result = product_lineage(session, product)
    click.echo(json.dumps(result.as_dict(), indent=2) if as_json else render_lineage(result))


@click.command()
@click.argument("pipeline", required=False, shell_complete=complete.pipelines)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (every finding).")
@click.option(
    "--workers", type=click.IntRange(1, 256), default=None, help="Files hashed at once [CPUs]."
)
def verify(pipeline: str | None, as_json: bool, workers: int | None) -> None:
    """Recompute size and SHA-256 of every product and staged copy; compare with the ops DB.

    Reports missing, changed and unexpected files (unclaimed files in a completed run's
    output directory or a staging cache); exits 1 if there is any.
    """
    with Session(engine()) as session:
        report = verify_files(session, pipeline, workers=workers)
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else render_verify(report))
    if not report.ok:
        raise SystemExit(1)


@click.command()
@click.argument("product")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Re-execute in this (new or empty) directory and keep it; default: a temporary one.",
)
def reproduce(product: str, as_json: bool, keep: Path | None) -> None:
    """Re-make a product from what its runs recorded, and compare it bit for bit.

    Every run that led to the product is executed again in a scratch directory with
    its recorded software version, command, config, environment and inputs (upstream
    products as re-made); nothing is written to the ops DB. Exits 1 unless every file
    the final run recorded comes out bit-identical.
    """
    if keep is not None:
        with Session(engine()) as session:
            problem = keep_problem(session, keep)
        if problem is not None:
            raise click.BadParameter(problem, param_hint="--keep")
    if keep is not None and keep.exists() and any(keep.iterdir()):
        raise click.BadParameter(
            f"{keep} is not empty; give a new or empty directory", param_hint="--keep"
        )
    scratch = keep or Path(tempfile.mkdtemp(prefix="ccat-reproduce-"))
    scratch.mkdir(parents=True, exist_ok=True)
    stopping.arm()
    try:
        with Session(engine()) as session:
            report = reproduce_product(
                session, product, scratch.resolve(), load_settings(), keep=keep is not None
            )
    except stopping.StopRequestedError as exc:
        click.echo(f"stopped: {exc}; nothing was recorded", err=True)
        sys.exit(stopping.exit_code())
    finally:
        if keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else render_reproduce(report))
    if not report.identical:
        raise SystemExit(1)


@click.command()
@click.option("--raw-package", "packages", multiple=True, help="A raw data package, by id or name.")
@click.option("--run", "runs", multiple=True, type=RUN_ID, help="A run id.")
@click.option("--product", "products", multiple=True, help="A data product, by id or path.")
@click.option("--reason", default="", help="Why the data is bad (required; for --undo, why not).")
@click.option("--dry-run", is_flag=True, help="Show the blast radius and CPU-hours; write nothing.")
@click.option("--undo", is_flag=True, help="Undo the active invalidations of the given ids.")
@click.option("--user", default=None, help="Who marks it (default: login name).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def invalidate(  # noqa: PLR0917 - one parameter per click option
    packages: tuple[str, ...],
    runs: tuple[int, ...],
    products: tuple[str, ...],
    reason: str,
    dry_run: bool,
    undo: bool,
    user: str | None,
    as_json: bool,
) -> None:
    """Mark raw data packages, runs or products bad (recorded, never deleted), or --undo it.

    An invalidated package leaves every selection; every run its data flowed into stops
    being current, downstream as far as it went, and those sub-groups become gaps with
    the reason `invalidated`. `--dry-run` prints that blast radius and its CPU-hours first.
    """
    from ccat_wm.lookup import product_id, raw_package_id

    who = user or getpass.getuser()
    with Session(engine()) as session:
        targets = [
            *(Target(TargetKind.RAW_PACKAGE, raw_package_id(session, p)) for p in packages),
            *(Target(TargetKind.RUN, i) for i in runs),
            *(Target(TargetKind.PRODUCT, product_id(session, p)) for p in products),
        ]
        if undo:
            result = undo_invalidation(session, targets, reason, user=who, dry_run=dry_run)
        else:
            result = mark_invalid(session, targets, reason, user=who, dry_run=dry_run)
    click.echo(json.dumps(result.as_dict(), indent=2) if as_json else render_invalidation(result))
