"""What one sub-group run costs without Prefect: the run executor alone, and its ops DB work.

    CCAT_OPS_DB_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/run_executor_bench.py [--runs 1000] [--workers 8]

The one-step no-op pipeline of `overhead_bench.py` (command `true`, local backend, host
runtime) over N scans in a throwaway ops DB; its N PENDING runs are executed by
`RunExecutor.execute` on W threads, as the pipeline flow's task runs call it but with no
Prefect at all. SQLAlchemy's engine and pool events count, per run, the statements, the
commits, the pool checkouts and the new connections. Prints wall time and CPU per run
(this process; the whole machine: both databases' server processes and the jobs too),
the counts, and the statements by kind; the last line is JSON.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import scratch_database
from bench.overhead_bench import bench_ops_db, machine_busy_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    n, workers = args.runs, args.workers
    root = Path(tempfile.mkdtemp(prefix="ccat-bench-executor-"))
    with scratch_database(f"ccat_wm_executor_bench_{os.getpid()}") as url:
        os.environ["CCAT_OPS_DB_URL"] = url
        from sqlalchemy import event
        from sqlalchemy.orm import Session

        from ccat_wm.execution.runner import RunExecutor
        from ccat_wm.execution.waves import prepare_wave
        from ccat_wm.settings import load_settings

        engine = bench_ops_db(url, root, n, workers)
        with Session(engine) as session, session.begin():
            now = dt.datetime.now(dt.UTC)
            wave = prepare_wave(session, "bench", now, claim_as="bench", manual=True)
        run_ids = [i.run_id for i in wave.items if i.run_id is not None]
        executor = RunExecutor(engine, load_settings())
        counts: collections.Counter[str] = collections.Counter()
        kinds: collections.Counter[str] = collections.Counter()

        def statement(*event_args: Any) -> None:
            counts["statements"] += 1
            words = str(event_args[2]).split()
            table = next((w for w in words[1:4] if w not in ("INTO", "FROM")), "")
            kinds[f"{words[0]} {table}" if words[0] in ("INSERT", "UPDATE") else words[0]] += 1

        event.listen(engine, "before_cursor_execute", statement)
        event.listen(engine, "commit", lambda *_: counts.update(["commits"]))
        event.listen(engine.pool, "checkout", lambda *_: counts.update(["checkouts"]))
        event.listen(engine.pool, "connect", lambda *_: counts.update(["new connections"]))
        me = psutil.Process()
        cpu_before, busy_before = me.cpu_times(), machine_busy_seconds()
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            outcomes = list(pool.map(executor.execute, run_ids))
        wall = time.perf_counter() - start
        cpu_after, busy = me.cpu_times(), machine_busy_seconds() - busy_before
        engine.dispose()
    completed = sum(1 for o in outcomes if o.status.value == "COMPLETED")
    per_run = 1000 / len(run_ids)
    own = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) * per_run
    figures = {
        "runs": len(run_ids),
        "completed": completed,
        "wall_ms_per_run": round(wall * per_run, 2),
        "process_cpu_ms_per_run": round(own, 2),
        "machine_cpu_ms_per_run": round(busy * per_run, 2),
        **{f"{k.replace(' ', '_')}_per_run": round(v / len(run_ids), 2) for k, v in counts.items()},
    }
    print(f"{len(run_ids)} runs on {workers} threads, {completed} COMPLETED")
    print(
        f"wall {figures['wall_ms_per_run']} ms per run; CPU per run: this process "
        f"{figures['process_cpu_ms_per_run']} ms, the whole machine "
        f"{figures['machine_cpu_ms_per_run']} ms"
    )
    print(", ".join(f"{k} {v / len(run_ids):.2f}" for k, v in counts.items()), "per run")
    for kind, count in kinds.most_common():
        print(f"  {count / len(run_ids):5.2f} {kind}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
