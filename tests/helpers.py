"""Helpers shared by tests: spec files on disk and table snapshots."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from sqlalchemy import Engine, select

from ccat_ops_db.models import Base

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
DEMO_SPEC = REPO / "ccat_wm" / "examples" / "chai-demo.yaml"


def write_yaml(path: Path, data: Any) -> Path:
    """Write `data` as YAML to `path` and return the path."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def demo_spec_data() -> dict[str, Any]:
    """The example pipeline spec as a dict, to be edited by tests."""
    data: dict[str, Any] = yaml.safe_load(DEMO_SPEC.read_text())
    return data


def locations_data(root: Path) -> dict[str, Any]:
    """An archive and a local processing location under `root`."""
    return {
        "locations": [
            {
                "name": "archive",
                "site": "test",
                "location_type": "LONG_TERM_ARCHIVE",
                "path": str(root / "archive"),
            },
            {
                "name": "local",
                "site": "test",
                "location_type": "PROCESSING",
                "backend": "local",
                "path": str(root / "runs"),
            },
        ]
    }


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, ordered, for before/after comparisons."""
    out = {}
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            rows = conn.execute(select(table).order_by(*table.primary_key.columns)).all()
            out[table.name] = [tuple(r) for r in rows]
    return out


CCAT_WM = str(Path(sys.executable).with_name("ccat-wm"))
"""The installed `ccat-wm` of the interpreter running the tests."""


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `ccat-wm ARGS` as a user would; never raises on a non-zero exit.

    Without `COLUMNS` (a pipe): tables print every value whole, whatever the terminal
    that started the tests.
    """
    env = {k: v for k, v in env.items() if k != "COLUMNS"}
    return subprocess.run(
        [CCAT_WM, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def cli_json(env: dict[str, str], *args: str) -> Any:
    """Run `ccat-wm ARGS` (a `--json` command), require success, return the parsed output."""
    done = run_cli(env, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


SLURM_TEST_SETTINGS = {
    "slurm_partition": "debug",
    "slurm_account": "ccat",
    "slurm_poll_interval_s": 0.3,
    "slurm_array_window_s": 0.2,
}
"""Settings of the test SLURM location: the cluster of infra/slurm/start-cluster.sh."""


def podman_location(name: str, path: Path, *, slurm: bool = False) -> dict[str, Any]:
    """A processing location running podman: local, or on the test SLURM cluster."""
    location: dict[str, Any] = {
        "name": name, "site": "test", "location_type": "PROCESSING",
        "backend": "slurm" if slurm else "local", "runtime": "podman", "path": str(path),
    }  # fmt: skip
    if slurm:
        location["settings"] = SLURM_TEST_SETTINGS
    return location


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_http(
    url: str, process: subprocess.Popen[Any], log: Path, timeout: float = 120
) -> None:
    """Wait until `url` answers 200; fail with the process's log if it dies or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args} exited {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def wait_until(what: str, check: Callable[[], T], timeout: float = 180.0, every: float = 0.2) -> T:
    """Poll `check` until it returns something truthy and return that; the one way tests wait.

    Fails after `timeout` seconds naming `what` and the last value seen (or the last
    exception `check` raised), so that a slow machine gives a reason, not a bare timeout.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
        except Exception as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what}; last seen: {last!r}"
            )
        time.sleep(every)


def wait_gone(token: str, timeout: float = 60.0) -> None:
    """Wait until no process whose command line mentions `token` runs any more (zombies
    nobody reaped yet count as gone). A job's own PID namespace hides its pids from the
    host, so processes are found by what they were started with."""
    import psutil

    def running() -> list[int]:
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and token in " ".join(
                proc.info["cmdline"] or []
            ):
                found.append(proc.pid)
        return found

    wait_until(f"processes mentioning {token} to end", lambda: not running(), timeout)
