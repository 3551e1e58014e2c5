"""A wave larger than PostgreSQL's limit of 65,535 parameters per statement."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from tests.gapkit import GapKit

RUN = m.ExecutedReductionStep
EXTRA_SCANS = 69_999
"""Beyond the one simulated scan: 70,000 scans, each a sub-group of the root step."""

BULK_SCANS = """
INSERT INTO executed_obs_unit (name, obs_unit_id, start_time, end_time)
SELECT 'bulk-' || lpad(g::text, 6, '0'), e.obs_unit_id,
       e.start_time + g * interval '1 min', e.end_time + g * interval '1 min'
  FROM executed_obs_unit e, generate_series(1, :n) g
"""
BULK_PACKAGES = """
INSERT INTO raw_data_package
       (name, executed_obs_unit_id, instrument_module_id, size, checksum, metadata, state, created_at)
SELECT e.name || '-pkg', e.id, p.instrument_module_id, p.size, md5(e.name), p.metadata, p.state,
       p.created_at
  FROM executed_obs_unit e
 CROSS JOIN (SELECT * FROM raw_data_package ORDER BY id LIMIT 1) p
 WHERE e.name LIKE 'bulk-%'
"""


def test_70000_new_runs_are_created_and_then_seen_in_flight(engine: Engine, tmp_path: Path) -> None:
    """Run ids and in-flight sub-group keys reach the server as one array parameter each.

    An expanding `IN (...)` list sends one parameter per element, and the protocol allows
    65,535: a reprocessing wave of 100k sub-groups failed in run creation, and every
    later evaluation of the pipeline failed while the runs were in flight.
    """
    kit = GapKit(engine, tmp_path)
    kit.simulate(1)
    with engine.begin() as conn:
        conn.execute(text(BULK_SCANS), {"n": EXTRA_SCANS})
        conn.execute(text(BULK_PACKAGES))
    created = kit.create()
    assert len(created) == EXTRA_SCANS + 1
    assert {r.step for r in created} == {"calibrate"}
    with Session(engine) as session:
        inputs = session.scalar(select(func.count()).select_from(m.ExecutedReductionStepInput))
        assert inputs == EXTRA_SCANS + 2  # the simulated scan has two packages
        unfingerprinted = session.scalar(
            select(func.count()).select_from(RUN).where(RUN.input_fingerprint.is_(None))
        )
        assert unfingerprinted == 0
    # Every scan has a run in flight now: the next evaluation creates nothing.
    assert kit.create() == []
