"""Database constraints that make bad states impossible, whatever code writes the rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from tests.db.test_apply import add_run
from tests.helpers import demo_spec_data, locations_data, write_yaml


@pytest.fixture
def demo(engine: Engine, tmp_path: Path) -> Engine:
    path = write_yaml(tmp_path / "spec.yaml", {**locations_data(tmp_path), **demo_spec_data()})
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([path]), user="tester")
    return engine


KEY = "executed_obs_unit=scan-000001"


def test_one_in_flight_run_per_step_and_sub_group(demo: Engine) -> None:
    add_run(demo, "chai-demo", "calibrate", m.RunStatus.COMPLETED, KEY)
    add_run(demo, "chai-demo", "calibrate", m.RunStatus.FAILED, KEY)
    add_run(demo, "chai-demo", "calibrate", m.RunStatus.RUNNING, KEY)
    add_run(demo, "chai-demo", "calibrate", m.RunStatus.PENDING, "executed_obs_unit=scan-000002")
    with pytest.raises(IntegrityError, match="uq_executed_reduction_step_one_in_flight"):
        add_run(demo, "chai-demo", "calibrate", m.RunStatus.PENDING, KEY)


@pytest.mark.parametrize(
    ("sql", "constraint"),
    [
        ("UPDATE executed_reduction_step SET retry_count = -1", "retry_count_non_negative"),
        ("UPDATE executed_reduction_step SET cpu_hours = -0.5", "cpu_hours_non_negative"),
        ("UPDATE executed_reduction_step SET peak_memory_gb = -1", "peak_memory_non_negative"),
        (
            "UPDATE executed_reduction_step SET processing_time_s = -3",
            "processing_time_non_negative",
        ),
        ("UPDATE reduction_step SET cooldown_seconds = -1", "cooldown_non_negative"),
        ("UPDATE reduction_step SET max_retries = -1", "max_retries_non_negative"),
        ("UPDATE reduction_step SET max_concurrent_runs = 0", "max_concurrent_runs_positive"),
        (
            "UPDATE reduction_step SET version_policy = 'exact', pinned_version_id = NULL",
            "exact_needs_pin",
        ),
        (
            "UPDATE reduction_step_config SET resource_requirements = '{\"memory_gb\": -2}'",
            "memory_gb_non_negative",
        ),
        ("UPDATE raw_data_package SET size = -1", "size_non_negative"),
        (
            "UPDATE data_location SET backend = NULL WHERE location_type = 'PROCESSING'",
            "processing_has_backend",
        ),
        (
            "UPDATE data_location SET backend = 'slurm', runtime = 'host' WHERE location_type = 'LONG_TERM_ARCHIVE'",
            "backend_only_for_processing",
        ),
        ("UPDATE reduction_software_version SET is_latest = true", "one_latest"),
        ("UPDATE reduction_step SET name = 'grid'", "uq_reduction_step_pipeline_id"),
        (
            "INSERT INTO pipeline (name, data_grouping_id, processing_location_id, trigger_type, trigger_config, enabled, priority) SELECT name, data_grouping_id, processing_location_id, trigger_type, trigger_config, enabled, priority FROM pipeline",
            "uq_pipeline_name",
        ),
        (
            "INSERT INTO reduction_step_dependency SELECT id, id FROM reduction_step LIMIT 1",
            "no_self_dependency",
        ),
        (
            "INSERT INTO executed_reduction_step_input "
            "(executed_reduction_step_id, raw_data_package_id, checksum) "
            "SELECT 999999, id, checksum FROM raw_data_package LIMIT 1",
            "violates foreign key constraint",
        ),
        (
            "UPDATE executed_reduction_step SET reduction_step_id = 999999",
            "recorded for good",
        ),
        (
            "UPDATE reduction_software_version SET image_kind = 'sif' WHERE tag = '1.4.0'",
            "its image .* never changes",
        ),
        (
            "UPDATE reduction_software_version SET sif_path = '/x.sif' WHERE tag = '1.4.0'",
            "its image .* never changes",
        ),
    ],
)
def test_bad_rows_are_rejected_by_the_database(demo: Engine, sql: str, constraint: str) -> None:
    add_run(demo, "chai-demo", "calibrate", m.RunStatus.COMPLETED, KEY)
    from ccat_wm.simulate.register import SimulationRequest, register_simulation

    with Session(demo) as session, session.begin():
        register_simulation(session, SimulationRequest(scans=1, seed=3))
        # A second version so that "one latest per software" has something to violate.
        sw_id = session.scalars(
            select(m.ReductionSoftware.id).where(m.ReductionSoftware.name == "chai-calibration")
        ).one()
        session.add(
            m.ReductionSoftwareVersion(reduction_software_id=sw_id, tag="1.5.0", is_latest=False)
        )
    with pytest.raises(IntegrityError, match=constraint), demo.begin() as conn:
        conn.execute(text(sql))


def test_the_database_keeps_one_current_run_with_its_product_digest(demo: Engine) -> None:
    first = add_run(demo, "chai-demo", "calibrate", m.RunStatus.COMPLETED, KEY)
    pending = add_run(demo, "chai-demo", "calibrate", m.RunStatus.COLLECTING_RESULTS, KEY)
    with Session(demo) as session, session.begin():
        for kind, checksum in (
            (m.DataProductType.INTERMEDIATE, "a" * 64),
            (m.DataProductType.LOG, "b" * 64),
        ):
            session.add(
                m.DataProduct(
                    executed_reduction_step_id=pending,
                    data_product_type=kind,
                    file_path=f"/p/{kind}",
                    file_size=1,
                    checksum=checksum,
                )
            )
        session.flush()
        session.execute(
            update(m.ExecutedReductionStep)
            .where(m.ExecutedReductionStep.id == pending)
            .values(status=m.RunStatus.COMPLETED)
        )
    with Session(demo) as session:
        old, new = (
            session.get_one(m.ExecutedReductionStep, first),
            session.get_one(m.ExecutedReductionStep, pending),
        )
        assert (old.is_current, new.is_current) == (False, True)
        assert (
            old.product_count == 0 and new.product_count == 1
        )  # the LOG is not an input downstream
        expected = session.scalar(
            text(
                "SELECT ccat_item_hash('p', id, checksum) FROM data_product WHERE data_product_type = 'INTERMEDIATE'"
            )
        )
        assert new.product_hash_sum == expected


@pytest.mark.parametrize(
    ("sql", "constraint"),
    [
        ("UPDATE executed_reduction_step SET status = 'FAILED'", "current_is_completed"),
        (
            "UPDATE executed_reduction_step SET is_current = false, product_count = NULL",
            "completed_has_digest",
        ),
        (
            "INSERT INTO executed_reduction_step (reduction_step_id, reduction_software_version_id, status, sub_group_key, reason, input_fingerprint, config_fingerprint, retry_count, is_current) SELECT reduction_step_id, reduction_software_version_id, 'FAILED', sub_group_key, reason, input_fingerprint, config_fingerprint, 0, true FROM executed_reduction_step",
            "current_is_completed",
        ),
    ],
)
def test_current_runs_are_completed_and_carry_a_digest(
    demo: Engine, sql: str, constraint: str
) -> None:
    add_run(demo, "chai-demo", "calibrate", m.RunStatus.COMPLETED, KEY)
    with pytest.raises(IntegrityError, match=constraint), demo.begin() as conn:
        conn.execute(text(sql))
