"""The CLI starts fast because it imports only what a command needs (bench/cli_bench.py
measures the times; these tests hold the import graph that makes them)."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from ccat_wm.cli import COMMANDS, cli


def imported_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has imported after running `code`."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


HEAVY = ("sqlalchemy", "alembic", "prefect", "numpy", "matplotlib", "astropy", "pydantic")


def test_the_cli_itself_imports_no_database_prefect_or_science_library() -> None:
    """`ccat-wm --help` and `--version` import click and the command table only."""
    modules = imported_after("import ccat_wm.cli")
    assert not [m for m in modules if m.split(".")[0] in HEAVY], sorted(modules)
    assert not [m for m in modules if m.startswith("ccat_wm.") and m != "ccat_wm.cli.lazy"
                and m != "ccat_wm.cli"], sorted(modules)  # fmt: skip


@pytest.mark.parametrize("command", ["status", "plan", "logs", "cancel"])
def test_a_run_command_imports_neither_alembic_nor_prefect_nor_numpy(command: str) -> None:
    """`status` and `plan` need SQLAlchemy and the models, not migrations, flows or plots."""
    modules = imported_after(
        "import click\nfrom ccat_wm.cli import cli\n"
        f"cli.get_command(click.Context(cli), {command!r})"
    )
    assert "sqlalchemy.orm" in modules and "ccat_ops_db.models" in modules  # it did load
    for heavy in ("alembic", "prefect", "numpy", "matplotlib", "astropy", "flows"):
        assert heavy not in modules, (command, heavy)


def test_the_command_table_lists_every_command_with_its_own_help() -> None:
    """The one-line help `ccat-wm --help` shows without importing a command is the
    command's own (its docstring's first line), for every command."""
    context = click.Context(cli)
    for name, lazy in COMMANDS.items():
        command = cli.get_command(context, name)
        assert command is not None, name
        assert command.get_short_help_str(limit=300) == lazy.short_help, name
    assert sorted(cli.list_commands(context)) == sorted(COMMANDS)
