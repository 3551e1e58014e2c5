"""What tags on task runs cost: a bare Prefect map of no-op tasks with and without tags.

    python bench/task_tags_bench.py [--runs 500] [--repeat 3]

Prefect's task engine acquires a concurrency slot of the limit `tag:<tag>` for every
tag of every task run, whether such a limit exists or not: one request to the server to
acquire and one to release per task run, and a client-side service thread per distinct
set of tags (so a tag unique to each task run, such as a run id, leaves one thread per
task run behind). This measures the wall time per task run of N no-op tasks on 8
threads without tags, with three shared tags (pipeline, step, location) and with those
plus one unique tag per task run, each in a fresh process with its own ephemeral server
on a throwaway PostgreSQL database (as `overhead_bench.py`), interleaved; medians.
The last line is one JSON object with the medians (ms per task run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

VARIANTS = ("none", "shared", "unique")


def one(n: int, variant: str) -> None:
    """Time one map of `n` tasks in this process and print the result as JSON."""
    from ccat_wm.prefect_settings import apply_prefect_defaults

    apply_prefect_defaults()
    from bench.common import prefect_database

    with prefect_database():
        from prefect import flow, tags, task
        from prefect.cache_policies import NO_CACHE
        from prefect.task_runners import ThreadPoolTaskRunner

        @task(cache_policy=NO_CACHE)
        def noop(i: int) -> int:
            return i

        @flow(task_runner=ThreadPoolTaskRunner(max_workers=8))
        def mapped(n: int, variant: str) -> None:
            futures = []
            for i in range(n):
                names = [] if variant == "none" else ["pipeline:p", "step:s", "location:l"]
                names += [f"run:{i}"] if variant == "unique" else []
                with tags(*names):
                    futures.append(noop.submit(i))
            for future in futures:
                future.wait()

        mapped(10, "none")  # start the server before timing
        start = time.perf_counter()
        mapped(n, variant)
        wall = time.perf_counter() - start
    print(json.dumps({"variant": variant, "ms_per_task": wall / n * 1000,
                      "threads": threading.active_count()}))  # fmt: skip


def main() -> None:
    """Run every variant `--repeat` times, interleaved, each in its own process."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.runs, args.one)
        return
    results: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeat):
        for variant in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, "--runs", str(args.runs), "--one", variant],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            row = json.loads(out.strip().splitlines()[-1])
            results[variant].append(row["ms_per_task"])
            print(f"{variant:7s} {row['ms_per_task']:6.1f} ms/task  threads after: "
                  f"{row['threads']}", flush=True)  # fmt: skip
    medians = {v: round(statistics.median(ms), 1) for v, ms in results.items()}
    medians["runs"] = args.runs
    print(json.dumps(medians))


if __name__ == "__main__":
    main()
