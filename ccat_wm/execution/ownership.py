"""Which process owns a claimed run, and the adoption of runs whose owner died.

A flow run claims its runs by writing its Prefect flow run id into
`prefect_flow_run_id`, and holds, for as long as its process lives, a PostgreSQL
session-level advisory lock on that id (`hold_ownership`). When the process dies, its
connection closes and PostgreSQL releases the lock: an owner whose lock can be taken is
dead. The next flow run of the pipeline adopts the dead owner's runs, PENDING and in
flight alike, and drives each on from where it stopped (`RunExecutor` resumes it:
a running job is watched again, a finished one is collected, a job the backend does not
know is failed and retried if allowed), so nothing is lost and nothing runs twice.

Locks are per database session: this needs direct connections to PostgreSQL (or a
pooler in session mode), not a transaction-mode pooler.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_ops_db.models import UNFINISHED_STATUSES

OWNER_LOCK_SPACE = 0x6363_6174  # "ccat": the first key of our advisory locks
_LOCK = text("SELECT pg_advisory_lock(:space, hashtext(:owner))")
_TRY = text("SELECT pg_try_advisory_lock(:space, hashtext(:owner))")
_UNLOCK = text("SELECT pg_advisory_unlock(:space, hashtext(:owner))")


@contextmanager
def hold_ownership(engine: Engine, owner: str) -> Iterator[None]:
    """Hold `owner`'s lock on a dedicated connection while the block runs."""
    with engine.connect() as connection:
        connection.execute(_LOCK, {"space": OWNER_LOCK_SPACE, "owner": owner})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(_UNLOCK, {"space": OWNER_LOCK_SPACE, "owner": owner})
            connection.commit()


def dead_owners(session: Session, owners: Iterable[str]) -> set[str]:
    """Return the owners whose process is gone (their lock is free); takes no lock."""
    dead = set()
    connection = session.connection()
    for owner in sorted(set(owners)):  # distinct flow runs: a handful
        params = {"space": OWNER_LOCK_SPACE, "owner": owner}
        if connection.execute(_TRY, params).scalar_one():
            connection.execute(_UNLOCK, params)
            dead.add(owner)
    return dead


def live_other_owners(session: Session, pipeline: str, me: str) -> set[str]:
    """Return the live flow runs, other than `me`, that own unfinished runs of `pipeline`.

    A flow run holds slots of its pipeline's steps only while it owns unfinished runs
    of them, so none left means no live process holds any of those slots.
    """
    run = m.ExecutedReductionStep
    owners = session.scalars(
        select(run.prefect_flow_run_id)
        .distinct()
        .join(run.reduction_step)
        .join(m.ReductionStep.pipeline)
        .where(
            m.Pipeline.name == pipeline,
            run.status.in_(UNFINISHED_STATUSES),
            run.prefect_flow_run_id.is_not(None),
            run.prefect_flow_run_id != me,
        )
    ).all()
    found = {o for o in owners if o}
    return found - dead_owners(session, found)
