"""Commands imported when they run: `ccat-wm --help` imports no command module.

A command's module pulls in what it needs (SQLAlchemy, Prefect, Alembic, numpy); the
group knows each command by name, module and one-line help, and imports the module
only to run (or show the full help of) that command. A test checks that the help here
is each command's own.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import click


@dataclass(frozen=True, slots=True)
class LazyCommand:
    """Where a command lives, and its one-line help for `ccat-wm --help`."""

    module: str
    attribute: str
    short_help: str


class LazyGroup(click.Group):
    """A group whose commands are imported on first use."""

    def __init__(self, *args: object, lazy: dict[str, LazyCommand], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Return every command's name, the imported and the lazy ones."""
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Return the command, importing its module the first time."""
        if cmd_name in self.commands or cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        where = self.lazy[cmd_name]
        command = getattr(importlib.import_module(where.module), where.attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{where.module}.{where.attribute} is not a click command")
        self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the commands with their one-line help, importing none of them."""
        rows = [(name, self.lazy[name].short_help) for name in sorted(self.lazy)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
