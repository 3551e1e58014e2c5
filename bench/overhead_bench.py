"""Benchmark of orchestration overhead: no-op sub-group runs through the whole lifecycle.

    python bench/overhead_bench.py [--sizes 200,1000] [--workers 8] [--repeat 3]

For each size N, in one run and with the same parallelism W (threads):
- direct: N no-op processes (`true`) launched with subprocess from a pool of W threads;
- prefect map: a bare Prefect flow mapping N no-op tasks on a W-thread task runner;
- lifecycle: a one-step pipeline with N sub-groups whose command is `true`, run by the
  pipeline flow: gap evaluation, PENDING runs, staging (hard links of the raw data),
  manifest, local backend, polling, result collection (the captured log), every
  transition committed to the ops DB, the step's global concurrency limit (W slots).
Prints wall times and the per-run overhead above direct launch in ms, and its ratio to
the bare map's cost per run (`ratio`, (lifecycle - direct) / (map - direct), measured in
the same process), for every run and the median of each size (each run in a fresh
process and Prefect server), then the marginal overhead per run between the smallest
and largest size, in which the fixed costs of a flow run cancel out; its last line is
JSON: per size `map_ms_per_run`, `overhead_ms_per_run`, `ratio` and the CPU per run of
the flow, of the server and of the whole machine while the flow ran (both databases
and the jobs included; medians), and `max_ratio`.
Uses Prefect's ephemeral server (started once, before timing; in a fresh PREFECT_HOME
unless one is set, on a throwaway PostgreSQL database unless
PREFECT_API_DATABASE_CONNECTION_URL is set) or the server of PREFECT_API_URL, and a
throwaway ops DB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from sqlalchemy import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
from ccat_wm.prefect_settings import apply_prefect_defaults

apply_prefect_defaults()  # as the CLI does (batched recording in the server)

SPEC = """
locations:
  - {{name: archive, site: bench, location_type: LONG_TERM_ARCHIVE, path: {root}/archive}}
  - {{name: local, site: bench, location_type: PROCESSING, backend: local, runtime: host, path: {root}/runs}}
instruments:
  - {{name: CHAI, modules: [LFA, HFA]}}
software:
  - {{name: noop, versions: [{{tag: "1.0.0", is_latest: true}}]}}
data_groupings:
  - {{name: bench, instrument_module: CHAI/LFA, filter_rules: []}}
pipelines:
  - name: bench
    data_grouping: bench
    processing_location: local
    trigger: {{type: MANUAL}}
    steps:
      - name: noop
        software: noop
        group_by: [executed_obs_unit]
        max_concurrent_runs: {workers}
        config: {{name: noop, command: ["true"]}}
