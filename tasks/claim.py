"""A pipeline flow run's claim on its ops DB runs: held while it runs, let go when it ends.

A flow run claims its wave's runs under its Prefect flow run id (their
`prefect_flow_run_id`, the claim) and owns them while its process lives: it holds a
PostgreSQL advisory lock on that id (`ccat_wm.execution.claims`). When the process
dies the lock is free and the pipeline's next flow run adopts the runs. When the flow
run fails before it could start its wave (its tasks could not be created, the Prefect
server went away), the runs it claimed but never started are cancelled with the reason,
so that none stays PENDING for a flow run that will never run it; runs in flight are
left to be adopted. `cancel_claimed_runs` stops the runs of a flow run cancelled in
Prefect (the flow's cancellation hook, or a trigger tick for a flow run whose process
could not).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger

from ccat_wm.errors import describe
from ccat_wm.execution.claims import claims_of_unfinished_runs, hold_claim
from ccat_wm.execution.control import CancelResult, abandon_unstarted_runs, cancel_flow_run_runs
from tasks.runs import executor


@contextmanager
def claimed_runs(claim_as: str) -> Iterator[None]:
    """Own the runs claimed as `claim_as` while the block runs.

    On an error, the unstarted ones are cancelled (saying why) and the error re-raised.
    """
    engine = executor().engine
    with hold_claim(engine, claim_as):
        try:
            yield
        except Exception as exc:  # the flow could not run its wave: no run waits for it
            with executor().session() as session, session.begin():
                abandoned = abandon_unstarted_runs(session, claim_as, describe(exc))
            if abandoned:
                get_run_logger().error("%s run(s) never started were cancelled: %s", abandoned, exc)
            raise


def cancel_claimed_runs(claim_as: str) -> list[CancelResult]:
    """Cancel the unfinished runs claimed as `claim_as`, with their backend jobs."""
    with executor().session() as session:
        return cancel_flow_run_runs(session, claim_as)


def unfinished_claims() -> list[str]:
    """Return the claims (flow run ids) that hold unfinished runs of any pipeline."""
    with executor().session() as session:
        return claims_of_unfinished_runs(session)
