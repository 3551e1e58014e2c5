"""The Prefect server's CPU per task run on two Pythons, measured in the same run.

    python bench/server_python_bench.py --python-b /opt/py313/bin/python [--runs 1000] [--repeat 3]

Starts `prefect server start` twice: under this environment's Python and under
`--python-b` (an environment with the same Prefect version, e.g. a Python 3.13 venv),
each on its own throwaway PostgreSQL database and with ccat-wm's server settings
(`ccat_wm.prefect_settings.SERVER_DEFAULTS`). Then, alternating between the two servers,
it runs `overhead_bench.py --one N` against each (`PREFECT_API_URL`): a bare map of N
no-op tasks and the pipeline flow over N no-op sub-groups, from the same client (this
environment), and measures the CPU the server's processes spent meanwhile. Prints per
repetition, then the medians: the server's CPU per task run, and the flow's overhead and
the bare map's cost per run as the client saw them; its last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import scratch_database
from ccat_wm.db import normalize_db_url
from ccat_wm.prefect_settings import ANALYTICS, SERVER_DEFAULTS

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def server(python: str, database: str, home: Path) -> Any:
    """Run `prefect server start` under `python` on `database`; yield (API URL, process)."""
    port = _free_port()
    asyncpg = normalize_db_url(database).set(drivername="postgresql+asyncpg")
    env = {
        **os.environ, **SERVER_DEFAULTS, **ANALYTICS, "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": asyncpg.render_as_string(hide_password=False),
    }  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    process = subprocess.Popen(
        [python, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server under {python} did not start") from None
                time.sleep(0.5)
        yield url, psutil.Process(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)


def cpu(process: psutil.Process) -> float:
    """CPU seconds of a process and its children so far."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        times = p.cpu_times()
        total += times.user + times.system
    return total


def measure(url: str, process: psutil.Process, runs: int, workers: int, root: str) -> dict:
    """One `overhead_bench.py --one` against the server at `url`; its row and server CPU."""
    env = {**os.environ, "PREFECT_API_URL": url}
    before = cpu(process)
    out = subprocess.run(
        [sys.executable, str(HERE / "overhead_bench.py"), "--one", str(runs),
         "--workers", str(workers), "--root", root],
        env=env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    spent = cpu(process) - before
    row = json.loads(out.strip().splitlines()[-1])
    task_runs = 2 * runs + 13  # the map's and the flow's sub-group runs, and a few of its own
    return {
        "server CPU ms/task run": spent / task_runs * 1000,
        "overhead ms/run": row["overhead ms/run"],
        "map ms/run": row["map ms/run"],
        "ratio": row["ratio"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--python-b", required=True, help="the other server's Python")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    pythons = {"a": sys.executable, "b": args.python_b}
    versions = {
        k: subprocess.run(
            [p, "-c", "import sys, prefect; print(sys.version.split()[0], prefect.__version__)"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        for k, p in pythons.items()
    }  # fmt: skip
    root = tempfile.mkdtemp(prefix="ccat-bench-server-python-")
    results: dict[str, list[dict]] = {k: [] for k in pythons}
    with ExitStack() as stack:
        servers = {}
        for key, python in pythons.items():
            database = stack.enter_context(scratch_database(f"ccat_wm_bench_server_{key}"))
            home = Path(tempfile.mkdtemp(prefix=f"prefect-home-{key}-", dir=root))
            servers[key] = stack.enter_context(server(python, database, home))
        for repetition in range(args.repeat):
            for key in pythons if repetition % 2 == 0 else reversed(list(pythons)):
                row = measure(*servers[key], args.runs, args.workers, root)
                results[key].append(row)
                print(f"{key} (Python, Prefect {versions[key]}): "
                      + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)  # fmt: skip
    medians = {
        key: {"python": versions[key], **{
            name: statistics.median(r[name] for r in rows) for name in rows[0]
        }}
        for key, rows in results.items()
    }  # fmt: skip
    for key, m in medians.items():
        print(f"median {key}: " + ", ".join(f"{k} {v}" for k, v in m.items()))
    a, b = medians["a"]["server CPU ms/task run"], medians["b"]["server CPU ms/task run"]
    print(json.dumps({"runs": args.runs, "medians": medians, "server_cpu_b_over_a": b / a}))


if __name__ == "__main__":
    main()