"""


def direct(n: int, workers: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda _: subprocess.run(["true"], check=True), range(n)))
    return time.perf_counter() - start


def prefect_map(n: int, workers: int) -> tuple[float, str]:
    """Time a bare flow mapping `n` no-op tasks; return the seconds and its flow run id."""
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    @task
    def noop(i: int) -> int:
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=workers))
    def bare(count: int) -> None:
        noop.map(range(count)).wait()

    start = time.perf_counter()
    state = bare(n, return_state=True)
    return time.perf_counter() - start, str(state.state_details.flow_run_id)


def wait_until_recorded(flow_run_id: str, n: int, timeout_s: float = 300.0) -> float:
    """Wait until the Prefect server has recorded `n` completed task runs of a flow run.

    A flow returns before the server has processed the events of its task runs (the
    server records them from an event stream, behind the client). Without this wait the
    next phase would also pay for the previous phase's backlog on the same two cores.
    """
    from prefect.client.orchestration import get_client

    start = time.perf_counter()
    body = {  # the flow run's task runs and those of its sub-flow runs (chunks)
        "flow_runs": {
            "operator": "or_",
            "id": {"any_": [flow_run_id]},
            "parent_flow_run_id": {"any_": [flow_run_id]},
        },
        "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
    }
    with get_client(sync_client=True) as client:
        while time.perf_counter() - start < timeout_s:
            if client.request("POST", "/task_runs/count", json=body).json() >= n:
                break
            time.sleep(0.2)
    return time.perf_counter() - start


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by this process (all threads) and by the ephemeral server."""
    me = psutil.Process()
    servers = [p for p in me.children(recursive=True) if "prefect.server" in " ".join(p.cmdline())]
    server = sum(t.user + t.system for t in (p.cpu_times() for p in servers))
    own = me.cpu_times()
    return own.user + own.system, server


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy so far (every process, every core)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def bench_ops_db(url: str, root: Path, n: int, workers: int) -> Engine:
    """Migrate the ops DB at `url`, apply the no-op pipeline and simulate `n` scans."""
    from sqlalchemy.orm import Session

    from ccat_ops_db import migrate
    from ccat_wm.db import get_engine, normalize_db_url
    from ccat_wm.simulate.register import SimulationRequest, register_simulation
    from ccat_wm.spec.apply import apply_specs
    from ccat_wm.spec.loader import load_spec_files

    engine = get_engine(normalize_db_url(url))
    migrate.upgrade(engine)
    spec = root / "spec.yaml"
    spec.write_text(SPEC.format(root=root, workers=workers))
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([spec]), user="bench")
        register_simulation(session, SimulationRequest(scans=n, seed=1))
    return engine


def lifecycle(
    n: int, workers: int, url: str, root: Path
) -> tuple[float, int, str, tuple[float, float, float]]:
    """Time the pipeline flow over `n` no-op sub-groups (ops DB set up before timing).

    Returns seconds, completed runs, the flow run id, and the CPU seconds of this process,
    of the ephemeral Prefect server and of the whole machine (both databases and the
    jobs too) while the flow ran.
    """
    from ccat_wm.cli.driver import run_pipeline
    from tasks.runs import executor

    os.environ["CCAT_OPS_DB_URL"] = url
    executor.cache_clear()
    engine = bench_ops_db(url, root, n, workers)
    cpu_before, busy_before = cpu_seconds(), machine_busy_seconds()
    start = time.perf_counter()
    result = run_pipeline(engine, "bench")
    elapsed = time.perf_counter() - start
    busy = machine_busy_seconds() - busy_before
    cpu = tuple(after - before for before, after in zip(cpu_before, cpu_seconds(), strict=True))
    completed = sum(1 for r in result.runs if r.status == "COMPLETED")
    engine.dispose()
    return elapsed, completed, result.flow_run_id, (cpu[0], cpu[1], busy)


COLUMNS = {
    "runs": "d",
    "direct s": ".2f",
    "map s": ".2f",
    "lifecycle s": ".2f",
    "completed": "d",
    "map ms/run": ".1f",
    "overhead ms/run": ".1f",
    "map lag s": ".1f",
    "flow lag s": ".1f",
    "map CPU ms/run": ".1f",
    "flow CPU ms/run": ".1f",
    "server CPU ms/run": ".1f",
    "machine CPU ms/run": ".1f",
    "ratio": ".2f",
}
"""The printed columns and their number formats; each as wide as its name (at least 5)."""


def _width(name: str) -> int:
    return max(len(name), 5)


def row_text(row: dict[str, float], label: str = "") -> str:
    cells = " ".join(
        f"{(int(row[name]) if spec == 'd' else row[name]):>{_width(name)}{spec}}"
        for name, spec in COLUMNS.items()
    )
    return f"{cells}  {label}".rstrip()


def median_row(rows: list[dict[str, float]]) -> dict[str, float]:
    return {name: statistics.median(r[name] for r in rows) for name in COLUMNS}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="200,1000")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (medians)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is None:  # each run in its own process: fresh Prefect server and caches
        root = tempfile.mkdtemp(prefix="ccat-bench-overhead-")
        try:
            run_all(args, root)
        finally:  # only now: see `run_all`
            shutil.rmtree(root, ignore_errors=True)
        return
    one(args)


