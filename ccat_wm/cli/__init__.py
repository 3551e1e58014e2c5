"""The `ccat-wm` command line: the top layer, thin commands over the functions tasks use too.

One module per command group (`db`, `specs`, `runs`, `provenance`, `deploy`, `demo`);
`common` holds what they share, `render` the text and JSON output. Every command exits
0 on success, 1 with a one-line cause on stderr on any error, 2 on a usage error.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

import click

from ccat_wm.cli import cluster, demo, deploy, provenance, runs, specs
from ccat_wm.cli import db as db_commands
from ccat_wm.cli.common import report_error
from ccat_wm.prefect_settings import apply_prefect_defaults

DISTRIBUTION = "ccat-workflow-manager"


def _version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", "-V", prog_name="ccat-wm")
@click.option("--debug", is_flag=True, help="Print the full traceback of an error.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """CCAT workflow manager: decide what needs (re)processing, run it, record provenance."""
    ctx.obj = {"debug": debug}


cli.add_command(db_commands.db)
for command in (
    specs.apply, specs.simulate,
    runs.plan, runs.run, runs.retry, runs.status, runs.logs, runs.cancel, runs.trigger,
    provenance.lineage, provenance.verify, provenance.reproduce, provenance.invalidate,
    deploy.deploy, demo.demo, cluster.resources, cluster.gc,
):  # fmt: skip
    cli.add_command(command)


def main() -> None:
    """Entry point: run the CLI; any error becomes a one-line cause and exit code 1."""
    apply_prefect_defaults()  # before Prefect is imported; a user's value wins
    debug = "--debug" in sys.argv[1:]
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        sys.exit(report_error(exc, debug=debug))
