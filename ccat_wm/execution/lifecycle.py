"""Run status transitions as data (docs/concepts.md section 2), and the one function to apply them.

`transition()` updates `WHERE status IN (allowed sources)` and raises when no row
matched, so two processes can never both move a run (no double submission), and a
person's cancel wins over a task that is about to move the run on.

Beyond the design's table, a run may also fail while STAGING_DATA (an input cannot be
staged) or SUBMITTED (the backend lost or rejected the job): both are failures a retry
can cure.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, cast

from sqlalchemy import Table, Update, bindparam, func, select, update

from ccat_ops_db.models import ExecutedReductionStep, RunStatus
from ccat_wm.db import Db, connection_of
from ccat_wm.errors import CcatWmError

S = RunStatus
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    S.STAGING_DATA: frozenset({S.PENDING}),
    S.SUBMITTED: frozenset({S.STAGING_DATA}),
    S.RUNNING: frozenset({S.SUBMITTED}),
    S.COLLECTING_RESULTS: frozenset({S.RUNNING}),
    S.COMPLETED: frozenset({S.COLLECTING_RESULTS}),
    S.FAILED: frozenset({S.STAGING_DATA, S.SUBMITTED, S.RUNNING, S.COLLECTING_RESULTS}),
    S.PENDING: frozenset({S.FAILED}),
    S.CANCELLED: frozenset(
        {S.PENDING, S.STAGING_DATA, S.SUBMITTED, S.RUNNING, S.COLLECTING_RESULTS}
    ),
}
"""For each target status, the statuses a run may move to it from."""
FINAL = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED})


class TransitionError(CcatWmError):
    """A run was not in a status it may move from (someone else moved it first)."""

    def __init__(self, run_id: int, current: RunStatus | None, target: RunStatus) -> None:
        """Name the run, its actual status and the refused target."""
        self.run_id, self.current, self.target = run_id, current, target
        if current is None:
            message = f"run {run_id} does not exist"
        else:
            allowed = ", ".join(sorted(TRANSITIONS[target]))
            message = f"run {run_id} is {current}; it can move to {target} only from {allowed}"
        super().__init__(message)


def transition(
    session: Db,
    run_id: int,
    target: RunStatus,
    *,
    expected: RunStatus | None = None,
    **values: Any,
) -> None:
    """Move run `run_id` to `target` (and set `values`) if its status allows it, else raise.

    `expected` narrows the allowed source statuses to one. Does not commit.
    """
    sources = TRANSITIONS[target]
    if expected is not None:
        sources = sources & {expected}
    statement = _update(target, tuple(sorted(sources)), tuple(sorted(values)))
    params = {"run_id": run_id, **{f"v_{k}": v for k, v in values.items()}}
    matched = connection_of(session).execute(statement, params).first()
    if matched is None:
        raise TransitionError(run_id, current_status(session, run_id), target)


@lru_cache(maxsize=128)
def _update(target: RunStatus, sources: tuple[RunStatus, ...], keys: tuple[str, ...]) -> Update:
    """Build the UPDATE of one transition (once per target, sources and set columns)."""
    run = ExecutedReductionStep
    table = cast(Table, run.__table__)
    changes: dict[str, Any] = {"status": target} | {k: bindparam(f"v_{k}") for k in keys}
    if target is S.STAGING_DATA:
        changes.setdefault("started_at", func.coalesce(table.c.started_at, func.now()))
    if target in FINAL:
        changes.setdefault("finished_at", func.now())
    if target is S.PENDING:
        changes.setdefault("retry_count", table.c.retry_count + 1)
        changes.setdefault("finished_at", None)
    # One source (every move of the executor): a plain comparison; an IN list would be
    # rendered again for every execution ("expanding" parameter).
    source = table.c.status == sources[0] if len(sources) == 1 else table.c.status.in_(sources)
    return (
        update(table)
        .where(table.c.id == bindparam("run_id"), source)
        .values(changes)
        .returning(table.c.id)
    )


def current_status(session: Db, run_id: int) -> RunStatus | None:
    """Return the run's status as the DB has it now."""
    return connection_of(session).scalar(_STATUS, {"run_id": run_id})


_STATUS = select(ExecutedReductionStep.status).where(
    ExecutedReductionStep.id == bindparam("run_id")
)
