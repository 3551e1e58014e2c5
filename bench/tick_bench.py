"""Benchmark of a trigger tick (incremental evaluation) against the full evaluation.

    python bench/tick_bench.py [--packages 1000000] [--pipelines 20] [--repeat 5]

Builds a synthetic ops DB as `plan_bench.py` does (5 packages per scan, 200 obs units,
a completed history for every scan: settled, as the ticks leave it), but with `--pipelines` three-step
pipelines sharing the data (each its own steps and history). Then it times, per
pipeline:

- `full_s`: the full evaluation a tick made before (`load_snapshot` + `evaluate`);
- `tick_unchanged_s`: `evaluate_incremental` when nothing changed since the last tick;
- `tick_1000_new_s`: `evaluate_incremental` after 1,000 new packages (200 new scans of
  a night: 20 consecutive scans per obs unit, 10 obs units);
- `tick_1000_spread_s`: the same with each new scan of another obs unit, so that every
  `grid` sub-group (and `summary`) has new data: the worst case for 200 scans.

Medians over pipelines and repetitions; after each batch of new packages one pipeline's
incremental gaps are checked against its full evaluation. The first tick of each
pipeline builds what it keeps (`rebuild_s`). The last line is one JSON object.
Uses the server of CCAT_OPS_DB_URL (or the embedded one) and a throwaway database.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import scratch_database
from bench.plan_bench import LOAD_OBSERVATIONS, _run_script
from ccat_ops_db import migrate
from ccat_ops_db import models as m
from ccat_wm.db import get_engine, normalize_db_url
from ccat_wm.gaps.evaluate import evaluate
from ccat_wm.gaps.incremental import evaluate_incremental, prune_change_log
from ccat_wm.gaps.snapshot import load_snapshot
from ccat_wm.gaps.steps import load_steps
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files

TARGET_UNCHANGED_S = 0.050
TARGET_NEW_S = 0.250
TARGET_SPEEDUP = 10.0

HISTORY = """
SET LOCAL session_replication_role = replica;
INSERT INTO executed_reduction_step (reduction_step_id, reduction_software_version_id, status,
    is_current, product_count, product_hash_sum, sub_group_key, reason, input_fingerprint,
    config_fingerprint, retry_count, cpu_hours, created_at, finished_at)
  SELECT :calibrate, :v1, 'COMPLETED', true, 0, 0, 'executed_obs_unit=' || e.name, 'new',
         'v1:' || count(*) || ':' || sum(ccat_item_hash('r', p.id, p.checksum)), :f1, 0, 0.1,
         now() - interval '1 day', now() - interval '1 day'
  FROM executed_obs_unit e JOIN raw_data_package p ON p.executed_obs_unit_id = e.id
  WHERE e.id <= :cutoff GROUP BY e.id, e.name;
INSERT INTO data_product (executed_reduction_step_id, data_product_type, file_path, file_size,
    checksum, metadata)
  SELECT id, 'INTERMEDIATE', '/bench/' || id, 10, md5(id::text), '{}'
  FROM executed_reduction_step WHERE reduction_step_id = :calibrate;
UPDATE executed_reduction_step r
  SET product_count = 1, product_hash_sum = ccat_item_hash('p', dp.id, dp.checksum)
  FROM data_product dp
  WHERE dp.executed_reduction_step_id = r.id AND r.reduction_step_id = :calibrate;
INSERT INTO executed_reduction_step (reduction_step_id, reduction_software_version_id, status,
    is_current, product_count, product_hash_sum, sub_group_key, reason, input_fingerprint,
    config_fingerprint, retry_count, cpu_hours, created_at, finished_at)
  SELECT :grid, :v2, 'COMPLETED', true, 0, 0, 'line=' || l.name || '|source=' || s.name, 'new',
         'v1:' || count(*) || ':' || sum(ccat_item_hash('p', dp.id, dp.checksum)), :f2, 0, 1.0,
         now() - interval '20 hours', now() - interval '20 hours'
  FROM data_product dp
  JOIN executed_reduction_step r ON r.id = dp.executed_reduction_step_id
  JOIN executed_obs_unit e ON r.sub_group_key = 'executed_obs_unit=' || e.name
  JOIN obs_unit ou ON ou.id = e.obs_unit_id JOIN source s ON s.id = ou.source_id
  JOIN line l ON l.id = ou.line_id
  WHERE r.reduction_step_id = :calibrate
  GROUP BY s.name, l.name;
INSERT INTO data_product (executed_reduction_step_id, data_product_type, file_path, file_size,
    checksum, metadata)
  SELECT id, 'SCIENCE', '/bench/' || id, 10, md5(id::text), '{}'
  FROM executed_reduction_step WHERE reduction_step_id = :grid;
UPDATE executed_reduction_step r
  SET product_count = 1, product_hash_sum = ccat_item_hash('p', dp.id, dp.checksum)
  FROM data_product dp
  WHERE dp.executed_reduction_step_id = r.id AND r.reduction_step_id = :grid;
