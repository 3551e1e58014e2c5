"""Cron ticks in a timezone: when a scheduled step or a CRON pipeline may next fire."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from croniter import croniter


def tick_at_or_after(expression: str, timezone: str, moment: dt.datetime) -> dt.datetime:
    """Return the first tick of `expression` (read in `timezone`) at or after `moment` (UTC)."""
    zone = ZoneInfo(timezone)
    local = moment.astimezone(zone)
    start = local.replace(microsecond=0) - dt.timedelta(seconds=1)
    itr = croniter(expression, start)
    tick: dt.datetime = itr.get_next(dt.datetime)
    while tick < local:
        tick = itr.get_next(dt.datetime)
    return tick.astimezone(dt.UTC)
