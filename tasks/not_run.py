"""Task runs of follow-ups that have no run: their upstream failed, or they are not due.

A follow-up's task run waits for the items upstream of it in the wave and then asks
whether its sub-group is due. When a sub-group upstream of it failed it is not run: it
ends Cancelled, named `UpstreamFailed`, with the failed sub-groups in its message, so
that the Prefect UI counts it apart from the runs that failed (Failed) and completed
(Completed), as the flow run's message does. Prefect itself leaves a task run waiting for
a Cancelled one Pending (`NotReady`) for ever; the flow ends those `UpstreamFailed` too
(`end_not_ready`). A follow-up with nothing to do ends Completed, named `NotDue`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import State
from prefect.exceptions import ObjectNotFound
from prefect.futures import PrefectFuture
from prefect.states import Cancelled, Completed

from ccat_wm.execution.failures import task_run_name
from ccat_wm.execution.waves import WaveItem

UPSTREAM_FAILED = "UpstreamFailed"
"""Name of the Cancelled state of a follow-up not run because a sub-group upstream failed."""
NOT_DUE = "NotDue"
"""Name of the Completed state of a follow-up that had nothing to do once its upstream ran."""
NOT_READY = "NotReady"
"""Prefect's name of the Pending state of a task run whose upstream did not complete."""
LISTED_UPSTREAM = 3
RECORDED_WITHIN_S = 30.0
"""How long the server may take to record a task run that never started (it records task
run states from events, in batches)."""


def upstream_failed(name: str, failed: Sequence[str], how: str = "failed") -> State[Any]:
    """Return the Cancelled `UpstreamFailed` state of follow-up `name`, naming `failed`."""
    listed = ", ".join(failed[:LISTED_UPSTREAM])
    more = f" and {len(failed) - LISTED_UPSTREAM} more" if len(failed) > LISTED_UPSTREAM else ""
    return Cancelled(
        name=UPSTREAM_FAILED,
        message=f"{name}: not run, because {listed}{more} upstream of it {how}; it runs once "
        "they complete (press Retry on the flow run)",
    )


def not_run(step: str, key: str, blocked: Sequence[tuple[str, str]]) -> State[Any]:
    """End a follow-up's task run that has no run: `blocked` by failures upstream, or not due."""
    name = task_run_name(step, key)
    if not blocked:
        get_run_logger().info("not due after its upstream runs; nothing to run")
        return Completed(name=NOT_DUE, message=f"{name}: not due after its upstream runs")
    state = upstream_failed(name, [task_run_name(s, k) for s, k in blocked])
    get_run_logger().info(state.message)
    return state


def _roots(items: Sequence[WaveItem], states: Sequence[State[Any]], index: int) -> list[int]:
    """Return the items upstream of item `index` (through those not run) that did not complete."""
    seen: set[int] = set()
    roots: set[int] = set()
    frontier = list(items[index].upstream)
    while frontier:
        i = frontier.pop()
        if i in seen or i >= len(states):
            continue
        seen.add(i)
        state = states[i]
        if (
            state.is_failed()
            or state.is_crashed()
            or (state.is_cancelled() and state.name != UPSTREAM_FAILED)
        ):
            roots.add(i)
        else:  # not run itself: look further up
            frontier.extend(items[i].upstream)
    return sorted(roots)


def end_not_ready(items: Sequence[WaveItem], futures: Sequence[PrefectFuture[Any]]) -> None:
    """End `UpstreamFailed` the task runs Prefect left Pending because their upstream was not run.

    Such a task run waited for a follow-up that was not run (Cancelled); Prefect never
    starts it. Its state is set through the API, naming the failures upstream of it.
    """
    states = [f.state for f in futures]
    stuck = [i for i, state in enumerate(states) if state.is_pending() and state.name == NOT_READY]
    if not stuck:
        return
    with get_client(sync_client=True) as client:
        for i in stuck:
            roots = _roots(items, states, i)
            names = [task_run_name(items[r].step, items[r].sub_group_key) for r in roots]
            failed = all(states[r].is_failed() or states[r].is_crashed() for r in roots)
            state = upstream_failed(
                task_run_name(items[i].step, items[i].sub_group_key), names,
                "failed" if failed else "did not complete",
            )  # fmt: skip
            _set_state(client, futures[i].task_run_id, state)


def _set_state(client: SyncPrefectClient, task_run_id: UUID, state: State[Any]) -> None:
    """Set a task run's state once the server has recorded its `NotReady`; never raise.

    The server records a task run from its events, in batches, and keeps a batch's
    fields only when its state is newer than the one it holds. Setting the state before
    the `NotReady` event is recorded would lose that event's fields, among them the task
    run's name (the UI would list it under the task's function name). So this waits,
    for `RECORDED_WITHIN_S`, until the server reads back `NotReady`, then sets the state
    and sees that it holds. Only what the UI shows is at stake (the flow run's message
    counts the sub-group already), so a server that does not take it in time is logged,
    not an error.
    """
    deadline = time.monotonic() + RECORDED_WITHIN_S
    problem = "the server did not record the task run in time"
    while time.monotonic() < deadline:
        try:
            current = client.read_task_run(task_run_id).state
            if current is not None and current.name == state.name:
                return
            if current is not None and current.name == NOT_READY:
                client.set_task_run_state(task_run_id, state, force=True)  # read back next
        except ObjectNotFound:  # not recorded yet (the client's 404 when reading)
            pass
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != httpx.codes.NOT_FOUND:
                problem = str(exc)
                break
        except Exception as exc:  # the API is away: the UI keeps Prefect's NotReady
            problem = str(exc)
            break
        time.sleep(0.5)
    get_run_logger().warning("could not mark task run %s %s: %s", task_run_id, state.name, problem)
