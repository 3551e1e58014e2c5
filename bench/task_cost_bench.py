"""What Prefect costs per sub-group run beyond a bare task: our task with a no-op executor.

    CCAT_OPS_DB_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/task_cost_bench.py [--runs 1000] [--repeat 3]

In one process with its own ephemeral Prefect server (on a throwaway PostgreSQL
database, `bench/common.py`), W = 8 threads, interleaved, each `--repeat` times:

- `bare`: a flow mapping N no-op tasks (the baseline of `overhead_bench.py`);
- `sub-group task`: a flow submitting N task runs of the pipeline flow's own task
  (`tasks.runs.run_sub_group`: its name function, retry condition, the step's slot pool
  and its limit, the run logger, a `RunOutcome` as the result), whose run executor is
  replaced by one that returns COMPLETED at once: no ops DB, no job;
- `sub-group task, tagged`: the same with the three tags a sub-group's task run carries
  (`CCAT_WM_TASK_RUN_TAGS`, on by default).

Prints, per variant, the medians of wall time, of this process's CPU, of the Prefect
server's CPU and of the whole machine's CPU, per task run; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import prefect_database

# Importing it sets Prefect's settings as the CLI does (and WARNING logging), first.
from bench.overhead_bench import cpu_seconds, machine_busy_seconds

WORKERS = 8
LIMIT = "ccat-step:bench:noop"


def variants() -> dict[str, Callable[[int], Any]]:
    """The three flows, made after the server's database is set."""
    from prefect import flow, tags, task
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run
    from prefect.task_runners import ThreadPoolTaskRunner

    import tasks.runs
    from ccat_ops_db.models import RunStatus
    from ccat_wm.execution.outcome import RunOutcome
    from tasks.slots import close_pools, open_pool

    class NoOpExecutor:
        def run_attempt(self, run_id: int) -> RunOutcome:
            return RunOutcome(run_id, RunStatus.COMPLETED, 0)

    tasks.runs.executor = NoOpExecutor  # type: ignore[assignment]

    @task
    def noop(i: int) -> int:
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
    def bare(n: int) -> None:
        noop.map(range(n)).wait()

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
    def sub_groups(n: int, tagged: bool) -> None:
        claim_as = str(flow_run.id)
        with get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name(LIMIT, WORKERS)
        open_pool(claim_as, "noop", LIMIT, n, WORKERS)
        labels = tasks.runs.run_tags("bench", "noop", "local") if tagged else []
        futures = []
        for i in range(n):
            with tags(*labels):
                futures.append(
                    tasks.runs.sub_group_task(0).submit(
                        "bench", "noop", f"k{i}", i + 1, claim_as=claim_as
                    )
                )
        for future in futures:
            future.wait()
        close_pools(claim_as)

    return {
        "bare": bare,
        "sub-group task": lambda n: sub_groups(n, False),
        "sub-group task, tagged": lambda n: sub_groups(n, True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.runs
    rows: dict[str, list[tuple[float, float, float, float]]] = {}
    with prefect_database():
        flows = variants()
        flows["bare"](10)  # start the ephemeral server before timing
        for _ in range(args.repeat):
            for name, run in flows.items():
                (own, server), busy = cpu_seconds(), machine_busy_seconds()
                start = time.perf_counter()
                run(n)
                wall = time.perf_counter() - start
                (own2, server2), busy2 = cpu_seconds(), machine_busy_seconds()
                row = (wall, own2 - own, server2 - server, busy2 - busy)
                rows.setdefault(name, []).append(tuple(x * 1000 / n for x in row))  # type: ignore[arg-type]
                print(name, " ".join(f"{x:.2f}" for x in rows[name][-1]), flush=True)
                time.sleep(3)  # the server records the last task runs
    medians = {
        name: dict(
            zip(
                ("wall_ms", "flow_cpu_ms", "server_cpu_ms", "machine_cpu_ms"),
                (round(statistics.median(r[i] for r in runs), 2) for i in range(4)),
                strict=True,
            )
        )
        for name, runs in rows.items()
    }
    print(f"N = {n}, W = {WORKERS}, medians of {args.repeat}, per task run:")
    for name, figures in medians.items():
        print(f"  {name:24s} " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    print(json.dumps({"runs": n, "medians": medians}))


if __name__ == "__main__":
    main()
