"""Benchmark of `plan` against a hand-written lower bound, at 10k, 100k and 1M packages.

    python bench/plan_bench.py [--sizes 10000,100000,1000000] [--repeat 11]

Builds a synthetic ops DB per size (about 5 packages per scan, 50 sources, 4 lines,
one three-step pipeline per scan -> per source+line -> all, a completed history for
90 % of the scans), then times `make_plan` for the pipeline and one hand-written SQL
query that computes only the root step's gaps as `plan` reports them (sub-group,
reason, number of inputs, newest change; runs in flight excluded): the lower bound.
They alternate; it prints medians and their ratio. Uses the server of CCAT_OPS_DB_URL (or the embedded
one) and a throwaway database per size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import scratch_database
from ccat_ops_db import migrate
from ccat_ops_db import models as m
from ccat_wm.db import get_engine, normalize_db_url
from ccat_wm.gaps.evaluate import evaluate
from ccat_wm.gaps.model import StepInfo
from ccat_wm.gaps.plan import make_plan
from ccat_wm.gaps.snapshot import load_snapshot
from ccat_wm.gaps.steps import load_steps
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files

SPEC = """
locations:
  - {name: local, site: bench, location_type: PROCESSING, backend: local, path: /tmp/bench}
software:
  - {name: calib, versions: [{tag: "1.0.0", is_latest: true}]}
  - {name: grid, versions: [{tag: "1.0.0", is_latest: true}]}
  - {name: summary, versions: [{tag: "1.0.0", is_latest: true}]}
data_groupings:
  - name: bench
    filter_rules: [{table: ObservingProgram, column: name, operator: eq, value: bench-survey}]
pipelines:
  - name: bench
    data_grouping: bench
    processing_location: local
    steps:
      - {name: calibrate, software: calib, group_by: [executed_obs_unit], config: {name: c1, command: [c]}}
      - {name: grid, software: grid, depends_on: [calibrate], group_by: [source, line], config: {name: c2, command: [g]}}
      - {name: summary, software: summary, depends_on: [grid], group_by: [], config: {name: c3, command: [s]}}
"""

LOAD_OBSERVATIONS = """
INSERT INTO instrument (name, description) VALUES ('BENCH', '');
INSERT INTO instrument_module (instrument_id, name, description)
  SELECT i.id, 'M' || g, '' FROM instrument i, generate_series(1, 5) g;
INSERT INTO observing_program (name, description) VALUES ('bench-survey', '');
INSERT INTO source (name) SELECT 'SRC' || g FROM generate_series(1, 50) g;
INSERT INTO line (name, rest_frequency_ghz) SELECT 'L' || g, 400 + g FROM generate_series(1, 4) g;
INSERT INTO obs_unit (name, source_id, line_id, observing_program_id)
  SELECT 'OU-' || s.id || '-' || l.id, s.id, l.id, p.id FROM source s, line l, observing_program p;
INSERT INTO executed_obs_unit (name, obs_unit_id, start_time, end_time)
  SELECT 'scan-' || lpad(g::text, 7, '0'), (SELECT min(id) FROM obs_unit) + (g * 7919) % 200,
         timestamptz '2026-01-01' + g * interval '5 min', timestamptz '2026-01-01' + g * interval '5 min' + interval '4 min'
  FROM generate_series(1, :scans) g;
INSERT INTO raw_data_package (name, executed_obs_unit_id, instrument_module_id, size, checksum, metadata, state, created_at)
  SELECT e.name || '-' || im.name, e.id, im.id, 1000000, md5(e.id || '-' || im.id),
         jsonb_build_object('observation', jsonb_build_object('frequency_ghz', 461.04)), 'ARCHIVED',
         now() - interval '2 days'
  FROM executed_obs_unit e CROSS JOIN instrument_module im;
"""

LOAD_HISTORY = """
INSERT INTO executed_reduction_step (reduction_step_id, reduction_software_version_id, status, sub_group_key, reason,
    input_fingerprint, config_fingerprint, retry_count, cpu_hours, created_at, finished_at)
  SELECT :calibrate, :v1, 'COLLECTING_RESULTS', 'executed_obs_unit=' || e.name, 'new',
         'v1:' || count(*) || ':' || sum(ccat_item_hash('r', p.id, p.checksum)), :f1, 0, 0.1,
         now() - interval '1 day', now() - interval '1 day'
  FROM executed_obs_unit e JOIN raw_data_package p ON p.executed_obs_unit_id = e.id
  WHERE e.id <= :cutoff GROUP BY e.id, e.name;
