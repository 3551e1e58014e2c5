"""A status cache shared by all runs of a location, refreshed by one batched query per cycle.

Cluster backends (SLURM, Kubernetes) must never ask the cluster once per job: every
thread's `status` reads this cache, and when it is older than the poll interval, one
thread refreshes all unfinished watched jobs at once (`_refresh`) while the others wait
for its result.
"""

from __future__ import annotations

import threading
import time
from abc import abstractmethod
from collections.abc import Sequence

from infra.backends.base import Backend, JobInfo, JobState


class PolledBackend(Backend):
    """A backend whose job states come from a cache refreshed once per poll interval."""

    def __init__(self, poll_interval_s: float) -> None:
        """Start with nothing watched; refresh at most every `poll_interval_s` seconds."""
        self.poll_interval_s = poll_interval_s
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._watched: dict[str, JobInfo | None] = {}
        """Watched jobs and their last known state (None: not seen yet, or to be re-read)."""
        self._refreshed = 0.0

    @abstractmethod
    def _refresh(self) -> None:
        """Read the state of every unfinished watched job with batched calls; store it."""

    @abstractmethod
    def _unknown(self, job_id: str) -> str:
        """Reason given for a job the cluster does not list (yet)."""

    def status(self, job_id: str) -> JobInfo:
        """Return the job's state from the shared cache (refreshed once per poll interval)."""
        return self.status_many([job_id])[job_id]

    def status_many(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """Return the state of many jobs, refreshing the whole cache at most once."""
        with self._lock:
            for job_id in job_ids:
                self._watched.setdefault(job_id, None)
            stale = time.monotonic() - self._refreshed >= self.poll_interval_s
        if stale and self._refresh_lock.acquire(blocking=False):
            try:
                self._refresh()
            finally:
                self._refresh_lock.release()
        elif stale:  # another thread refreshes: use its result
            with self._refresh_lock:
                pass
        with self._lock:
            return {
                job_id: self._watched.get(job_id)
                or JobInfo(JobState.UNKNOWN, reason=self._unknown(job_id))
                for job_id in job_ids
            }

    def _open_ids(self) -> list[str]:
        """Watched jobs not known to be finished."""
        with self._lock:
            return [
                j for j, info in self._watched.items() if info is None or not info.state.finished
            ]

    def forget(self, job_id: str) -> None:
        """Stop watching a job whose outcome has been read."""
        with self._lock:
            self._watched.pop(job_id, None)
