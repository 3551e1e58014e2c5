"""`ccat-wm logs`: a run's job log, by attempt, on any backend, optionally followed.

Every backend writes an attempt's stdout and stderr to the run's log file
(`<run dir>/logs/<step>-attempt-<N>.log`, N counting from 1 as `--attempt` does), on
the processing location's shared filesystem; where that file is not on this host
(a Kubernetes pod's log), the backend's own `logs()` is read instead. The files the
software itself wrote under `logs/` in a failed attempt are kept beside it, in
`<step>-attempt-<N>/`, and listed.

The log is in a directory the job could write: it is opened from the run's root without
following a link, read only if it is a regular file (a symlink or FIFO left in its
place is named, never read), and streamed in chunks, so a log of many gigabytes is
printed (or followed) with flat memory.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from ccat_ops_db import models as m
from ccat_ops_db.models import RunStatus
from ccat_wm.errors import CcatWmError
from ccat_wm.execution.backends import location_backend
from ccat_wm.execution.context import RunContext, load_run_context
from ccat_wm.execution.lifecycle import FINAL
from ccat_wm.execution.runtree import UnsafeEntryError, open_regular
from ccat_wm.execution.sizing import describe
from ccat_wm.settings import Settings
from infra.backends import BackendError

FOLLOW_POLL_S = 0.5
"""How often `--follow` looks for new output and for the run's end."""
_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class RunLog:
    """Where one attempt's log of a run is, and what else the attempt left."""

    run_id: int
    status: RunStatus
    attempt: int
    """0 = the first attempt (the run's `retry_count` during that attempt)."""
    attempts: int
    """Attempts so far: `retry_count + 1`."""
    path: Path
    extra: tuple[Path, ...]
    root: Path
    """The run's directory: the log is opened from there, following no link."""
    """Log files the software wrote itself in that attempt (kept when it failed)."""


def _load(engine: Engine, run_id: int) -> RunContext:
    with engine.connect() as conn, conn.begin():
        return load_run_context(conn, run_id)


def _locate(ctx: RunContext, attempt: int | None) -> RunLog:
    last = ctx.retry_count
    chosen = last if attempt is None else attempt - 1
    if not 0 <= chosen <= last:
        raise CcatWmError(
            f"run {ctx.run_id} has attempts 1..{last + 1} (1 is the first); got --attempt {attempt}"
        )
    layout = ctx.layout
    kept = layout.logs / layout.attempt_name(chosen)
    listed = kept.rglob("*") if kept.is_dir() and not kept.is_symlink() else ()
    extra = tuple(sorted(p for p in listed if p.is_file() and not p.is_symlink()))
    return RunLog(
        ctx.run_id, ctx.status, chosen, last + 1, layout.attempt_log(chosen), extra, layout.root
    )


def run_log(engine: Engine, run_id: int, attempt: int | None = None) -> RunLog:
    """Locate attempt `attempt` (counted from 1; default: the latest) of run `run_id`."""
    return _locate(_load(engine, run_id), attempt)


def attempt_summary(engine: Engine, run_id: int, attempt: int) -> str | None:
    """Say what one attempt asked for, which job ran it, how it ended and what it used.

    None for an attempt with no record (one made before attempts were recorded, or one
    not yet submitted).
    """
    a = m.RunAttempt
    with engine.connect() as conn:
        row = conn.execute(
            select(a.requested_resources, a.hpc_job_id, a.status, a.failure_kind,
                   a.failure_reason, a.processing_time_s, a.peak_memory_gb, a.cpu_hours)
            .where(a.executed_reduction_step_id == run_id, a.attempt == attempt)
        ).first()  # fmt: skip
    if row is None:
        return None
    requested, job, status, kind, reason, wall, memory, cpu = row
    parts = [f"asked for {describe(requested)}"]
    parts.append(f"job {job}" if job else "no job submitted")
    if status is None:
        parts.append("in flight")
    elif status is m.RunStatus.FAILED:
        parts.append(f"FAILED ({kind.value if kind else 'unknown kind'}): {reason}")
    else:
        parts.append(status.value)
    used = [
        f"{value:.3g} {unit}"
        for value, unit in ((memory, "GB peak"), (wall, "s"), (cpu, "CPU-h"))
        if value is not None
    ]
    if used:
        parts.append(f"used {', '.join(used)}")
    return "; ".join(parts)


def read_log(engine: Engine, log: RunLog, settings: Settings | None = None) -> str:
    """Return the attempt's whole log as text (for small logs; `stream_log` prints any size)."""
    parts: list[str] = []
    stream_log(engine, log, parts.append, settings)
    return "".join(parts)


def stream_log(
    engine: Engine, log: RunLog, write: Callable[[str], object], settings: Settings | None = None
) -> None:
    """Write the attempt's log in chunks: the file, else what the backend still holds."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    if _write_new(log, 0, lambda chunk: write(decoder.decode(chunk))) is not None:
        write(decoder.decode(b"", final=True))
        return
    ctx = _load(engine, log.run_id)
    if ctx.hpc_job_id and log.attempt == ctx.retry_count:
        location = ctx.location
        backend = location_backend(location.backend, location.path, location.settings, settings)
        try:
            write(backend.logs(ctx.hpc_job_id))
            return
        except BackendError as exc:
            raise CcatWmError(
                f"run {log.run_id} attempt {log.attempt}: no log file at {log.path}, "
                f"and the backend has none: {exc}"
            ) from None
    raise CcatWmError(
        f"run {log.run_id} attempt {log.attempt} has no log yet (the run is {ctx.status}, "
        f"expected at {log.path}); `--follow` waits for it"
    )


def follow_log(
    engine: Engine,
    log: RunLog,
    write: Callable[[str], object],
    *,
    poll_s: float = FOLLOW_POLL_S,
    sleep: Callable[[float], None] = time.sleep,
) -> RunStatus:
    """Write the attempt's log as it grows until the run leaves that attempt; return its status.

    The run leaves the attempt when it reaches a final status or a retry starts (its
    `retry_count` passes the attempt). The file may not exist yet (the run is still
    PENDING or staging); it is waited for.
    """
    offset = 0
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        ctx = _load(engine, log.run_id)
        done = ctx.status in FINAL or ctx.retry_count > log.attempt
        offset = _write_new(log, offset, lambda chunk: write(decoder.decode(chunk))) or offset
        if done:
            write(decoder.decode(b"", final=True))
            return ctx.status
        sleep(poll_s)


def _write_new(log: RunLog, offset: int, write: Callable[[bytes], object]) -> int | None:
    """Hand on what was appended to the log since `offset`; return the new offset.

    None: there is no log file (yet). Bytes, not text: a character split across two
    reads is decoded whole by the caller. A log replaced by a link or a FIFO raises
    CcatWmError saying so: it is never read.
    """
    try:
        with open_regular(log.root, log.path) as handle:
            handle.seek(offset)
            while chunk := handle.read(_CHUNK):
                write(chunk)
                offset += len(chunk)
    except UnsafeEntryError as exc:
        if exc.what == "is missing":
            return None
        raise CcatWmError(
            f"run {log.run_id} attempt {log.attempt}: the attempt log {exc.path} {exc.what}"
        ) from None
    except FileNotFoundError:
        return None
    return offset
