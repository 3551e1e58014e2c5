"""The building blocks of the spec's models: strict objects and checked field types.

A field type carries its own check (a cron expression that fires, an IANA time zone, a
known dimension, a version tag, an image digest) and the message a person reads when
it fails.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ccat_wm.selection.dimensions import DIMENSIONS
from ccat_wm.spec.versions import DIGEST, parse_major

JSON_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_0-9][A-Za-z0-9_-]*)*$")


class StrictSpec(BaseModel):
    """A spec object: unknown keys are errors, values are frozen, no NaN or infinity."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


CRON_HORIZON_YEARS = 5
"""A cron expression must fire within this many years of any moment (checked from now)."""


def _check_cron(expr: str) -> str:
    expected = "expected five fields (minute hour day month weekday) like '0 4 * * *'"
    if len(expr.split()) != 5 or not croniter.is_valid(expr):
        raise ValueError(f"invalid cron expression {expr!r}; {expected}")
    start = dt.datetime.now(dt.UTC)
    try:
        first = croniter(expr, start).get_next(dt.datetime)
    except (CroniterBadDateError, ValueError, OverflowError):
        first = None
    if first is None or first - start > dt.timedelta(days=366 * CRON_HORIZON_YEARS):
        raise ValueError(
            f"cron expression {expr!r} never fires (no tick within {CRON_HORIZON_YEARS} years); "
            f"{expected}"
        )
    return expr


def _check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown timezone {name!r}; expected an IANA name like UTC or Europe/Berlin"
        ) from None
    return name


def _check_dimension(name: str) -> str:
    if name not in DIMENSIONS:
        raise ValueError(
            f"unknown group_by dimension {name!r}; expected one of {', '.join(DIMENSIONS)}"
        )
    return name


def check_tag(tag: str) -> str:
    """Return a version tag whose major version can be read (`1.4.0`, `v2`), else raise."""
    parse_major(tag)
    return tag


def check_digest(digest: str) -> str:
    """Return an image digest of the form `sha256:<64 hex digits>`, else raise."""
    if not DIGEST.match(digest):
        raise ValueError(f"invalid image digest {digest!r}; expected sha256: and 64 hex digits")
    return digest


Identifier = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\s/%&<>]+$")]
"""A name of a site, location, software, grouping, instrument: no whitespace, and none of
the characters Prefect refuses in names (`/ % & < >`: a location names a work pool and
a trigger deployment)."""
RunName = Annotated[
    str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
]
"""A pipeline's or step's name: it names a Prefect flow, a deployment entrypoint
(`flows/pipelines.py:<pipeline>`), task runs, concurrency limits and run directories."""
CronExpr = Annotated[str, AfterValidator(_check_cron)]
Timezone = Annotated[str, AfterValidator(_check_timezone)]
DimensionName = Annotated[str, AfterValidator(_check_dimension)]
NonNegative = Annotated[int, Field(ge=0, le=2**31 - 1)]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=200)]
"""An environment variable's name (POSIX: letters, digits, underscore; no `=`)."""
MAX_FORMAT_WIDTH = 1000
"""Largest width or precision in a command placeholder's format (`{x:.3f}`): a width of
20,000,000 would make each run's command line 20 MB long."""