INSERT INTO data_product (executed_reduction_step_id, data_product_type, file_path, file_size, checksum, metadata)
  SELECT id, 'INTERMEDIATE', '/bench/' || id, 10, md5(id::text), '{}' FROM executed_reduction_step;
UPDATE executed_reduction_step SET status = 'COMPLETED' WHERE reduction_step_id = :calibrate;
INSERT INTO executed_reduction_step (reduction_step_id, reduction_software_version_id, status, sub_group_key, reason,
    input_fingerprint, config_fingerprint, retry_count, cpu_hours, created_at, finished_at)
  SELECT :grid, :v2, 'COLLECTING_RESULTS', 'line=' || l.name || '|source=' || s.name, 'new',
         'v1:' || count(*) || ':' || sum(ccat_item_hash('p', dp.id, dp.checksum)), :f2, 0, 1.0,
         now() - interval '20 hours', now() - interval '20 hours'
  FROM data_product dp
  JOIN executed_reduction_step r ON r.id = dp.executed_reduction_step_id
  JOIN executed_obs_unit e ON r.sub_group_key = 'executed_obs_unit=' || e.name
  JOIN obs_unit ou ON ou.id = e.obs_unit_id JOIN source s ON s.id = ou.source_id JOIN line l ON l.id = ou.line_id
  GROUP BY s.name, l.name;
INSERT INTO data_product (executed_reduction_step_id, data_product_type, file_path, file_size, checksum, metadata)
  SELECT id, 'SCIENCE', '/bench/' || id, 10, md5(id::text), '{}' FROM executed_reduction_step WHERE reduction_step_id = :grid;
UPDATE executed_reduction_step SET status = 'COMPLETED' WHERE reduction_step_id = :grid;
INSERT INTO executed_reduction_step (reduction_step_id, reduction_software_version_id, status, sub_group_key, reason,
    input_fingerprint, config_fingerprint, retry_count, cpu_hours, created_at, finished_at)
  SELECT :summary, :v3, 'COMPLETED', '', 'new',
         'v1:' || count(*) || ':' || sum(ccat_item_hash('p', dp.id, dp.checksum)), :f3, 0, 2.0,
         now() - interval '10 hours', now() - interval '10 hours'
  FROM data_product dp JOIN executed_reduction_step r ON r.id = dp.executed_reduction_step_id
  WHERE r.reduction_step_id = :grid;
"""

LOWER_BOUND = """
WITH sel AS (
  SELECT p.id, p.checksum, p.created_at, e.name AS scan
  FROM raw_data_package p
  JOIN executed_obs_unit e ON e.id = p.executed_obs_unit_id
  JOIN obs_unit ou ON ou.id = e.obs_unit_id
  JOIN observing_program op ON op.id = ou.observing_program_id
  WHERE op.name = 'bench-survey'),
agg AS (
  SELECT 'executed_obs_unit=' || scan AS key, count(*) AS inputs, max(created_at) AS last_change,
         'v1:' || count(*) || ':' || sum(hashtextextended('r' || id || ':' || checksum, 0)) AS fp
  FROM sel GROUP BY scan),
cur AS (
  SELECT sub_group_key, input_fingerprint, config_fingerprint, reduction_software_version_id
  FROM executed_reduction_step WHERE reduction_step_id = :calibrate AND is_current)
SELECT agg.key,
       CASE WHEN cur.sub_group_key IS NULL THEN 'new'
            WHEN cur.reduction_software_version_id <> :version THEN 'version_changed'
            WHEN cur.config_fingerprint <> :config THEN 'config_changed'
            ELSE 'inputs_changed' END AS reason,
       agg.inputs, agg.last_change