def run_all(args: argparse.Namespace, root: str) -> None:
    """Run each size `--repeat` times, each in a fresh process, and print rows and medians.

    The runs' directories stay under `root` until the whole benchmark is over: on an ext4
    without a journal (this project's development machines) each file or directory made
    within a few minutes after many were deleted pays a lookup per deleted inode in its
    block group (the kernel's `recently_deleted`), which cost the next run 3-6 ms of system
    time per sub-group run; that is this benchmark's cleanup, not the lifecycle's cost.
    """
    # A fresh Prefect home, not the user's ~/.prefect (each run's server database is a
    # throwaway PostgreSQL one: `bench.common.prefect_database`).
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-", dir=root))
    print(f"W = {args.workers} threads, {args.repeat} run(s) per size")
    print(" ".join(f"{name:>{_width(name)}}" for name in COLUMNS), flush=True)
    medians = {}
    for n in (int(size) for size in args.sizes.split(",")):
        rows = []
        for _ in range(args.repeat):
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(n), "--workers", str(args.workers),
                 "--root", root],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(row_text(rows[-1]), flush=True)
        medians[n] = median_row(rows)
        print(row_text(medians[n], "median"), flush=True)
    if len(medians) >= 2:  # fixed costs of a flow run (start, wave, artifacts) cancel out
        small, large = min(medians), max(medians)
        extra = (medians[large]["lifecycle s"] - medians[small]["lifecycle s"]) - (
            medians[large]["direct s"] - medians[small]["direct s"]
        )
        print(
            f"marginal overhead per run, from {small} to {large} runs (medians): "
            f"{extra / (large - small) * 1000:.1f} ms"
        )
    summary = [
        {"runs": n, "map_ms_per_run": r["map ms/run"], "overhead_ms_per_run": r["overhead ms/run"],
         "ratio": r["ratio"], "flow_cpu_ms_per_run": r["flow CPU ms/run"],
         "server_cpu_ms_per_run": r["server CPU ms/run"],
         "machine_cpu_ms_per_run": r["machine CPU ms/run"]}
        for n, r in medians.items()
    ]  # fmt: skip
    print(json.dumps({"medians": summary, "max_ratio": max(r["ratio"] for r in summary)}))


def one(args: argparse.Namespace) -> None:
    """Measure one size in this process and print its row as JSON."""
    os.environ["CCAT_WM_FLOW_WORKERS"] = str(args.workers)
    from bench.common import prefect_database, scratch_database

    n = args.one
    with (
        prefect_database(),
        scratch_database(f"ccat_wm_overhead_{os.getpid()}_{n}") as url,
    ):
        tmp = tempfile.mkdtemp(dir=args.root)  # removed with the root, after all runs
        prefect_map(10, args.workers)  # start the ephemeral server before timing
        d = direct(n, args.workers)
        map_cpu_before = cpu_seconds()[0]
        p, map_run = prefect_map(n, args.workers)
        map_cpu = cpu_seconds()[0] - map_cpu_before
        map_lag = wait_until_recorded(map_run, n)
        life, completed, life_run, (flow_cpu, server_cpu, machine_cpu) = lifecycle(
            n, args.workers, url, Path(tmp)
        )
        # the flow's own tasks too: prepare-wave, ensure-concurrency-limits, artifacts
        life_lag = wait_until_recorded(life_run, n + 3)
    per_run = 1000 / n
    row = {
        "runs": n, "direct s": d, "map s": p, "lifecycle s": life, "completed": completed,
        "map ms/run": (p - d) * per_run, "overhead ms/run": (life - d) * per_run,
        "map lag s": map_lag, "flow lag s": life_lag, "map CPU ms/run": map_cpu * per_run,
        "flow CPU ms/run": flow_cpu * per_run, "server CPU ms/run": server_cpu * per_run,
        "machine CPU ms/run": machine_cpu * per_run,
        "ratio": (life - d) / (p - d) if p > d else float("inf"),
    }  # fmt: skip
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
