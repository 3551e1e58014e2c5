"""Stopping a foreground command (`ccat-wm run`, `retry`, `reproduce`) on SIGTERM or Ctrl-C.

The first SIGTERM or Ctrl-C asks the command to stop: no new job starts from then on,
and every run whose job is in flight is *left* in flight (its job keeps running, its
status stays SUBMITTED or RUNNING, no concurrency slot of it is handed back) and the
command exits within seconds. Its claim's lock goes with the process, so the next
`ccat-wm run` of the pipeline (or a trigger tick) adopts those runs, and the PENDING
ones it had claimed, exactly once, and follows each job to its end: hours of work are
not thrown away because a terminal closed. The Prefect flow run ends Cancelled with a
message that says what was left; `ccat-wm cancel RUN_ID` stops a run for good.
`reproduce` keeps nothing (its scratch runs are not in the ops DB): it cancels its job.

A second Ctrl-C (or SIGTERM) exits at once, stopping Prefect's ephemeral server first
so that no server process outlives the command.

Only a command that calls `arm()` reacts: flows run by a worker keep Prefect's own
handling of SIGTERM (the worker's cancellation).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from types import FrameType

from ccat_wm.errors import CcatWmError

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
"""The shell's convention: 128 + the signal's number."""


class StopRequestedError(CcatWmError):
    """The command was asked to stop; raised where a run is left for the next one to adopt."""

    def __init__(self, message: str, *, in_flight: bool = False) -> None:
        """`in_flight`: the run's job was submitted and keeps running."""
        super().__init__(message)
        self.in_flight = in_flight


class _State:
    armed = False
    received: signal.Signals | None = None


_STOP = threading.Event()


def stop_requested() -> bool:
    """Whether this process was asked to stop (always False unless `arm()` was called)."""
    return _STOP.is_set()


def stop_signal() -> signal.Signals | None:
    """Return the signal that asked this process to stop, if any."""
    return _State.received


def exit_code() -> int:
    """Return the exit code a stopped command ends with (130 for Ctrl-C, 143 for SIGTERM)."""
    return EXIT_CODES.get(_State.received or signal.SIGINT, 130)


def arm() -> None:
    """Make this process stop gracefully on its first SIGTERM or Ctrl-C (main thread only)."""
    _State.armed = True
    reinstall()


def reinstall() -> None:
    """Put the handlers back if `arm()` was called (Prefect's flow engine replaces SIGTERM's)."""
    if not _State.armed or threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _handle)


def _handle(signum: int, frame: FrameType | None) -> None:
    del frame
    sig = signal.Signals(signum)
    if _STOP.is_set():
        _exit_now(sig)
    _State.received = sig
    _STOP.set()
    name = "Ctrl-C" if sig is signal.SIGINT else sig.name
    os.write(
        sys.stderr.fileno(),
        f"\nccat-wm: {name}: stopping; no new job starts, jobs in flight keep running and "
        "the next `ccat-wm run` adopts them. Ctrl-C again exits at once.\n".encode(),
    )


def _exit_now(sig: signal.Signals) -> None:
    """Leave at once, stopping Prefect's ephemeral server (a child process) first."""
    server_module = sys.modules.get("prefect.server.api.server")
    servers = getattr(getattr(server_module, "SubprocessASGIServer", None), "_instances", {})
    for server in list(servers.values()):
        with contextlib.suppress(Exception):  # leaving at once: nothing else can be done
            server.stop()
    os.write(sys.stderr.fileno(), f"ccat-wm: {sig.name} again: exiting now\n".encode())
    os._exit(EXIT_CODES.get(sig, 130))
