"""Slots of a step's Prefect global concurrency limit, pooled per flow run.

A step's `max_concurrent_runs` is a Prefect global concurrency limit
(`ccat-step:<pipeline>:<step>`), so it holds across flow runs. Acquiring and releasing a
slot for every sub-group costs two API calls plus a lease-renewal thread each, which
was measured at 80-400 ms per run on this machine's Prefect server. A flow run therefore
keeps the slots it acquired for a step in a pool while it still has runs of that step
to start: a finishing run hands its slot to the next one without an API call, and a slot
goes back to Prefect as soon as the flow run has fewer runs of the step left than slots
held (and all of them when the flow run ends). Slots are leases, acquired strictly (a
missing limit is an error) and renewed by one thread per process; if the process dies,
the renewals stop and Prefect frees the slots when the leases expire (`LEASE_S`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.concurrency._asyncio import AcquireConcurrencySlotTimeoutError
from prefect.concurrency._sync import (
    acquire_concurrency_slots_with_lease,
    release_concurrency_slots_with_lease,
)

LEASE_S = 120.0
"""Lease of a slot; renewed every third of it while the process lives."""
WAIT_S = 2.0
"""Longest single wait on the server before looking again for a slot freed locally."""


class _Renewer:
    """One daemon thread renewing every lease this process holds."""

    def __init__(self) -> None:
        self._leases: set[UUID] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def track(self, lease: UUID) -> None:
        with self._lock:
            self._leases.add(lease)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="ccat-slot-leases", daemon=True
                )
                self._thread.start()

    def untrack(self, lease: UUID) -> None:
        with self._lock:
            self._leases.discard(lease)

    def _loop(self) -> None:
        stop = threading.Event()
        while not stop.wait(LEASE_S / 3):
            with self._lock:
                leases = list(self._leases)
            with get_client(sync_client=True) as client:
                for lease in leases:
                    with contextlib.suppress(Exception):  # an expired lease was released already
                        client.renew_concurrency_lease(lease, LEASE_S)


_RENEWER = _Renewer()


class StepSlots:
    """The slots one flow run holds of one step's limit, shared by its task threads."""

    def __init__(self, limit_name: str, remaining: int) -> None:
        """`remaining`: runs of the step this flow run may still start."""
        self.limit_name = limit_name
        self.remaining = remaining
        self._free: list[UUID] = []
        self._held: set[UUID] = set()
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the body; it returns to the pool (or to Prefect) afterwards."""
        lease = self._take()
        try:
            yield
        finally:
            self._give_back(lease)

    def _take(self) -> UUID:
        while True:
            with self._cond:
                if self._free:
                    return self._free.pop()
            try:
                response = acquire_concurrency_slots_with_lease(
                    [self.limit_name], 1, timeout_seconds=WAIT_S, lease_duration=LEASE_S,
                    strict=True,
                )  # fmt: skip
            except AcquireConcurrencySlotTimeoutError:
                continue  # full: look again for a slot a run of this flow run gave back
            with self._cond:
                self._held.add(response.lease_id)
            _RENEWER.track(response.lease_id)
            return response.lease_id

    def _give_back(self, lease: UUID) -> None:
        with self._cond:
            self.remaining -= 1
            surplus = len(self._held) > max(self.remaining, 0)
            if surplus:
                self._held.discard(lease)
            else:
                self._free.append(lease)
                self._cond.notify()
        if surplus:
            self._release(lease)

    def skip(self) -> None:
        """Count a run of the step that will not start (not due); free a surplus slot."""
        with self._cond:
            self.remaining -= 1
            surplus = (
                self._free.pop()
                if len(self._held) > max(self.remaining, 0) and self._free
                else None
            )
            if surplus is not None:
                self._held.discard(surplus)
        if surplus is not None:
            self._release(surplus)

    def close(self) -> None:
        """Give every slot still held back to Prefect."""
        with self._cond:
            leases, self._held, self._free = list(self._held), set(), []
        for lease in leases:
            self._release(lease)

    @staticmethod
    def _release(lease: UUID) -> None:
        _RENEWER.untrack(lease)
        with contextlib.suppress(Exception):  # expired already: Prefect freed it
            release_concurrency_slots_with_lease(lease)


_POOLS: dict[tuple[str, str], StepSlots] = {}
_POOLS_LOCK = threading.Lock()


def open_pool(flow_run: str, step: str, limit_name: str, remaining: int) -> StepSlots:
    """Create the pool of a step for a flow run (or add runs to an existing one)."""
    with _POOLS_LOCK:
        pool = _POOLS.get((flow_run, step))
        if pool is None:
            pool = _POOLS[(flow_run, step)] = StepSlots(limit_name, remaining)
        else:
            with pool._cond:
                pool.remaining += remaining
        return pool


def pool_for(flow_run: str, step: str, limit_name: str) -> StepSlots:
    """Return the pool of a step in this flow run (a lone task: a pool that keeps nothing)."""
    with _POOLS_LOCK:
        return _POOLS.get((flow_run, step)) or StepSlots(limit_name, 0)


def close_pools(flow_run: str) -> None:
    """Release every slot a flow run still holds."""
    with _POOLS_LOCK:
        pools = [p for (run, _), p in _POOLS.items() if run == flow_run]
        for key in [k for k in _POOLS if k[0] == flow_run]:
            del _POOLS[key]
    for pool in pools:
        pool.close()
