"""Drive a pipeline flow run from a command (`ccat-wm run`, `retry`, `demo`) and report it.

The command line is the top layer: it reads and writes the ops DB through the domain
(each step in a transaction of its own, committed before the flow starts), starts the
pipeline's flow in this process and waits for it. With `PREFECT_API_URL` unset the
flow uses Prefect's ephemeral local server, which the first flow run starts by itself.

Importing this module loads Prefect (through the flows): commands import it only when
they run a flow, so that `status` and `plan` start without it.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ccat_wm.execution.report import RunRow, count_failed_sub_groups, run_rows
from ccat_wm.execution.retry import RetryResult, retry_failed
from ccat_wm.lookup import pipeline_by_name
from flows.pipeline import StartedBy, flow_for


@dataclass(frozen=True, slots=True)
class FlowRunResult:
    """How a pipeline flow run ended, the runs it executed, and what is left failed."""

    flow_run_id: str
    state: str
    """Prefect's state name (Completed, Failed, ...)."""
    message: str
    runs: list[RunRow]
    failed_sub_groups: int = 0
    """Sub-groups of the pipeline whose retries are exhausted after this flow run."""

    @property
    def failed(self) -> bool:
        """True when the flow run did not complete."""
        return self.state != "Completed"


def run_pipeline(
    engine: Engine,
    pipeline: str,
    *,
    sub_groups: list[str] | None = None,
    force: bool = False,
    manual: bool = True,
    started_by: StartedBy = StartedBy.MANUAL,
) -> FlowRunResult:
    """Run the pipeline's flow now and wait for it; the pipeline is checked first."""
    with Session(engine) as session:  # unknown pipeline: a clear error before Prefect starts
        pipeline_by_name(session, pipeline)
    _quiet_ephemeral_server()
    state: Any = flow_for(pipeline)(
        pipeline=pipeline, sub_groups=sub_groups, force=force, manual=manual,
        started_by=started_by, return_state=True,
    )  # fmt: skip
    flow_run_id = str(state.state_details.flow_run_id)
    with Session(engine) as session, session.begin():
        runs = run_rows(session, flow_run=flow_run_id)
        failed = count_failed_sub_groups(session, pipeline, dt.datetime.now(dt.UTC))
    return FlowRunResult(
        flow_run_id, state.name or state.type.value, state.message or "", runs, failed
    )


def retry_pipeline(
    engine: Engine,
    pipeline: str,
    *,
    step: str | None = None,
    sub_groups: list[str] | None = None,
    run_ids: list[int] | None = None,
) -> tuple[RetryResult, FlowRunResult | None]:
    """Give the failed sub-groups a fresh retry budget, then run them (and what follows) now.

    The retry runs are committed (all or none) before the flow starts, so that the flow
    run finds them like any other PENDING runs.
    """
    with Session(engine) as session, session.begin():
        retried = retry_failed(
            session, pipeline, dt.datetime.now(dt.UTC),
            step=step, sub_groups=sub_groups or (), run_ids=run_ids or (),
        )  # fmt: skip
    if not retried.created:
        return retried, None
    return retried, run_pipeline(
        engine, pipeline, sub_groups=retried.follow_keys, started_by=StartedBy.RETRY
    )


def _quiet_ephemeral_server() -> None:
    """Keep the ephemeral server's log out of the output and its expired leases off disk.

    Without PREFECT_API_URL the first flow run starts a Prefect server as a child process
    that writes to this command's stderr; when the command ends soon after its last task
    run (a quick run, or a stop on Ctrl-C), the server's task-run recorder can still be
    flushing as it is stopped and prints a traceback of Prefect's own. It is nothing an
    operator can act on (the flow and task run states are recorded by then); only
    CRITICAL server messages are shown. An explicit PREFECT_SERVER_LOGGING_LEVEL wins.
    """
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
        remove_expired_leases()


def remove_expired_leases() -> int:
    """Remove the expired slot leases the ephemeral server left in its Prefect home.

    The ephemeral server lives only as long as a command; task runs' leases it had not
    yet taken back when the command ended stay as files under `PREFECT_HOME` (a server
    that runs on takes them back when they expire). A command that starts the ephemeral
    server removes those that expired, through Prefect's own lease storage; leases of a
    command still running elsewhere have not expired and stay.
    """
    import asyncio

    from prefect.server.concurrency.lease_storage.filesystem import (
        ConcurrencyLeaseStorage,
    )

    storage = ConcurrencyLeaseStorage()
    if not storage.storage_path.is_dir():
        return 0

    async def revoke() -> int:
        expired = await storage.read_expired_lease_ids(limit=10_000)
        for lease_id in expired:
            await storage.revoke_lease(lease_id)
        return len(expired)

    return asyncio.run(revoke())
