"""What the local backend measures of a job: GNU `time`'s record and the process tree.

GNU `time` writes, when the job ends, a record whose last line is the largest process's
peak resident memory (KiB) and, before it, a non-zero exit status or the signal that
killed the job. The tree's resident memory is sampled from Linux's /proc while the job
runs (`/proc/<pid>/task/*/children`, no scan of every process).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

TERMINATED = re.compile(r"Command terminated by signal (\d+)")
EXITED = re.compile(r"Command exited with non-zero status (\d+)")


def signalled(rusage_path: str) -> int | None:
    """Minus the signal that killed the job, as GNU `time` recorded it (None: not killed)."""
    try:
        found = TERMINATED.search(Path(rusage_path).read_text(errors="replace"))
    except OSError:
        return None
    return -int(found.group(1)) if found else None


def largest_process(rusage_path: str) -> int:
    """Max resident bytes of the largest process of the job, as GNU `time` reported it."""
    try:
        return int(Path(rusage_path).read_text().split()[-1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0


def tree_memory(pid: int) -> tuple[int, int]:
    """Resident bytes of a process tree now, and the largest peak (VmHWM) of one member.

    The high-water mark is per address space, so it starts afresh at `exec` and does not
    count the forked copy of the submitting process (unlike `ru_maxrss`).
    """
    total = high_water = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            rss, hwm = vm_rss_hwm(member)
            total += rss
            high_water = max(high_water, hwm)
    return total, high_water


def process_tree(pid: int) -> list[int]:
    """List the process and its descendants from /proc/<pid>/task/*/children (no scan)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with (
                    contextlib.suppress(OSError),
                    open(f"/proc/{current}/task/{task}/children") as f,
                ):
                    todo.extend(int(child) for child in f.read().split())
    return found


def vm_rss_hwm(pid: int) -> tuple[int, int]:
    """Resident and peak resident bytes of one process (Linux /proc), 0 where unknown."""
    rss = hwm = 0
    with Path(f"/proc/{pid}/status").open() as status:
        for line in status:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                break
    return rss, hwm