FROM agg LEFT JOIN cur ON cur.sub_group_key = agg.key
WHERE (cur.sub_group_key IS NULL OR cur.input_fingerprint <> agg.fp
       OR cur.config_fingerprint <> :config OR cur.reduction_software_version_id <> :version)
  AND NOT EXISTS (SELECT 1 FROM executed_reduction_step r
                  WHERE r.reduction_step_id = :calibrate AND r.sub_group_key = agg.key
                    AND r.status IN ('PENDING', 'STAGING_DATA', 'SUBMITTED', 'RUNNING', 'COLLECTING_RESULTS'))
"""


def _run_script(engine: Engine, script: str, params: dict[str, object]) -> None:
    with engine.begin() as conn:
        for statement in (s.strip() for s in script.split(";")):
            if statement:
                used = {k: v for k, v in params.items() if f":{k}" in statement}
                conn.execute(text(statement), used)


def build(engine: Engine, packages: int) -> tuple[StepInfo, float]:
    """Load the synthetic ops DB; return (the root step, load seconds)."""
    started = time.perf_counter()
    migrate.upgrade(engine)
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "bench.yaml"
        spec.write_text(SPEC)
        with Session(engine) as session, session.begin():
            apply_specs(session, load_spec_files([spec]), user="bench")
    scans = packages // 5
    _run_script(engine, LOAD_OBSERVATIONS, {"scans": scans})
    with Session(engine) as session:
        pipeline_id = session.scalar(text("SELECT id FROM pipeline WHERE name = 'bench'"))
        steps = {s.name: s for s in load_steps(session, int(pipeline_id or 0))}
    params: dict[str, object] = {"cutoff": int(scans * 0.9)}
    for index, name in enumerate(("calibrate", "grid", "summary"), start=1):
        step = steps[name]
        assert step.run_version is not None
        params.update(
            {name: step.id, f"v{index}": step.run_version.id, f"f{index}": step.config_fingerprint}
        )
    _run_script(engine, LOAD_HISTORY, params)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    return steps["calibrate"], time.perf_counter() - started


def time_plan(engine: Engine) -> tuple[float, float, int]:
    """Seconds for a whole plan, seconds for the snapshot alone, number of gaps."""
    now = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    with Session(engine) as session, session.begin():
        plan = make_plan(session, now, "bench")
    total = time.perf_counter() - started
    started = time.perf_counter()
    with Session(engine) as session, session.begin():
        pipeline = session.get_one(m.Pipeline, 1)
        snapshot = load_snapshot(session, pipeline)
    loaded = time.perf_counter() - started
    evaluate(snapshot, now)
    return total, loaded, len(plan.gaps)


def time_lower_bound(engine: Engine, root: StepInfo) -> tuple[float, int]:
    """Seconds and rows of the hand-written query for the root step's gaps."""
    assert root.run_version is not None
    params = {
        "calibrate": root.id,
        "version": root.run_version.id,
        "config": root.config_fingerprint,
    }
    started = time.perf_counter()
    with engine.connect() as conn:
        rows = conn.execute(text(LOWER_BOUND), params).all()
    return time.perf_counter() - started, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--repeat", type=int, default=11)
    args = parser.parse_args()
    print(
        f"{'packages':>9} {'load s':>7} {'gaps':>6} {'root gaps':>9} {'plan s':>7} {'snapshot s':>10} {'lower bound s':>13} {'ratio':>6}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        with scratch_database(f"ccat_wm_bench_{size}") as url:
            engine = get_engine(normalize_db_url(url))  # as the CLI makes it
            try:
                run_size(engine, size, args.repeat)
            finally:
                engine.dispose()


def run_size(engine: Engine, size: int, repeat: int) -> None:
    root, load_s = build(engine, size)
    plans, snaps, lows = [], [], []
    time_plan(engine)  # warm caches once, as a long-running service would be
    for _ in range(repeat):
        plan_s, snap_s, gaps = time_plan(engine)
        low_s, root_gaps = time_lower_bound(engine, root)
        plans.append(plan_s)
        snaps.append(snap_s)
        lows.append(low_s)
    plan_med, low_med = statistics.median(plans), statistics.median(lows)
    print(
        f"{size:>9} {load_s:>7.1f} {gaps:>6} {root_gaps:>9} {plan_med:>7.3f} "
        f"{statistics.median(snaps):>10.3f} {low_med:>13.3f} {plan_med / low_med:>6.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
