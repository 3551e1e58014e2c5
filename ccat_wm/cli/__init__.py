"""The `ccat-wm` command line: the top layer, thin commands over the functions tasks use too.

One module per command group (`db`, `specs`, `runs`, `provenance`, `deploy`, `demo`);
`common` holds what they share, `render` the text and JSON output. Every command exits
0 on success, 1 with a one-line cause on stderr on any error, 2 on a usage error.
"""

from __future__ import annotations

import sys

import click

from ccat_wm.cli.lazy import LazyCommand, LazyGroup

DISTRIBUTION = "ccat-workflow-manager"

COMMANDS = {
    name: LazyCommand(f"ccat_wm.cli.{module}", attribute, short_help)
    for name, module, attribute, short_help in [
        ("apply", "specs", "apply",
         "Create or update sites, locations, software, groupings and pipelines from YAML."),
        ("cancel", "runs", "cancel",
         "Cancel a run that has not finished, and stop its backend job."),
        ("db", "db", "db",
         "Manage the ops DB (CCAT_OPS_DB_URL, or the embedded server when unset)."),
        ("demo", "demo", "demo",
         "Run the example pipeline end to end on the embedded defaults (again: nothing to do)."),
        ("deploy", "deploy", "deploy",
         "Sync the pipelines into prefect.yaml and the locations into Prefect work pools."),
        ("gc", "cluster", "gc",
         "Apply the retention policy: staged copies, COMPLETED workspaces, old failed runs."),
        ("invalidate", "provenance", "invalidate",
         "Mark raw data packages, runs or products bad (recorded, never deleted), or --undo it."),
        ("lineage", "provenance", "lineage",
         "Show a product's provenance (by id or file path): runs, software, configs, raw data."),
        ("logs", "runs", "logs",
         "Print a run's job log (stdout and stderr of one attempt), on any backend."),
        ("plan", "runs", "plan",
         "Show what needs (re)processing, why, when, and which command runs it; writes nothing."),
        ("products", "data", "products",
         "List products, newest first: id, type, step, sub-group, run, size, time and path."),
        ("qa", "quality", "qa",
         "Accept or reject completed runs' quality (overrides the step's QA gate), or --undo."),
        ("raw", "data", "raw",
         "List raw data packages, newest first: id, name, scan, source, line, size, copies."),
        ("reproduce", "provenance", "reproduce",
         "Re-make a product from what its runs recorded, and compare it bit for bit."),
        ("resources", "cluster", "resources",
         "Per step: requested vs used (median, p95), CPU efficiency, a suggestion, badput."),
        ("retry", "runs", "retry",
         "Give failed sub-groups (retries exhausted) a fresh retry budget and run them now."),
        ("run", "runs", "run",
         "Run a pipeline now (a manual run): every ready gap, or the given sub-groups."),
        ("simulate", "specs", "simulate",
         "Register synthetic CHAI observations with real small files in an archive location."),
        ("status", "runs", "status",
         "List runs, newest first: status, reason, attempts, job id, times and metrics."),
        ("trigger", "runs", "trigger",
         "One trigger tick: create the due runs and start their flows."),
        ("verify", "provenance", "verify",
         "Recompute size and SHA-256 of every product and staged copy; compare with the ops DB."),
    ]
}  # fmt: skip
"""Every command: module, attribute and one-line help (imported only when it runs)."""


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(None, "--version", "-V", package_name=DISTRIBUTION, prog_name="ccat-wm")
@click.option("--debug", is_flag=True, help="Print the full traceback of an error.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """CCAT workflow manager: decide what needs (re)processing, run it, record provenance."""
    ctx.obj = {"debug": debug}


def main() -> None:
    """Entry point: run the CLI; any error becomes a one-line cause and exit code 1."""
    from ccat_wm.prefect_settings import apply_prefect_defaults

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
        from ccat_wm.cli.common import report_error

        sys.exit(report_error(exc, debug=debug))
