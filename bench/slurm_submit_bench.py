"""Benchmark of submission to SLURM: N sub-group runs of one step, against plain sbatch.

    infra/slurm/start-cluster.sh
    CCAT_OPS_DB_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/slurm_submit_bench.py [--runs 500]

In one run: (1) a plain loop of N `sbatch` calls of a no-op job (its jobs are cancelled
once it is timed, so that they do not hold the cluster); (2) a one-step pipeline with N
sub-groups (command `true`, host runtime, `max_concurrent_runs` N) on a SLURM location,
run by the pipeline flow with min(N, 1,000) flow workers. The SLURM commands are counted
through wrappers put first on PATH (each logs its name, then runs the real command), so
the counts are what SLURM really received. Prints the invocations of sbatch, squeue and
sacct; the time from the first run's SUBMITTED to the last's (from the ops DB's status
history) against the plain loop's wall time; when the attempts started (STAGING_DATA)
and how long each took to SUBMITTED, so that staging is seen too; how many runs
completed with SLURM's accounting (job id, elapsed time and CPU time from `sacct`) on
their record; and, from `sacct`'s Start and End of every job of the pipeline, each time
the cluster ran none of them for a second or more between the first and the last (a
wave above `CCAT_WM_MAX_TASK_RUNS` runs in parts: the seams between parts). The last
line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
from ccat_wm.prefect_settings import apply_prefect_defaults

apply_prefect_defaults()  # as the CLI does (batched recording in the server)

SPEC = """
locations:
  - {{name: archive, site: bench, location_type: LONG_TERM_ARCHIVE, path: {root}/archive}}
  - name: cluster
    site: bench
    location_type: PROCESSING
    backend: slurm
    runtime: host
    path: {root}/runs
    settings: {{slurm_partition: debug, slurm_account: ccat, slurm_poll_interval_s: 1}}
instruments:
  - {{name: CHAI, modules: [LFA, HFA]}}
software:
  - {{name: noop, versions: [{{tag: "1.0.0", is_latest: true}}]}}
data_groupings:
  - {{name: bench, instrument_module: CHAI/LFA, filter_rules: []}}
pipelines:
  - name: bench
    data_grouping: bench
    processing_location: cluster
    trigger: {{type: MANUAL}}
    steps:
      - name: noop
        software: noop
        group_by: [executed_obs_unit]
        max_concurrent_runs: {runs}
        config: {{name: noop, command: ["true"], resources: {{cpu: 1, memory_gb: 0.1, time_hours: 0.1}}}}
