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
the renewals stop and a Prefect server frees the slots when the leases expire
(`LEASE_S`, plus its repossessor's 15-second loop). Prefect's ephemeral server (a
`ccat-wm run` without PREFECT_API_URL) runs no repossessor and keeps its leases in the
memory of a process that dies with the command: there, a flow run that finds no other
live flow run of its pipeline gives the slots of dead ones back itself
(`reclaim_dead_slots`). A flow run never asks Prefect for more slots than the step's
limit; while other flow runs hold them it asks again with a backoff of up to a second,
taking one of its own meanwhile if one comes back. Runs that the flow submits ahead of
their task runs (a wave on SLURM) get their slots in one lease (`StepSlots.reserve`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.settings import get_current_settings

from ccat_wm.errors import ConfigurationError
from ccat_wm.execution.stopping import StopRequestedError, stop_requested
from ccat_wm.settings import load_settings

LEASE_S = load_settings().slot_lease_s
"""Lease of a slot (`CCAT_WM_SLOT_LEASE_S`, default and least 60 s: Prefect's shortest);
renewed every third of it while the process lives. With the default, a killed process's
slots are free at most a minute and a quarter later."""
MAX_BACKOFF_S = 1.0
"""Longest pause before asking Prefect again for a slot held by another flow run."""
HTTP_LOCKED = 423
"""Prefect's answer when a limit has no free slot."""
MAX_ACQUIRING = 4
"""Requests for new slots one pool has in flight at once (a wide step's threads would
otherwise all ask at the same moment: 500 at once overran the Prefect server here)."""
TRANSIENT_GIVE_UP_S = 600.0
"""How long a slot request keeps retrying a Prefect server that fails (5xx, connection
reset) before the run's task fails."""


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


class SlotUse:
    """One use of a slot; `done` is False when its run will make another attempt.

    `kept`: the run was left in flight (the command is stopping) with its job still
    running, so its slot is never handed back by this process (its lease lapses once
    the process is gone; the flow run that adopts the run takes a slot of its own).
    """

    __slots__ = ("done", "kept")

    def __init__(self) -> None:
        self.done = True
        self.kept = False


class StepSlots:
    """The slots one flow run holds of one step's limit, shared by its task threads.

    A lease holds one slot, or several when `reserve` took slots for runs submitted ahead
    (one API call for all of them); a lease goes back to Prefect whole, once none of its
    slots is in use and the flow run has fewer runs of the step left than slots held.
    """

    def __init__(self, limit_name: str, remaining: int, limit: int) -> None:
        """`remaining`: runs of the step this flow run may still start; `limit`: its size."""
        self.limit_name = limit_name
        self.remaining = remaining
        self.limit = max(1, limit)
        self._free: Counter[UUID] = Counter()
        """Free slots per held lease (leases with none are not listed)."""
        self._held: dict[UUID, int] = {}
        """Held leases and how many slots each holds."""
        self._held_slots = 0
        """Their sum, kept: every run's give-back reads it."""
        self._reserved: dict[int, UUID] = {}
        """Slots `reserve` took for runs (by run id) that their task runs will use."""
        self._cond = threading.Condition()
        self._acquiring = threading.BoundedSemaphore(MAX_ACQUIRING)
        self._kept: set[UUID] = set()
        """Leases with a slot of a run left in flight: never released by this process."""

    @contextlib.contextmanager
    def slot(self, run_id: int | None = None) -> Iterator[SlotUse]:
        """Hold one slot for the body; it returns to the pool (or to Prefect) afterwards.

        The slot is the one `reserve` took for `run_id`, if any, else a pooled or new one.
        A body that sets `done = False` (its run gets another attempt) is not counted as
        one of the runs the flow run still has to start.
        """
        with self._cond:
            lease = self._reserved.pop(run_id, None) if run_id is not None else None
        if lease is None:
            lease = self._take()
        use = SlotUse()
        try:
            yield use
        finally:
            if use.kept:
                with self._cond:
                    self._kept.add(lease)
            else:
                self._give_back(lease, done=use.done)

    def reserve(self, run_ids: list[int]) -> list[int]:
        """Take slots for as many of these runs as the limit allows now, in one lease.

        Returns the runs that got one (the first ones); their task runs use it through
        `slot(run_id)`. Asks Prefect for fewer slots, halving, while other flow runs hold
        too many for all of them.
        """
        with self._cond:
            wanted = min(len(run_ids), self.limit - self._held_slots)
        lease = None
        while wanted > 0 and lease is None:
            with self._acquiring:
                lease = self._acquire(wanted)
            if lease is None:
                wanted //= 2
        if lease is None:
            return []
        with self._cond:
            self._held[lease] = wanted
            self._held_slots += wanted
            self._reserved.update(dict.fromkeys(run_ids[:wanted], lease))
        _RENEWER.track(lease)
        return run_ids[:wanted]

    def _take(self) -> UUID:
        """Take a free pooled slot, else a new one from Prefect (never beyond the limit)."""
        backoff = 0.05
        while True:
            if stop_requested():  # the command is stopping: this run will not start
                raise StopRequestedError("not started: the command was stopped")
            with self._cond:
                lease = next(iter(self._free), None)  # leases with a free slot only
                if lease is not None:
                    self._free[lease] -= 1
                    if not self._free[lease]:
                        del self._free[lease]
                    return lease
                if self._held_slots >= self.limit:  # all ours and in use: one returns
                    self._cond.wait(timeout=MAX_BACKOFF_S)
                    continue
            with self._acquiring:
                lease = self._acquire(1)
            if lease is not None:
                with self._cond:
                    self._held[lease] = 1
                    self._held_slots += 1
                _RENEWER.track(lease)
                return lease
            with self._cond:  # other flow runs hold the slots: wait, or take one of ours
                self._cond.wait(timeout=backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _acquire(self, slots: int) -> UUID | None:
        """`slots` slots from Prefect as one lease; None while the limit has fewer free.

        A server error or a dropped connection is retried with a backoff (for up to
        `TRANSIENT_GIVE_UP_S`): an overloaded server must not fail the runs.
        """
        deadline = time.monotonic() + TRANSIENT_GIVE_UP_S
        backoff = 0.1
        while True:
            try:
                with get_client(sync_client=True) as client:
                    response = client.increment_concurrency_slots_with_lease(
                        [self.limit_name], slots, "concurrency", LEASE_S
                    )
                break
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code == HTTP_LOCKED:
                    return None
                if exc.response.status_code < 500 or time.monotonic() > deadline:
                    raise
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
        body = response.json()
        if not body.get("limits"):
            raise ConfigurationError(
                f"Prefect global concurrency limit {self.limit_name!r} does not exist; "
                "it is created when a pipeline flow run starts (ensure-concurrency-limits)"
            )
        return UUID(str(body["lease_id"]))

    def _give_back(self, lease: UUID, *, done: bool = True) -> None:
        with self._cond:
            self.remaining -= 1 if done else 0
            self._free[lease] += 1
            surplus = self._surplus()
            self._cond.notify()
        for unused in surplus:
            self._release(unused)

    def _surplus(self) -> list[UUID]:
        """Drop (to release) whole leases with no slot in use while more are held than needed.

        Called with the condition held. Slots reserved for runs count as in use.
        """
        needed = max(self.remaining, 0)
        if self._held_slots <= needed:  # most of a wave: nothing to look at
            return []
        dropped = []
        for lease, size in list(self._held.items()):
            if self._free[lease] == size and self._held_slots - size >= needed:
                del self._held[lease], self._free[lease]
                self._held_slots -= size
                dropped.append(lease)
        return dropped

    def skip(self) -> None:
        """Count a run of the step that will not start (not due); free a surplus slot."""
        with self._cond:
            self.remaining -= 1
            surplus = self._surplus()
        for unused in surplus:
            self._release(unused)

    def close(self) -> None:
        """Give every slot still held back to Prefect, but those of runs left in flight."""
        with self._cond:
            leases = [lease for lease in self._held if lease not in self._kept]
            self._held, self._free, self._reserved = {}, Counter(), {}
            self._held_slots = 0
        for lease in leases:
            self._release(lease)

    @staticmethod
    def _release(lease: UUID) -> None:
        _RENEWER.untrack(lease)
        with contextlib.suppress(Exception), get_client(sync_client=True) as client:
            client.release_concurrency_slots_with_lease(lease)  # fails if expired: freed


def uses_ephemeral_server() -> bool:
    """Tell whether this process talks to Prefect's ephemeral server (no PREFECT_API_URL)."""
    return get_current_settings().api.url is None


def reclaim_dead_slots(limit_names: list[str]) -> None:
    """Count every slot of these limits free: only when no live process can hold one.

    The caller checks that: no other flow run of the pipeline is alive (the limits are
    the pipeline's own), and the server is ephemeral, where no lease of a dead process
    would ever expire. On a server with a repossessor this would double-count (the dead
    leases expire later and are subtracted again), so it is not used there.
    """
    update = GlobalConcurrencyLimitUpdate(active_slots=0)
    with get_client(sync_client=True) as client:
        for name in limit_names:
            client.update_global_concurrency_limit(name, update)


_POOLS: dict[tuple[str, str], StepSlots] = {}
_POOLS_LOCK = threading.Lock()


def open_pool(flow_run: str, step: str, limit_name: str, remaining: int, limit: int) -> StepSlots:
    """Create the pool of a step for a flow run (or add runs to an existing one)."""
    with _POOLS_LOCK:
        pool = _POOLS.get((flow_run, step))
        if pool is None:
            pool = _POOLS[(flow_run, step)] = StepSlots(limit_name, remaining, limit)
        else:
            with pool._cond:
                pool.remaining += remaining
        return pool


def pool_for(flow_run: str, step: str, limit_name: str) -> StepSlots:
    """Return the pool of a step in this flow run (a lone task: a pool that keeps nothing)."""
    with _POOLS_LOCK:
        return _POOLS.get((flow_run, step)) or StepSlots(limit_name, 0, 1)


def close_pools(flow_run: str) -> None:
    """Release every slot a flow run still holds."""
    with _POOLS_LOCK:
        pools = [p for (run, _), p in _POOLS.items() if run == flow_run]
        for key in [k for k in _POOLS if k[0] == flow_run]:
            del _POOLS[key]
    for pool in pools:
        pool.close()
