"""A wave larger than one flow run holds, run as parts (sub-flow runs) that overlap at their seams.

One Prefect flow run holds at most `CCAT_WM_MAX_TASK_RUNS` task runs, so a larger wave
runs as parts of that size, each a sub-flow run. Were each part to start only after
the last run of the one before had ended, the cluster would run empty at every seam
while the next part's flow run starts and stages and submits its first runs (3 to 17 s
per seam on a SLURM test cluster). So the next part starts as soon as the one before
has no run left waiting for a thread (all its unfinished runs are in flight: at most
`CCAT_WM_FLOW_WORKERS`), or a tenth of its runs left, whichever comes first: its first
jobs are staged and queued while the last of the previous part still run. On a
scheduler whose flow workers cover a whole part (SLURM: every run of a part is
submitted at once and followed by its own thread), that is at once: the next part's
jobs wait in the queue behind the previous part's.

Rules that keep this safe:

- A part whose runs wait for a run of the part before (a follow-up whose upstream run is
  there) starts only when that part has ended, as before: a follow-up cannot wait for
  a task run of another flow run.
- At most two parts run at once: a part starts only after the part two before it ended.
  While two overlap, up to twice `CCAT_WM_FLOW_WORKERS` threads run sub-group runs; the
  step's global concurrency limit (`max_concurrent_runs`) holds across both.
- A stopping command starts no further part.
"""

from __future__ import annotations

import contextvars
import math
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ccat_wm.execution.stopping import stop_requested
from tasks.runs import WaveItem

LEAD_FRACTION = 0.1
"""The next part starts when the one before has at most this fraction of a part left."""
OVERLAPPING_PARTS = 2
"""Parts running at once, at most."""


class PartProgress:
    """How many task runs of one part have not ended yet; counted down from their threads."""

    def __init__(self, total: int) -> None:
        """Start with `total` unfinished task runs."""
        self._left = total
        self._changed = threading.Condition()

    @property
    def left(self) -> int:
        """Task runs of the part that have not ended."""
        with self._changed:
            return self._left

    def one_ended(self) -> None:
        """Count one task run of the part as ended (a done-callback of its future)."""
        with self._changed:
            self._left -= 1
            self._changed.notify_all()

    def wait_until_at_most(self, left: int, timeout_s: float) -> bool:
        """Wait up to `timeout_s` until at most `left` task runs are unfinished; say if so."""
        with self._changed:
            return self._changed.wait_for(lambda: self._left <= left, timeout_s)


_PROGRESS: dict[tuple[str, int], PartProgress] = {}
_PROGRESS_LOCK = threading.Lock()


def progress_of(claim_as: str, part: int) -> PartProgress | None:
    """Return the progress counter of part `part` of flow run `claim_as`'s wave, if any."""
    with _PROGRESS_LOCK:
        return _PROGRESS.get((claim_as, part))


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a wave: its items (upstream indices remapped into the part)."""

    number: int
    items: list[WaveItem]
    waits_for_previous: bool
    """Some run of this part waits for a run of the part before it."""


def split_wave(items: list[WaveItem], size: int) -> list[Part]:
    """Split in order; upstream indices are remapped into the part (earlier parts are done).

    A part that has a run whose upstream run is in the part just before it is marked
    `waits_for_previous`: it starts only when that part has ended.
    """
    parts = []
    for number, start in enumerate(range(0, len(items), size), start=1):
        chunk = items[start : start + size]
        previous_start = start - size
        parts.append(
            Part(
                number,
                [
                    WaveItem(
                        i.step,
                        i.sub_group_key,
                        i.run_id,
                        tuple(u - start for u in i.upstream if u >= start),
                    )
                    for i in chunk
                ],
                any(previous_start <= u < start for i in chunk for u in i.upstream),
            )
        )
    return parts


def lead_for(size: int, workers: int) -> int:
    """Unfinished runs of a part at which the next part starts (see the module docstring)."""
    return max(1, workers, math.ceil(size * LEAD_FRACTION))


RunPart = Callable[[Part], dict[str, int]]
"""Runs one part as a sub-flow run and returns how its task runs ended."""


def run_parts(
    claim_as: str, parts: list[Part], run_part: RunPart, *, lead: int
) -> list[dict[str, int]]:
    """Run the parts in order, each starting when the one before has at most `lead` runs left.

    Each part runs in a thread of its own with a copy of the caller's context, so that
    its flow run is a sub-flow run of the caller's. Returns the parts' counts, in order.
    """
    started: list[tuple[Future[dict[str, int]], PartProgress]] = []
    with ThreadPoolExecutor(OVERLAPPING_PARTS, thread_name_prefix="ccat-wave-part") as pool:
        try:
            for part in parts:
                if started:
                    _wait_for_seam(started, part, lead)
                if stop_requested():
                    break
                progress = PartProgress(len(part.items))
                with _PROGRESS_LOCK:
                    _PROGRESS[(claim_as, part.number)] = progress
                context = contextvars.copy_context()
                started.append((pool.submit(context.run, run_part, part), progress))
            return [future.result() for future, _ in started]
        finally:
            with _PROGRESS_LOCK:
                for part in parts:
                    _PROGRESS.pop((claim_as, part.number), None)


def _wait_for_seam(
    started: list[tuple[Future[dict[str, int]], PartProgress]], part: Part, lead: int
) -> None:
    """Wait until `part` may start: the part two before ended, the one before nearly done."""
    if len(started) >= OVERLAPPING_PARTS:
        started[-OVERLAPPING_PARTS][0].result()
    future, progress = started[-1]
    if part.waits_for_previous:
        future.result()
        return
    while not future.done() and not stop_requested():
        if progress.wait_until_at_most(lead, 0.2):
            return
