"""Benchmark of one large wave: N no-op sub-group runs through the pipeline flow.

    python bench/wave_bench.py --runs 100000 [--workers 8]

In a fresh process, with its own ephemeral Prefect server on a throwaway PostgreSQL
database (`bench/common.py`) and a throwaway ops DB: the one-step no-op pipeline of
`overhead_bench.py` over N simulated scans on the local backend. It times N direct
launches of `true` (same parallelism), then the pipeline flow over the whole wave
(evaluation, N PENDING runs, claim, staging, manifest, local job, collection, every
transition committed), sampling the process's resident memory every 0.2 s while the
flow runs. Then it checks what an operator would: every sub-group has exactly one run
and it is COMPLETED, and the Prefect server recorded a completed task run for each
(counted through its API, after waiting for its event backlog).

The last line is one JSON object: `runs`, `completed`, `runs_per_sub_group_max`,
`task_runs_recorded`, `peak_rss_mb` (the flow process while the flow ran, as a worker
runs it; the Prefect server is another process), `peak_rss_with_listing_mb` (also while
the process then lists every run of the flow run, as `ccat-wm run` does), `rss_before_mb`,
`overhead_ms_per_run` ((flow - direct) / N), `flow_s`, `direct_s`, `record_lag_s`,
`register_s`; the wave's pace at its start and at its end (`runs_per_s_first_tenth`,
`runs_per_s_last_tenth`, and the CPU per run of the flow and of the Prefect server in
both), and `progress`, one sample every 30 s: `[seconds, runs COMPLETED, flow CPU ms per
run, server CPU ms per run, machine CPU ms per run, machine busy %]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
from ccat_wm.prefect_settings import apply_prefect_defaults

apply_prefect_defaults()  # as the CLI does (batched recording in the server)

# After the settings: these import Prefect.
from bench.common import prefect_database, scratch_database  # noqa: E402
from bench.overhead_bench import SPEC, direct, prefect_map, wait_until_recorded  # noqa: E402

MB = 1024 * 1024


class _Sampler:
    """A daemon thread running `_sample` while the `with` block runs (`_stop` ends it)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class Progress(_Sampler):
    """Sample the wave's progress every `interval_s`: what each process spends per run.

    Each sample: seconds since the flow started, runs COMPLETED so far (ops DB), and over
    the interval the CPU milliseconds per completed run of this process (the flow), of
    the Prefect server (its child process) and of the whole machine, with the machine's
    busy share. Flat columns mean the wave costs the same per run at its end as at its
    start; a rising one says which process grows.
    """

    def __init__(self, url: str, interval_s: float = 30.0) -> None:
        super().__init__(interval_s)
        self.url = url
        self.samples: list[list[float]] = []

    @staticmethod
    def _cpu(process: psutil.Process | None) -> float:
        if process is None:
            return 0.0
        try:
            times = process.cpu_times()
        except psutil.Error:
            return 0.0
        return times.user + times.system + times.children_user + times.children_system

    def _completed(self) -> int:
        import psycopg

        from bench.common import libpq

        with psycopg.connect(libpq(self.url)) as conn:
            row = conn.execute(
                "SELECT count(*) FROM executed_reduction_step WHERE status = 'COMPLETED'"
            ).fetchone()
        return int(row[0]) if row else 0

    def _sample(self) -> None:
        me = psutil.Process()
        server = next(
            (c for c in me.children(recursive=True) if "uvicorn" in " ".join(c.cmdline())), None
        )
        started = time.perf_counter()
        last = (0, self._cpu(me), self._cpu(server), psutil.cpu_times())
        while not self._stop.wait(self.interval_s):
            done, flow_cpu, server_cpu = self._completed(), self._cpu(me), self._cpu(server)
            machine = psutil.cpu_times()
            runs = done - last[0]
            busy = sum(machine) - machine.idle - machine.iowait
            busy_before = sum(last[3]) - last[3].idle - last[3].iowait
            total = sum(machine) - sum(last[3])
            if runs > 0:
                self.samples.append([
                    round(time.perf_counter() - started),
                    done,
                    round((flow_cpu - last[1]) * 1000 / runs, 1),
                    round((server_cpu - last[2]) * 1000 / runs, 1),
                    round((busy - busy_before) * 1000 / runs, 1),
                    round(100 * (busy - busy_before) / total) if total else 0,
                ])  # fmt: skip
            last = (done, flow_cpu, server_cpu, machine)


def tenths(samples: list[list[float]]) -> dict[str, float]:
    """Runs per second and CPU per run (medians) in the first and the last tenth of the wave."""
    if len(samples) < 2:
        return {}
    total = samples[-1][1]
    first = [s for s in samples if s[1] <= total / 10] or samples[:1]
    last = [s for s in samples if s[1] >= total * 9 / 10] or samples[-1:]

    def rate(rows: list[list[float]], before: list[float] | None) -> float:
        t0, n0 = (before[0], before[1]) if before else (0, 0)
        return round((rows[-1][1] - n0) / max(rows[-1][0] - t0, 1), 1)

    index = samples.index(last[0])
    return {
        "runs_per_s_first_tenth": rate(first, None),
        "runs_per_s_last_tenth": rate(last, samples[index - 1] if index else None),
        "flow_cpu_ms_per_run_first_tenth": statistics.median(s[2] for s in first),
        "flow_cpu_ms_per_run_last_tenth": statistics.median(s[2] for s in last),
        "server_cpu_ms_per_run_first_tenth": statistics.median(s[3] for s in first),
        "server_cpu_ms_per_run_last_tenth": statistics.median(s[3] for s in last),
    }


