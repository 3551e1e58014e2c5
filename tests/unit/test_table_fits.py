"""Tables fit the terminal: long values are elided in the middle, short ones stay whole,
and a pipe gets every value whole (for grep and scripts; `--json` always has them)."""

from __future__ import annotations

import datetime as dt
import os
import pty
import subprocess
import sys

from ccat_wm.cli.render import short_time, table

HEADERS = ("id", "status", "created", "path")
ROWS = [
    (7, "COMPLETED", "2026-12-07 04:29:01Z",
     "/data/pipelines/chai-demo/line=CO43%7Csource=Orion-KL/run-51/output/science/map.fits"),
    (8, "FAILED", "2026-12-07 04:30:00Z", "/short"),
]  # fmt: skip


def test_a_table_too_wide_elides_its_long_column_in_the_middle() -> None:
    text = table(HEADERS, ROWS, width=80)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), text
    assert "COMPLETED" in lines[1] and "2026-12-07 04:29:01Z" in lines[1]  # short ones whole
    assert lines[1].startswith("7   COMPLETED") and lines[1].endswith("science/map.fits")
    assert "…" in lines[1] and lines[2].endswith("/short")


def test_a_table_that_fits_or_has_no_width_is_left_whole() -> None:
    whole = table(HEADERS, ROWS, detect=False)
    assert ROWS[0][3] in whole and "…" not in whole
    assert table(HEADERS, ROWS, width=400) == whole


def test_a_command_on_a_terminal_fits_it_and_a_pipe_gets_whole_values() -> None:
    """`ccat-wm --help`'s sibling: the width a command's table fits, on a pseudo-terminal
    of 90 columns (COLUMNS) and on a pipe (none, whatever COLUMNS says)."""
    code = "from ccat_wm.cli.render import terminal_width; print(terminal_width())"
    env = {"PATH": "/usr/bin", "COLUMNS": "90"}
    piped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env=env)  # fmt: skip
    assert piped.stdout.strip() == "None"
    leader, follower = pty.openpty()
    try:
        subprocess.run([sys.executable, "-c", code], stdout=follower, check=True, env=env)
        assert os.read(leader, 100).decode().strip() == "90"
    finally:
        os.close(leader)
        os.close(follower)


def test_times_carry_their_zone() -> None:
    moment = dt.datetime(2026, 12, 7, 5, 29, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert short_time(moment) == "2026-12-07 04:29:01Z"
