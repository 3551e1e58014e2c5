"""What an operator reads about a failed run: its reason and the end of its job's log.

One paragraph, built from the run's outcome, becomes the message of the failed Prefect
task run (its page in the UI) so that nobody has to open the run directory to see why.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ccat_wm.execution.runtree import UnsafeEntryError, kind_of, open_regular_path

TAIL_LINES = 20
"""Lines of the job's log in a failure message."""
TAIL_BYTES = 64 * 1024
"""At most this much of the log's end is read (a log can be gigabytes)."""


def log_tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """Return the last `lines` lines of a log file ([] if it is missing, empty or not a file).

    The log is in a directory the job could write: a link or FIFO in its place is not
    read (the run's failure reason names it).
    """
    try:
        with open_regular_path(path) as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - TAIL_BYTES))
            data = handle.read()
    except (OSError, UnsafeEntryError):
        return []
    text = data.decode("utf-8", errors="replace")
    kept = text.splitlines()
    if size > TAIL_BYTES and kept:
        kept = kept[1:]  # the first line read may be cut
    return kept[-lines:] if lines > 0 else []


def _not_a_file(path: Path) -> str | None:
    """Name what is at the log's place if it is not a regular file (None: a file, or nothing)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else kind_of(mode)


def failure_message(
    run_id: int,
    name: str,
    attempts_made: int,
    reason: str,
    log_path: Path | None,
    *,
    job_id: str | None = None,
    lines: int = TAIL_LINES,
) -> str:
    """Say why run `run_id` (task run `name`) failed, with the end of its log and the log's path."""
    job = f", last job {job_id}" if job_id else ""
    head = f"run {run_id} ({name}) failed after {attempts_made} attempt(s){job}: {reason}"
    if log_path is None:
        return head
    tail = log_tail(log_path, lines)
    replaced = _not_a_file(log_path)
    if replaced:
        return f"{head}\nIts log {log_path} was replaced by {replaced}; it was not read."
    if not tail:
        return f"{head}\nIts log {log_path} is empty or missing (`ccat-wm logs {run_id}`)."
    body = "\n".join(f"    {line}" for line in tail)
    return f"{head}\nLast {len(tail)} line(s) of its log {log_path}:\n{body}"