class PeakMemory(_Sampler):
    """Sample this process's resident set size in a thread; keep the peak."""

    def __init__(self, interval_s: float = 0.2) -> None:
        super().__init__(interval_s)
        self.peak = 0

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, me.memory_info().rss)
            self._stop.wait(self.interval_s)


def wave(n: int, workers: int, url: str, root: Path) -> dict[str, float]:
    """Register `n` scans, run the pipeline flow over them, check and return the figures."""
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from ccat_ops_db import migrate
    from ccat_ops_db import models as m
    from ccat_wm.db import get_engine, normalize_db_url
    from ccat_wm.execution.report import run_rows
    from flows.pipeline import flow_for
    from tasks.runs import executor

    os.environ["CCAT_OPS_DB_URL"] = url
    executor.cache_clear()
    engine = get_engine(normalize_db_url(url))
    migrate.upgrade(engine)
    spec = root / "spec.yaml"
    spec.write_text(SPEC.format(root=root, workers=workers))
    started = time.perf_counter()
    register(url, spec, n)
    register_s = time.perf_counter() - started
    rss_before = psutil.Process().memory_info().rss
    with PeakMemory() as memory, Progress(url) as progress:
        started = time.perf_counter()
        state = flow_for("bench")(pipeline="bench", manual=True, return_state=True)
        flow_s = time.perf_counter() - started
        flow_peak = max(memory.peak, psutil.Process().memory_info().rss)
        # What `ccat-wm run` does after the flow (not part of a worker's flow run): list
        # every run of the flow run.
        with Session(engine) as session:
            listed = len(run_rows(session, flow_run=str(state.state_details.flow_run_id)))
    flow_run_id = str(state.state_details.flow_run_id)
    run = m.ExecutedReductionStep
    with Session(engine) as session:
        per_key = (
            select(run.sub_group_key, func.count().label("n"))
            .group_by(run.sub_group_key)
            .subquery()
        )
        most = session.scalar(select(func.max(per_key.c.n))) or 0
        completed = session.scalar(
            select(func.count(func.distinct(run.sub_group_key))).where(
                run.status == m.RunStatus.COMPLETED
            )
        )
    engine.dispose()
    lag = wait_until_recorded(flow_run_id, n, timeout_s=1800)
    recorded = task_runs_recorded(flow_run_id)
    return {
        "completed": int(completed or 0),
        "runs_per_sub_group_max": int(most),
        "task_runs_recorded": recorded,
        "peak_rss_mb": round(flow_peak / MB, 1),
        "peak_rss_with_listing_mb": round(memory.peak / MB, 1),
        "runs_listed": listed,
        "rss_before_mb": round(rss_before / MB, 1),
        "flow_s": round(flow_s, 2),
        "record_lag_s": round(lag, 1),
        "register_s": round(register_s, 1),
        **tenths(progress.samples),
        "progress": progress.samples,
    }


def register(url: str, spec: Path, scans: int) -> None:
    """Apply the spec and simulate the scans with `ccat-wm`, in processes of their own.

    The flow process is what a worker runs: registering 10,000 scans in it first left
    it at 777 MB before the flow started (memory Python keeps once it has used it).
    """
    env = {**os.environ, "CCAT_OPS_DB_URL": url}
    cli = str(Path(sys.executable).with_name("ccat-wm"))
    for args in (["apply", str(spec)], ["simulate", "--scans", str(scans), "--seed", "1"]):
        subprocess.run([cli, *args], env=env, check=True, capture_output=True)


def task_runs_recorded(flow_run_id: str) -> int:
    """Completed task runs the server holds for the flow run's sub-group runs.

    The flow's own tasks (preparing the wave, concurrency limits, artifacts) are not
    sub-group runs: only task runs named `<step>[<sub-group>]` are counted.
    """
    from prefect.client.orchestration import get_client

    body = {
        "flow_runs": {
            "operator": "or_",
            "id": {"any_": [flow_run_id]},
            "parent_flow_run_id": {"any_": [flow_run_id]},
        },
        "task_runs": {
            "state": {"type": {"any_": ["COMPLETED"]}},
            "name": {"like_": "["},
        },
    }
    with get_client(sync_client=True) as client:
        count: int = client.request("POST", "/task_runs/count", json=body).json()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    os.environ["CCAT_WM_FLOW_WORKERS"] = str(args.workers)
    root = Path(tempfile.mkdtemp(prefix="ccat-bench-wave-"))
    os.environ.setdefault("PREFECT_HOME", str(root / "prefect-home"))
    with prefect_database(), scratch_database(f"ccat_wm_wave_{os.getpid()}") as url:
        prefect_map(10, args.workers)  # start the ephemeral server before timing
        direct_s = direct(args.runs, args.workers)
        figures = wave(args.runs, args.workers, url, root)
    figures = {
        "runs": args.runs,
        **figures,
        "direct_s": round(direct_s, 2),
        "overhead_ms_per_run": round((figures["flow_s"] - direct_s) * 1000 / args.runs, 1),
    }
    ok = (
        figures["completed"] == args.runs
        and figures["runs_per_sub_group_max"] == 1
        and figures["task_runs_recorded"] >= args.runs
    )
    print(
        f"{args.runs} runs: {figures['completed']} sub-groups COMPLETED, at most "
        f"{figures['runs_per_sub_group_max']} run per sub-group, "
        f"{figures['task_runs_recorded']} task runs recorded by the server; flow process "
        f"peak RSS {figures['peak_rss_mb']} MB; {figures['overhead_ms_per_run']} ms per run "
        f"above direct launch: {'all accounted' if ok else 'NOT all accounted'}"
    )
    print(json.dumps(figures), flush=True)
    print(f"(run directories left under {root}; remove them when done)", file=sys.stderr)


if __name__ == "__main__":
    main()
