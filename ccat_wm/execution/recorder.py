"""The runner's writes to the ops DB: status moves in short transactions, and failures.

Every move goes through `transition()`, so a person's cancel (CANCELLED) wins over the
next move. A caller that holds a connection for several moves passes it; otherwise a
move takes a connection of its own for its one commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

from ccat_ops_db.models import UNRETRYABLE_FAILURES, FailureKind, RunStatus
from ccat_wm.db import Db
from ccat_wm.execution.collect import (
    OutputFile,
    checksum_outputs,
    preserve_failed_logs,
    register_products,
)
from ccat_wm.execution.context import RunContext
from ccat_wm.execution.lifecycle import TransitionError, transition
from ccat_wm.execution.outcome import RunOutcome, Unrecorded, run_log, who
from ccat_wm.execution.sizing import resources_json
from ccat_wm.execution.staging import record_copies
from infra.backends import Resources

S = RunStatus


class RunRecorder:
    """Moves runs and records failed attempts in the ops DB."""

    def __init__(self, engine: Engine) -> None:
        """Record into the ops DB behind `engine`."""
        self.engine = engine

    @contextmanager
    def transaction(self, conn: Connection | None = None) -> Iterator[Connection]:
        """Open a transaction on `conn` (the caller's checkout), or on a connection of its own."""
        if conn is None:
            with self.engine.begin() as own:
                yield own
        else:
            with conn.begin():
                yield conn

    @staticmethod
    def move(
        db: Db, run_id: int, target: RunStatus, *, expected: RunStatus, **values: object
    ) -> None:
        """Move a run from `expected` to `target` in the caller's transaction."""
        transition(db, run_id, target, expected=expected, **values)

    def move_now(
        self, run_id: int, target: RunStatus, *, expected: RunStatus, **values: object
    ) -> None:
        """Move a run in a transaction of its own."""
        with self.transaction() as conn:
            self.move(conn, run_id, target, expected=expected, **values)

    @staticmethod
    def write_unrecorded(db: Connection, run_id: int, unrecorded: Unrecorded) -> RunStatus:
        """Write what an attempt did since its last commit, in the caller's transaction.

        Each move is its own UPDATE (the status history and attempt record see each);
        raises TransitionError if someone moved the run meanwhile (a person's cancel).
        Returns the run's status now.
        """
        record_copies(db, unrecorded.copies)
        for status, values in unrecorded.moves:
            transition(db, run_id, status, expected=unrecorded.recorded, **values)
            unrecorded.recorded = status
        unrecorded.copies, unrecorded.moves = [], []
        return unrecorded.recorded

    def write_unrecorded_now(self, run_id: int, unrecorded: Unrecorded) -> None:
        """Write what an attempt did since its last commit, in a transaction of its own."""
        if unrecorded.moves or unrecorded.copies:
            with self.transaction() as conn:
                self.write_unrecorded(conn, run_id, unrecorded)

    def fail(
        self,
        ctx: RunContext,
        attempt: int,
        reason: str,
        *,
        expected: RunStatus = S.COLLECTING_RESULTS,
        captured: list[OutputFile] | None = None,
        conn: Connection | None = None,
        job_id: str | None = None,
        kind: FailureKind,
        requested: Resources | None = None,
        unrecorded: Unrecorded | None = None,
    ) -> RunOutcome:
        """Keep the attempt's logs as LOG products and mark the run FAILED with `reason`.

        `requested`: what an attempt that failed before its submission asked for (a
        submitted one's request is recorded already). `unrecorded`: what the attempt did
        since its last commit, written first (the run moves to FAILED from its status
        then). A failure of a kind no retry can mend ends the run's retries.
        """
        moved, unpreserved = preserve_failed_logs(ctx.layout, attempt)
        if unpreserved:
            reason = "; ".join([reason, *unpreserved])
        records = checksum_outputs([*(captured or []), *moved])
        values: dict[str, object] = {"failure_reason": reason, "failure_kind": kind}
        if requested is not None:
            values["requested_resources"] = resources_json(requested)
        try:
            with self.transaction(conn) as db:
                if unrecorded is not None:
                    expected = self.write_unrecorded(db, ctx.run_id, unrecorded)
                register_products(db, ctx.run_id, records)
                self.move(db, ctx.run_id, S.FAILED, expected=expected, **values)
        except TransitionError as exc:
            return RunOutcome(ctx.run_id, exc.current or S.CANCELLED, attempt, str(exc))
        final = kind in UNRETRYABLE_FAILURES
        run_log().warning(
            "%s: attempt %s of %s%s failed (%s%s): %s", who(ctx), attempt + 1,
            ctx.max_retries + 1, f" (job {job_id})" if job_id else "", kind.value,
            ", not retried: no retry can mend it" if final else "", reason,
        )  # fmt: skip
        return RunOutcome(
            ctx.run_id, S.FAILED, attempt, reason,
            log_path=ctx.layout.attempt_log(attempt), attempts=ctx.max_retries + 1, final=final,
        )  # fmt: skip