INSERT INTO executed_reduction_step (reduction_step_id, reduction_software_version_id, status,
    is_current, product_count, product_hash_sum, sub_group_key, reason, input_fingerprint,
    config_fingerprint, retry_count, cpu_hours, created_at, finished_at)
  SELECT :summary, :v3, 'COMPLETED', true, 0, 0, '', 'new',
         'v1:' || count(*) || ':' || sum(ccat_item_hash('p', dp.id, dp.checksum)), :f3, 0, 2.0,
         now() - interval '10 hours', now() - interval '10 hours'
  FROM data_product dp JOIN executed_reduction_step r ON r.id = dp.executed_reduction_step_id
  WHERE r.reduction_step_id = :grid
"""
"""A completed, current history of one pipeline, bulk-loaded: the database's triggers are
off for the load (`session_replication_role`), so the current-run flags and product
digests they would keep are set here, the way they compute them (migration 0002)."""

NEW_PACKAGES = """
INSERT INTO executed_obs_unit (name, obs_unit_id, start_time, end_time)
  SELECT 'scan-' || lpad(g::text, 7, '0'),
         (SELECT min(id) FROM obs_unit)
           + CASE WHEN :spread THEN (g * 7919) % 200 ELSE (g / 20) % 200 END,
         timestamptz '2026-01-01' + g * interval '5 min',
         timestamptz '2026-01-01' + g * interval '5 min' + interval '4 min'
  FROM generate_series(CAST(:first AS int), CAST(:last AS int)) g;
INSERT INTO raw_data_package (name, executed_obs_unit_id, instrument_module_id, size, checksum,
    metadata, state, created_at)
  SELECT e.name || '-' || im.name, e.id, im.id, 1000000, md5(e.id || '-' || im.id),
         jsonb_build_object('observation', jsonb_build_object('frequency_ghz', 461.04)),
         'ARCHIVED', now() - interval '1 hour'
  FROM executed_obs_unit e CROSS JOIN instrument_module im
  WHERE e.name >= 'scan-' || lpad(CAST(:first AS text), 7, '0')
    AND e.name <= 'scan-' || lpad(CAST(:last AS text), 7, '0');
"""


def spec(pipelines: int) -> dict[str, object]:
    """The location, software, grouping and `pipelines` three-step pipelines."""
    return {
        "locations": [
            {"name": "local", "site": "bench", "location_type": "PROCESSING",
             "backend": "local", "path": "/tmp/bench"},
        ],
        "software": [
            {"name": n, "versions": [{"tag": "1.0.0", "is_latest": True}]}
            for n in ("calib", "grid", "summary")
        ],
        "data_groupings": [{
            "name": "bench",
            "filter_rules": [{"table": "ObservingProgram", "column": "name",
                              "operator": "eq", "value": "bench-survey"}],
        }],
        "pipelines": [
            {
                "name": f"bench{p:02d}",
                "data_grouping": "bench",
                "processing_location": "local",
                "steps": [
                    {"name": "calibrate", "software": "calib", "group_by": ["executed_obs_unit"],
                     "config": {"name": f"c1-{p}", "command": ["c"]}},
                    {"name": "grid", "software": "grid", "depends_on": ["calibrate"],
                     "group_by": ["source", "line"],
                     "config": {"name": f"c2-{p}", "command": ["g"]}},
                    {"name": "summary", "software": "summary", "depends_on": ["grid"],
                     "group_by": [], "config": {"name": f"c3-{p}", "command": ["s"]}},
                ],
            }
            for p in range(1, pipelines + 1)
        ],
    }  # fmt: skip


def build(engine: Engine, packages: int, pipelines: int) -> tuple[int, list[int]]:
    """Load the synthetic ops DB; return (number of scans, pipeline ids)."""
    migrate.upgrade(engine)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(spec(pipelines)))
        with Session(engine) as session, session.begin():
            apply_specs(session, load_spec_files([path]), user="bench")
    scans = packages // 5
    _run_script(engine, LOAD_OBSERVATIONS, {"scans": scans})
    with Session(engine) as session:
        ids = list(session.scalars(select(m.Pipeline.id).order_by(m.Pipeline.name)))
        all_steps = {p: {s.name: s for s in load_steps(session, p)} for p in ids}
    for number, pipeline_id in enumerate(ids, start=1):
        params: dict[str, object] = {"cutoff": scans}  # settled, as ticks leave it
        for index, name in enumerate(("calibrate", "grid", "summary"), start=1):
            step = all_steps[pipeline_id][name]
            assert step.run_version is not None
            params.update(
                {name: step.id, f"v{index}": step.run_version.id,
                 f"f{index}": step.config_fingerprint}
            )  # fmt: skip
        _run_script(engine, HISTORY, params)
        print(f"# history of pipeline {number}/{len(ids)} loaded", flush=True)
    with Session(engine) as session, session.begin():
        session.execute(text("DELETE FROM evaluation_change"))  # the load's own changes
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    return scans, ids


def tick(engine: Engine, pipeline_id: int) -> tuple[float, int]:
    """Seconds of one committed incremental evaluation, and its number of gaps."""
    now = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    with Session(engine) as session, session.begin():
        pipeline = session.get_one(m.Pipeline, pipeline_id)
        gaps = evaluate_incremental(session, pipeline, now).gaps
    return time.perf_counter() - started, len(gaps)


def full(engine: Engine, pipeline_id: int) -> tuple[float, list[object]]:
    """Seconds of the full evaluation (what a tick did before), and its gaps."""
    now = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    with Session(engine) as session, session.begin():
        pipeline = session.get_one(m.Pipeline, pipeline_id)
        gaps = evaluate(load_snapshot(session, pipeline), now)
    return time.perf_counter() - started, list(gaps)


def check_equal(engine: Engine, pipeline_id: int) -> None:
    """Fail unless the incremental gaps are the full evaluation's (at one `now`)."""
    now = dt.datetime.now(dt.UTC)
    with Session(engine) as session, session.begin():
        pipeline = session.get_one(m.Pipeline, pipeline_id)
        incremental = evaluate_incremental(session, pipeline, now).gaps
        expected = evaluate(load_snapshot(session, pipeline), now)
    if incremental != expected:
        raise SystemExit(f"pipeline {pipeline_id}: incremental gaps differ from the full ones")