"""
LOOP_JOB = "ccat-bench-loop"
WRAPPER = (
    '#!/bin/sh\necho "${0##*/}" >>"$CCAT_BENCH_CALLS"\nexec "$CCAT_BENCH_REAL/${0##*/}" "$@"\n'
)


def counting_path(root: Path) -> Path:
    """A directory of sbatch/squeue/sacct/scancel wrappers that count their calls."""
    shims = root / "shims"
    shims.mkdir()
    for name in ("sbatch", "squeue", "sacct", "scancel"):
        (shims / name).write_text(WRAPPER)
        (shims / name).chmod(0o755)
    os.environ["CCAT_BENCH_REAL"] = str(Path(shutil.which("sbatch") or "/usr/bin/sbatch").parent)
    os.environ["CCAT_BENCH_CALLS"] = str(root / "calls.log")
    os.environ["PATH"] = f"{shims}:{os.environ['PATH']}"
    return root / "calls.log"


def plain_loop(n: int, root: Path) -> float:
    script = root / "noop.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run(
            ["sbatch", "--parsable", "--output=/dev/null", "--mem=100M", "--time=6",
             f"--job-name={LOOP_JOB}", str(script)],
            check=True, capture_output=True,
        )  # fmt: skip
    elapsed = time.perf_counter() - start
    # The loop's jobs would hold the cluster while the pipeline's wait: drop them.
    subprocess.run(["scancel", f"--name={LOOP_JOB}"], check=True)
    return elapsed


def _phases(session: Any) -> dict[str, Any]:
    """When the first attempts started (STAGING_DATA) and how long each took to SUBMITTED."""
    from sqlalchemy import func, select

    from ccat_ops_db import models as m

    change = m.RunStatusChange
    rows = session.execute(
        select(
            change.executed_reduction_step_id,
            func.min(change.changed_at).filter(change.status == m.RunStatus.STAGING_DATA),
            func.min(change.changed_at).filter(change.status == m.RunStatus.SUBMITTED),
        ).group_by(change.executed_reduction_step_id)
    ).all()
    starts = [r[1] for r in rows if r[1] is not None]
    waits = [(r[2] - r[1]).total_seconds() for r in rows if r[1] and r[2]]
    return {
        "first_start": min(starts),
        "last_start": max(starts),
        "median_start_to_submit_s": statistics.median(waits),
    }


def idle_gaps(since: dt.datetime) -> dict[str, Any]:
    """When the cluster ran none of the pipeline's jobs, between its first job and its last.

    From SLURM's accounting (`sacct`: each job's Start and End, whole seconds): the jobs'
    intervals are swept in order of start; a start after every earlier job has ended
    leaves the cluster idle in between. Returns the idle gaps of at least 1 s (start
    and length), the longest, and the number of jobs read.
    """
    listed = subprocess.run(
        ["sacct", "--allocations", "--noheader", "--parsable2", "--allusers",
         f"--starttime={since.astimezone().strftime('%Y-%m-%dT%H:%M:%S')}",
         "--format=JobName,Start,End"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    spans = []
    for line in listed.splitlines():
        name, start, end = line.split("|")
        if name == LOOP_JOB or "Unknown" in (start, end) or "None" in (start, end):
            continue
        spans.append((dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)))
    spans.sort()
    gaps: list[tuple[str, float]] = []
    busy_until = spans[0][1] if spans else None
    for start, end in spans[1:]:
        assert busy_until is not None
        if start > busy_until and (start - busy_until).total_seconds() >= 1:
            gaps.append((busy_until.strftime("%H:%M:%S"), (start - busy_until).total_seconds()))
        busy_until = max(busy_until, end)
    return {
        "jobs_accounted": len(spans),
        "idle_gaps": gaps,
        "max_idle_gap_s": max((g for _, g in gaps), default=0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()
    n = args.runs
    os.environ["CCAT_WM_FLOW_WORKERS"] = str(min(n, 1000))  # the setting's largest
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="ccat-bench-prefect-"))
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from bench.common import prefect_database, scratch_database
    from ccat_ops_db import migrate
    from ccat_ops_db import models as m
    from ccat_wm.db import get_engine, normalize_db_url
    from ccat_wm.simulate.register import SimulationRequest, register_simulation
    from ccat_wm.spec.apply import apply_specs
    from ccat_wm.spec.loader import load_spec_files

    with (
        prefect_database(),  # before Prefect is imported (and its server started)
        tempfile.TemporaryDirectory() as tmp,
        scratch_database(f"ccat_wm_slurm_bench_{os.getpid()}") as url,
    ):
        from ccat_wm.cli.driver import run_pipeline

        root = Path(tmp)
        calls_log = counting_path(root)
        loop_s = plain_loop(n, root)
        loop_calls = collections.Counter(calls_log.read_text().split())
        calls_log.unlink()
        os.environ["CCAT_OPS_DB_URL"] = url
        engine = get_engine(normalize_db_url(url))
        migrate.upgrade(engine)
        spec = root / "spec.yaml"
        spec.write_text(SPEC.format(root=root, runs=n))
        with Session(engine) as session, session.begin():
            apply_specs(session, load_spec_files([spec]), user="bench")
            register_simulation(session, SimulationRequest(scans=n, seed=1))
        started_at = dt.datetime.now(dt.UTC)
        start = time.perf_counter()
        result = run_pipeline(engine, "bench")
        flow_s = time.perf_counter() - start
        calls = collections.Counter(calls_log.read_text().split())
        with Session(engine) as session:
            first, last = session.execute(
                select(
                    func.min(m.RunStatusChange.changed_at), func.max(m.RunStatusChange.changed_at)
                ).where(m.RunStatusChange.status == m.RunStatus.SUBMITTED)
            ).one()
            phases = _phases(session)
            run = m.ExecutedReductionStep
            accounted = session.scalar(  # SLURM's accounting reached the run's record
                select(func.count()).where(
                    run.status == m.RunStatus.COMPLETED,
                    run.hpc_job_id.is_not(None),
                    run.processing_time_s.is_not(None),
                    run.cpu_hours.is_not(None),
                )
            )
        completed = sum(1 for r in result.runs if r.status == "COMPLETED")
        engine.dispose()
        idle = idle_gaps(started_at)
    submit_s = (last - first).total_seconds()
    print(f"runs: {n}, completed: {completed}, flow: {flow_s:.1f} s")
    print(f"plain loop of {n} sbatch: {loop_s:.2f} s ({loop_calls['sbatch']} sbatch calls)")
    print(
        f"pipeline: first SUBMITTED to last: {submit_s:.2f} s; ratio to the loop: {submit_s / loop_s:.2f}"
    )
    print(
        f"pipeline: flow start to first attempt {(phases['first_start'] - started_at).total_seconds():.2f} s, "
        f"first attempt to last {(phases['last_start'] - phases['first_start']).total_seconds():.2f} s, "
        f"attempt start to SUBMITTED median {phases['median_start_to_submit_s']:.2f} s"
    )
    print(
        f"cluster idle between the pipeline's jobs ({idle['jobs_accounted']} jobs accounted): "
        + (", ".join(f"{g:.0f} s at {at}" for at, g in idle["idle_gaps"]) or "never 1 s or more")
    )
    print(
        "pipeline invocations: "
        + ", ".join(f"{k} {calls[k]}" for k in ("sbatch", "squeue", "sacct", "scancel"))
    )
    figures = {
        "runs": n,
        "completed": completed,
        "accounted": int(accounted or 0),
        "first_to_last_s": round(submit_s, 2),
        "sbatch_loop_s": round(loop_s, 2),
        "ratio": round(submit_s / loop_s, 2),
        "flow_s": round(flow_s, 1),
        "flow_start_to_last_submit_s": round((last - started_at).total_seconds(), 2),
        "first_to_last_attempt_start_s": round(
            (phases["last_start"] - phases["first_start"]).total_seconds(), 2
        ),
        "median_start_to_submit_s": round(phases["median_start_to_submit_s"], 2),
        **{f"{k}_calls": calls[k] for k in ("sbatch", "squeue", "sacct", "scancel")},
        "max_idle_gap_s": idle["max_idle_gap_s"],
        "idle_gaps": idle["idle_gaps"],
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
