"""What every command shares: settings, the schema check, time options, error reporting.

Errors: every command reports any error as one line on stderr and exits 1 (2 for a
usage error). The line gives the cause in words; the full traceback of every error
goes to the error log under the home directory (`$CCAT_WM_HOME/logs/ccat-wm-errors.log`)
and, for an unexpected error, the line names that file. `ccat-wm --debug ...` prints
the traceback instead. No message contains an environment value or a password: an
unexpected database error is reduced to the server's first line, without the SQL
statement or its parameters.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
import traceback
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Engine

from ccat_ops_db.schema_version import HEAD_REVISION, stored_revision
from ccat_wm.db import display_url, get_engine, resolve_db_url
from ccat_wm.errors import CcatWmError, DatabaseError, describe
from ccat_wm.settings import Settings, load_settings

RUN_ID = click.IntRange(1, 2**63 - 1)
"""A run id as the ops DB holds it (BIGINT): a larger number is refused by click."""
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def engine_for(settings: Settings, *, require_schema: bool = True) -> Engine:
    """Return the ops DB engine; refuse a schema that is not current unless told not to."""
    engine = get_engine(resolve_db_url(settings))
    if require_schema:
        check_schema(engine)
    return engine


def engine() -> Engine:
    """Return the ops DB of the current settings, checked to be at the current schema."""
    return engine_for(load_settings())


def check_schema(engine: Engine) -> None:
    """Refuse to work on an ops DB that is not at the current schema."""
    try:
        current = stored_revision(engine)
    except Exception as exc:
        raise DatabaseError(
            f"cannot reach the ops DB at {display_url(engine.url)}: {type(exc).__name__}; "
            "check CCAT_OPS_DB_URL"
        ) from None
    if current != HEAD_REVISION:
        raise DatabaseError(
            f"the ops DB is at schema revision {current or 'none (empty)'}, expected "
            f"{HEAD_REVISION}; run `ccat-wm db upgrade`"
        )


def parse_moment(value: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """Parse ISO 8601 (`Z` included; naive means UTC) or a duration ago (`30m`, `6h`, `2d`)."""
    text = value.strip()
    match = _DURATION.match(text)
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=seconds)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a time; expected ISO 8601 (2026-01-01, 2026-01-01T04:00Z, "
            "2026-01-01T04:00:00+02:00) or a duration ago (30m, 6h, 2d)"
        ) from None
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


class Moment(click.ParamType[dt.datetime, Any]):
    """A click option type for `parse_moment`."""

    name = "TIME"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> dt.datetime:
        """Return an aware UTC datetime, or fail with the accepted forms."""
        if isinstance(value, dt.datetime):
            return value
        try:
            return parse_moment(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def split_commas(value: str) -> tuple[str, ...]:
    """Split a comma-separated option: `a, b,,c` -> ('a', 'b', 'c')."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def error_log_path() -> Path:
    """Return the error log of the current settings (in the temp dir if they are unusable)."""
    try:
        return load_settings().error_log
    except Exception:
        import tempfile

        return Path(tempfile.gettempdir()) / "ccat-wm-errors.log"


def log_traceback(exc: BaseException, argv: list[str]) -> Path | None:
    """Append the error's traceback to the error log; return its path (None if unwritable)."""
    path = error_log_path()
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    lines = traceback.format_exception(exc)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as log:
            log.write(f"--- {stamp} ccat-wm {' '.join(argv)}\n{''.join(lines)}\n")
    except OSError:
        return None
    return path


def report_error(exc: BaseException, *, debug: bool) -> int:
    """Report an error as one line on stderr (traceback logged or shown); return the exit code."""
    expected = isinstance(exc, CcatWmError)
    where = log_traceback(exc, sys.argv[1:])
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    line = f"error: {describe(exc)}"
    if not expected and not debug:
        line += f" (traceback in {where}; or rerun with --debug)" if where else ""
    click.echo(line, err=True)
    return 1
