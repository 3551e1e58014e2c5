"""Migrations: one head, upgrade from empty, downgrade to base and back with data, models agree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from ccat_ops_db import migrate
from ccat_ops_db.models import Base
from ccat_ops_db.schema_version import HEAD_REVISION, stored_revision
from ccat_wm.simulate.register import SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from tests.db.test_apply import add_run
from tests.helpers import demo_spec_data, locations_data, write_yaml

MakeDb = Callable[[], URL]


def test_single_head_which_the_commands_expect_without_alembic() -> None:
    assert migrate.head_revisions() == (HEAD_REVISION,)


def test_upgrade_from_empty_creates_every_table(make_database: MakeDb) -> None:
    engine = create_engine(make_database())
    assert migrate.current_revision(engine) is None
    assert stored_revision(engine) is None
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revisions()[0]
    assert stored_revision(engine) == HEAD_REVISION
    tables = set(inspect(engine).get_table_names())
    assert {t.name for t in Base.metadata.sorted_tables} <= tables
    engine.dispose()


def test_models_and_migrations_agree(migrated_url: URL) -> None:
    engine = create_engine(migrated_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_downgrade_to_base_and_back_with_data(make_database: MakeDb, tmp_path: Path) -> None:
    engine = create_engine(make_database())
    migrate.upgrade(engine)
    spec = write_yaml(tmp_path / "spec.yaml", {**locations_data(tmp_path), **demo_spec_data()})
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([spec]), user="tester")
        register_simulation(session, SimulationRequest(scans=3, seed=1))
    add_run(engine, "chai-demo", "calibrate", key="executed_obs_unit=scan-000001")

    migrate.downgrade(engine, "base")
    assert migrate.current_revision(engine) is None
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    with engine.connect() as conn:
        enum_types = (
            conn.execute(text("SELECT typname FROM pg_type WHERE typtype = 'e'")).scalars().all()
        )
    assert enum_types == []

    migrate.upgrade(engine)
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([spec]), user="tester")
        result = register_simulation(session, SimulationRequest(scans=2, seed=1))
    assert result.scan_names == ("scan-000001", "scan-000002")
    engine.dispose()


def test_run_status_is_a_named_enum_with_the_eight_statuses(migrated_url: URL) -> None:
    engine = create_engine(migrated_url)
    with engine.connect() as conn:
        labels = (
            conn.execute(
                text(
                    "SELECT enumlabel FROM pg_enum JOIN pg_type ON pg_type.oid = enumtypid "
                    "WHERE typname = 'run_status' ORDER BY enumsortorder"
                )
            )
            .scalars()
            .all()
        )
    engine.dispose()
    assert labels == [
        "PENDING", "STAGING_DATA", "SUBMITTED", "RUNNING",
        "COLLECTING_RESULTS", "COMPLETED", "FAILED", "CANCELLED",
    ]  # fmt: skip


def test_upgrade_to_snapshots_backfills_what_it_can_and_names_the_unknown(
    make_database: MakeDb, tmp_path: Path
) -> None:
    """Runs made before migration 0005 get a `backfilled` snapshot; unknowns are listed."""
    from ccat_ops_db import models as m
    from ccat_wm.gaps.steps import config_fingerprint

    engine = create_engine(make_database())
    migrate.upgrade(engine)
    spec = write_yaml(tmp_path / "spec.yaml", {**locations_data(tmp_path), **demo_spec_data()})
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([spec]), user="tester")
    # Back to 0004 with the pipeline kept; add_run touches only what exists there.
    migrate.downgrade(engine, "0004")
    unchanged = add_run(engine, "chai-demo", "grid", m.RunStatus.COMPLETED, "source=a")
    edited = add_run(engine, "chai-demo", "grid", m.RunStatus.FAILED, "source=b")
    waiting = add_run(engine, "chai-demo", "grid", m.RunStatus.PENDING, "source=c")
    with Session(engine) as session, session.begin():
        step = session.execute(  # the columns 0004 has
            select(
                m.ReductionStep.reduction_step_config_id, m.ReductionStep.reduction_software_id
            ).where(m.ReductionStep.name == "grid")
        ).one()
        c = m.ReductionStepConfig
        config = session.execute(  # the columns 0004 has (no secret_env)
            select(c.config_parameters, c.environment_variables, c.command_template).where(
                c.id == step.reduction_step_config_id
            )
        ).one()
        software = session.get(m.ReductionSoftware, step.reduction_software_id)
        assert software is not None
        session.execute(
            text("UPDATE executed_reduction_step SET config_fingerprint = :f WHERE id = :id"),
            {"f": config_fingerprint(config, software), "id": unchanged},  # type: ignore[arg-type]
        )

    migrate.upgrade(engine)
    with engine.connect() as conn:
        rows = {
            r.executed_reduction_step_id: r
            for r in conn.execute(text("SELECT * FROM run_snapshot")).all()
        }
    assert set(rows) == {unchanged, edited}  # a PENDING run records its own when it starts
    known, unknown = rows[unchanged], rows[edited]
    assert known.origin == unknown.origin == "backfilled"
    assert known.parameters == {"pixel_arcsec": 10} and known.unknown == ["resources"]
    assert known.command_template == ["chai-grid", "--pixel-arcsec", "{pixel_arcsec}"]
    assert known.image_digest and known.image_digest == unknown.image_digest
    assert unknown.parameters is None and unknown.command_template is None
    assert set(unknown.unknown) == {
        "parameters", "environment", "command_template", "image_repository", "resources"
    }  # fmt: skip
    assert waiting not in rows
    engine.dispose()


def test_downgrade_below_image_kinds_turns_podman_locations_into_apptainer(
    make_database: MakeDb, tmp_path: Path
) -> None:
    """0007 down: podman locations become apptainer, image kinds go; up again restores."""
    engine = create_engine(make_database())
    migrate.upgrade(engine)
    data = {**locations_data(tmp_path), **demo_spec_data()}
    data["locations"][1]["runtime"] = "podman"
    spec = write_yaml(tmp_path / "spec.yaml", data)
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([spec]), user="tester")
    migrate.downgrade(engine, "0006")
    with engine.connect() as conn:
        runtime = conn.execute(text("SELECT runtime FROM data_location WHERE name = 'local'"))
        assert runtime.scalar_one() == "apptainer"
        columns = {c["name"] for c in inspect(conn).get_columns("reduction_software_version")}
        assert "image_kind" not in columns and "sif_path" not in columns
    migrate.upgrade(engine)
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([spec]), user="tester")
    with engine.connect() as conn:
        runtime = conn.execute(text("SELECT runtime FROM data_location WHERE name = 'local'"))
        assert runtime.scalar_one() == "podman"
        kinds = conn.execute(text("SELECT DISTINCT image_kind FROM reduction_software_version"))
        assert kinds.scalars().all() == ["oci"]
    engine.dispose()
