"""What an operator reads about a failed run: its reason and the end of its job's log.

One line, built from the run's outcome, becomes the message of the failed Prefect task
run, and a markdown artifact of that task run holds the end of its job's log as lines
(Prefect shows a state message as one text): nobody has to open the run directory to
see why, nor to know what to do next.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ccat_wm.execution.failures import first_line
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


@dataclass(frozen=True, slots=True)
class FailedRun:
    """A sub-group's run that failed for good, as its task run's page tells it."""

    run_id: int
    name: str
    """The task run's name, `step[sub-group]`."""
    attempts_made: int
    reason: str
    log_path: Path | None
    job_id: str | None = None
    next_step: str = ""
    """What to do once the cause is fixed (the retry command, the Retry button)."""

    @property
    def head(self) -> str:
        """Return the failure on one line: which run, how many attempts, why."""
        job = f", last job {self.job_id}" if self.job_id else ""
        return (
            f"run {self.run_id} ({self.name}) failed after {self.attempts_made} "
            f"attempt(s){job}: {first_line(self.reason, 500)}"
        )


def failure_message(failed: FailedRun, *, lines: int = TAIL_LINES) -> str:
    """Say on one line why the run failed, its log's last line and path, and what to do.

    The task run's state message: Prefect shows it as one text, so it holds no line
    breaks; the log's last lines are in the task run's failure artifact
    (`failure_markdown`).
    """
    parts = [failed.head]
    if failed.log_path is not None:
        replaced = _not_a_file(failed.log_path)
        tail = [] if replaced else log_tail(failed.log_path, lines)
        if replaced:
            parts.append(f"its log {failed.log_path} was replaced by {replaced}; it was not read")
        elif tail:
            parts.append(f"last log line: {first_line(tail[-1], 300)!r}; log {failed.log_path}")
        else:
            parts.append(f"its log {failed.log_path} is empty or missing")
    if failed.next_step:
        parts.append(f"next: {failed.next_step}")
    return ". ".join(parts)


def failure_markdown(failed: FailedRun, *, lines: int = TAIL_LINES) -> str:
    """Return the failed task run's artifact: reason, the log's last lines as lines, next step."""
    out = [f"### {failed.name} failed", "", failed.head, ""]
    if failed.reason.strip() and "\n" in failed.reason.strip():
        out += ["Reason in full:", "", "```text", failed.reason.strip(), "```", ""]
    if failed.log_path is not None:
        replaced = _not_a_file(failed.log_path)
        tail = [] if replaced else log_tail(failed.log_path, lines)
        if replaced:
            out += [f"Its log `{failed.log_path}` was replaced by {replaced}; it was not read.", ""]
        elif tail:
            out += [f"Last {len(tail)} line(s) of its log `{failed.log_path}`:", "", "```text",
                    *tail, "```", ""]  # fmt: skip
        else:
            out += [f"Its log `{failed.log_path}` is empty or missing.", ""]
    if failed.next_step:
        out += ["**Next:** " + failed.next_step]
    return "\n".join(out)
