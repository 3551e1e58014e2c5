"""Claims: which flow run drives a run, and the adoption of runs whose claim died.

One vocabulary, used throughout: a **claim** is a Prefect flow run id written into a
run's `prefect_flow_run_id` (`claim_as` where it is passed on). The flow run **holds**
its claim while its process lives: a PostgreSQL session-level advisory lock on that id
(`hold_claim`). When the process dies, its connection closes and PostgreSQL releases the
lock: a claim whose lock can be taken is **dead**. The next flow run of the pipeline
adopts the dead claim's runs, PENDING and in flight alike, and drives each on from where
it stopped (`RunExecutor` resumes it: a running job is watched again, a finished one is
collected, a job the backend does not know is failed and retried if allowed), so
nothing is lost and nothing runs twice.

Locks are per database session: this needs direct connections to PostgreSQL (or a
pooler in session mode), not a transaction-mode pooler.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_ops_db.models import UNFINISHED_STATUSES

CLAIM_LOCK_SPACE = 0x6363_6174  # "ccat": the first key of our advisory locks
_LOCK = text("SELECT pg_advisory_lock(:space, hashtext(:claim))")
_TRY = text("SELECT pg_try_advisory_lock(:space, hashtext(:claim))")
_UNLOCK = text("SELECT pg_advisory_unlock(:space, hashtext(:claim))")


@contextmanager
def hold_claim(engine: Engine, claim: str) -> Iterator[None]:
    """Hold `claim`'s lock on a dedicated connection while the block runs."""
    with engine.connect() as connection:
        connection.execute(_LOCK, {"space": CLAIM_LOCK_SPACE, "claim": claim})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(_UNLOCK, {"space": CLAIM_LOCK_SPACE, "claim": claim})
            connection.commit()


def dead_claims(session: Session, claims: Iterable[str]) -> set[str]:
    """Return the claims whose process is gone (their lock is free); takes no lock."""
    dead = set()
    connection = session.connection()
    for claim in sorted(set(claims)):  # distinct flow runs: a handful
        params = {"space": CLAIM_LOCK_SPACE, "claim": claim}
        if connection.execute(_TRY, params).scalar_one():
            connection.execute(_UNLOCK, params)
            dead.add(claim)
    return dead


def live_other_claims(session: Session, pipeline: str, me: str) -> set[str]:
    """Return the live flow runs, other than `me`, that own unfinished runs of `pipeline`.

    A flow run holds slots of its pipeline's steps only while it owns unfinished runs
    of them, so none left means no live process holds any of those slots.
    """
    run = m.ExecutedReductionStep
    claims = session.scalars(
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
    found = {c for c in claims if c}
    return found - dead_claims(session, found)


def claims_of_unfinished_runs(
    session: Session, pipelines: Sequence[str] | None = None
) -> list[str]:
    """Return the claims (flow run ids) of PENDING or in-flight runs (to check in Prefect)."""
    query = (
        select(m.ExecutedReductionStep.prefect_flow_run_id)
        .join(m.ExecutedReductionStep.reduction_step)
        .join(m.ReductionStep.pipeline)
        .where(
            m.ExecutedReductionStep.status.in_(UNFINISHED_STATUSES),
            m.ExecutedReductionStep.prefect_flow_run_id.is_not(None),
        )
        .distinct()
    )
    if pipelines is not None:
        query = query.where(m.Pipeline.name.in_(list(pipelines)))
    return sorted(o for o in session.scalars(query) if o)