def add_packages(engine: Engine, first_scan: int, scans: int, *, spread: bool) -> None:
    """Register `scans` new scans (5 packages each), committed.

    A night observes a few fields: 20 consecutive scans per obs unit (200 scans: 10 obs
    units). `spread`: each scan of another obs unit (every `grid` sub-group changes).
    """
    params = {"first": first_scan, "last": first_scan + scans - 1, "spread": spread}
    _run_script(engine, NEW_PACKAGES, params)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--packages", type=int, default=1_000_000)
    parser.add_argument("--pipelines", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with scratch_database(f"ccat_wm_tick_{args.packages}") as url:
        engine = get_engine(normalize_db_url(url))
        try:
            run(engine, args.packages, args.pipelines, args.repeat)
        finally:
            engine.dispose()


def run(engine: Engine, packages: int, pipelines: int, repeat: int) -> None:
    started = time.perf_counter()
    scans, ids = build(engine, packages, pipelines)
    print(f"# loaded in {time.perf_counter() - started:.1f} s", flush=True)
    rebuilds = [tick(engine, p)[0] for p in ids]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))  # as autovacuum would, after the first ticks
    fulls = [full(engine, p)[0] for p in ids[: min(len(ids), 3)] for _ in range(repeat)]
    unchanged: list[float] = []
    new: list[float] = []
    spread: list[float] = []
    next_scan = scans + 1
    for _ in range(repeat):
        unchanged += [tick(engine, p)[0] for p in ids]
        for spread_out, times in ((False, new), (True, spread)):
            add_packages(engine, next_scan, 200, spread=spread_out)
            next_scan += 200
            times += [tick(engine, p)[0] for p in ids]
            check_equal(engine, ids[0])
        with Session(engine) as session, session.begin():
            prune_change_log(session, dt.datetime.now(dt.UTC))
    figures = {
        "packages": packages,
        "pipelines": pipelines,
        "full_s": round(statistics.median(fulls), 4),
        "tick_unchanged_s": round(statistics.median(unchanged), 4),
        "tick_1000_new_s": round(statistics.median(new), 4),
        "tick_1000_spread_s": round(statistics.median(spread), 4),
        "rebuild_s": round(statistics.median(rebuilds), 3),
        "tick_unchanged_max_s": round(max(unchanged), 4),
        "tick_1000_new_max_s": round(max(new), 4),
    }
    figures["speedup_unchanged"] = round(figures["full_s"] / figures["tick_unchanged_s"], 1)
    figures["speedup_1000_new"] = round(figures["full_s"] / figures["tick_1000_new_s"], 1)
    met = (
        figures["tick_unchanged_s"] <= TARGET_UNCHANGED_S
        and figures["tick_1000_new_s"] <= TARGET_NEW_S
        and figures["speedup_1000_new"] >= TARGET_SPEEDUP
    )
    print(
        f"full evaluation {figures['full_s']:.3f} s, tick unchanged "
        f"{figures['tick_unchanged_s'] * 1000:.1f} ms (target {TARGET_UNCHANGED_S * 1000:.0f}),"
        f" tick after 1,000 new packages {figures['tick_1000_new_s'] * 1000:.1f} ms (target "
        f"{TARGET_NEW_S * 1000:.0f}), {figures['speedup_1000_new']}x faster than full (target "
        f"{TARGET_SPEEDUP:.0f}x): targets {'met' if met else 'NOT met'}"
    )
    figures["targets_met"] = met
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
