"""Prefect settings ccat-wm applies as defaults, before Prefect is imported.

Prefect reads its settings once, from the environment, when it is first imported; so
the CLI (and the benchmarks) put these in the environment first, and a value the user
set wins. They matter for the Prefect server that `ccat-wm` starts itself (the
ephemeral one); for a `prefect server start` of your own, set the `SERVER_DEFAULTS` in
its environment (docs/operators-guide.md, section 2).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

EPHEMERAL_STARTUP_TIMEOUT_S = "120"
"""How long a command waits for Prefect's ephemeral server (Prefect's default, 20 s, is
less than a first start takes on a small, busy machine: 30 s were measured here)."""

LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
SERVER_DEFAULTS: dict[str, str] = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "50",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE": "50",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "1",
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE,
}
"""How the Prefect server records task runs and events: in batches of up to 200 rows,
flushed at least every second, instead of Prefect's defaults (the task run recorder
writes each state change in its own transaction). A pipeline flow emits three state
events per sub-group run; with the defaults, the server needed 55-70 ms of CPU per task
run and fell behind a 1,000-run flow by a minute on two cores; batched, about 15 ms and
no backlog (bench/README.md). The UI shows a task run up to a second later.

Slot leases are kept on disk (under the server's PREFECT_HOME), not in the server's
memory: a restarted server then still knows the leases of the processes that held slots,
and frees those of a process that died when its lease expires, instead of counting
them as taken forever."""


ANALYTICS = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
"""Data centers run without internet access: Prefect's server would log a failed telemetry
send, and its ephemeral SQLite server an ERROR traceback ("database is locked") on every
command that starts a flow. A user's own value wins."""


class _DropProgressLines(logging.Filter):
    """Drop Prefect's "Still processing items: N items remaining..." lines.

    Prefect's background services (the events and logs workers) log them at WARNING
    while a process sends its last events or logs before exiting: progress, not a
    problem, and an operator should not read it as one.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Still processing items")


PREFECT_SERVICE_LOGGERS = ("EventsWorker", "APILogWorker")
"""Loggers of Prefect's queue services (named after their class)."""


def quiet_prefect_progress() -> None:
    """Install `_DropProgressLines` on Prefect's queue services (once per process)."""
    for name in PREFECT_SERVICE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropProgressLines) for f in logger.filters):
            logger.addFilter(_DropProgressLines())


def apply_prefect_defaults(environ: MutableMapping[str, str] | None = None) -> None:
    """Set ccat-wm's Prefect defaults in `environ` (the process environment) unless set.

    For the process itself (no `environ` given), Prefect's progress lines are dropped too.
    """
    if environ is None:
        quiet_prefect_progress()
    target = os.environ if environ is None else environ
    if environ is None:
        _homes_under_ccat_wm_home(target)
    target.setdefault(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT_S
    )
    for name, value in {**SERVER_DEFAULTS, **ANALYTICS}.items():
        target.setdefault(name, value)


def ccat_wm_home(environ: Mapping[str, str]) -> Path:
    """Return `CCAT_WM_HOME` (or its default) as the settings read it, without loading them."""
    return Path(environ.get("CCAT_WM_HOME") or "~/.local/share/ccat-wm").expanduser()


def _homes_under_ccat_wm_home(environ: MutableMapping[str, str]) -> None:
    """Keep what Prefect and matplotlib write under `CCAT_WM_HOME`, not in the user's home.

    With `PREFECT_HOME` unset, Prefect keeps its ephemeral server's database, slot leases
    and memo store in `~/.prefect`: ccat-wm points it at `$CCAT_WM_HOME/prefect` instead,
    unless no server URL is set and `~/.prefect/profiles.toml` exists (a Prefect set up by
    its user, whose profile may name the server: it is left as it is). Matplotlib's
    config and font cache go to `$CCAT_WM_HOME/matplotlib` unless `MPLCONFIGDIR` is set.
    """
    home = ccat_wm_home(environ)
    profiles = Path(environ.get("HOME") or "~").expanduser() / ".prefect" / "profiles.toml"
    if "PREFECT_HOME" not in environ and not (
        "PREFECT_API_URL" not in environ and profiles.exists()
    ):
        environ["PREFECT_HOME"] = str(home / "prefect")
        with contextlib.suppress(OSError):  # Prefect makes its home without parents
            (home / "prefect").mkdir(parents=True, exist_ok=True)
    environ.setdefault("MPLCONFIGDIR", str(home / "matplotlib"))
