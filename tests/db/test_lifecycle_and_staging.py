"""Run transitions and staging against the real PostgreSQL (no Prefect)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import shutil
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.execution.context import ProductInput, load_run_context
from ccat_wm.execution.control import cancel_run
from ccat_wm.execution.lifecycle import FINAL, TRANSITIONS, TransitionError, transition
from ccat_wm.execution.staging import StagingError, stage_inputs
from ccat_wm.execution.waves import prepare_wave
from ccat_wm.simulate.register import SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from tests.helpers import demo_spec_data, locations_data, write_yaml

pytestmark = pytest.mark.db
S = m.RunStatus


@pytest.fixture
def run_id(engine: Engine, tmp_path: Path) -> int:
    spec = write_yaml(tmp_path / "spec.yaml", {**locations_data(tmp_path), **demo_spec_data()})
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([spec]), user="tester")
        register_simulation(session, SimulationRequest(scans=1, seed=1))
    with Session(engine) as session, session.begin():
        wave = prepare_wave(
            session, "chai-demo", dt.datetime.now(dt.UTC), claim_as="test", manual=True
        )
    (item,) = [i for i in wave.items if i.run_id is not None]
    assert item.step == "calibrate"
    return item.run_id


def status_of(engine: Engine, run_id: int) -> S:
    with Session(engine) as session:
        return session.get_one(m.ExecutedReductionStep, run_id).status


def test_transitions_follow_the_table_and_refuse_everything_else(
    engine: Engine, run_id: int
) -> None:
    with Session(engine) as session, session.begin():
        transition(session, run_id, S.STAGING_DATA, expected=S.PENDING)
    with (
        Session(engine) as session,
        session.begin(),
        pytest.raises(
            TransitionError,
            match=r"run .* is STAGING_DATA; it can move to STAGING_DATA only from PENDING",
        ),
    ):
        transition(session, run_id, S.STAGING_DATA)  # a second submitter loses
    with (
        Session(engine) as session,
        session.begin(),
        pytest.raises(TransitionError, match="COMPLETED only from COLLECTING_RESULTS"),
    ):
        transition(session, run_id, S.COMPLETED)
    with Session(engine) as session, session.begin():
        transition(session, run_id, S.CANCELLED)
    assert status_of(engine, run_id) is S.CANCELLED
    with (
        Session(engine) as session,
        session.begin(),
        pytest.raises(TransitionError, match="does not exist"),
    ):
        transition(session, 10**9, S.CANCELLED)
    assert TRANSITIONS[S.CANCELLED] == set(S) - FINAL
    assert TRANSITIONS[S.PENDING] == {S.FAILED}


def test_cancel_works_in_every_status_that_is_not_final(engine: Engine, run_id: int) -> None:
    """A run stuck COLLECTING_RESULTS (a collection that hung) can be cancelled too."""
    for target in (S.STAGING_DATA, S.SUBMITTED, S.RUNNING, S.COLLECTING_RESULTS):
        with Session(engine) as session, session.begin():
            transition(session, run_id, target)
    with Session(engine) as session:
        result = cancel_run(session, run_id)
    assert result.previous_status == "COLLECTING_RESULTS"
    assert status_of(engine, run_id) is S.CANCELLED


def test_retry_moves_failed_back_to_pending_and_counts(engine: Engine, run_id: int) -> None:
    for target in (S.STAGING_DATA, S.FAILED, S.PENDING):
        with Session(engine) as session, session.begin():
            transition(session, run_id, target)
    with Session(engine) as session:
        run = session.get_one(m.ExecutedReductionStep, run_id)
        assert (run.status, run.retry_count, run.finished_at) == (S.PENDING, 1, None)
        assert run.started_at is not None


def archive_copy(session: Session, package_id: int) -> Path:
    copy = m.RawDataPackageCopy
    return Path(
        session.scalars(select(copy.path).where(copy.raw_data_package_id == package_id)).one()
    )


def test_staging_verifies_and_records_the_copy_and_gives_a_host_run_its_own(
    engine: Engine, run_id: int
) -> None:
    with Session(engine) as session:
        ctx = load_run_context(session, run_id)
    staged = stage_inputs(engine.begin, ctx)
    (raw,) = staged
    assert raw.kind == "raw" and raw.host_path.parent == ctx.layout.input
    assert hashlib.sha256(raw.host_path.read_bytes()).hexdigest() == raw.checksum
    with Session(engine) as session:
        copy = session.scalars(
            select(m.RawDataPackageCopy).where(
                m.RawDataPackageCopy.data_location_id == ctx.location.id
            )
        ).one()
    assert copy.verified_at is not None and Path(copy.path).parent.name == ".staging"
    # Under the host runtime the run's input is its own read-only copy, not a link.
    assert not Path(copy.path).samefile(raw.host_path)
    assert Path(copy.path).read_bytes() == raw.host_path.read_bytes()
    assert raw.host_path.stat().st_mode & 0o222 == 0


def test_under_a_container_runtime_raw_inputs_are_links_and_products_copies(
    engine: Engine, run_id: int, tmp_path: Path
) -> None:
    """`input/` is bound read-only in a container, `workspace/` is not: a product an
    upstream run made is copied (and checked), a raw package is linked."""
    made = tmp_path / "runs" / "p" / "k" / "run-99" / "workspace" / "up" / "science" / "a.npz"
    made.parent.mkdir(parents=True)
    made.write_bytes(b"upstream product")
    made.chmod(0o444)
    checksum = hashlib.sha256(made.read_bytes()).hexdigest()
    with Session(engine) as session:
        ctx = load_run_context(session, run_id)
    product = ProductInput(1, made, checksum, "INTERMEDIATE", "up", 99, {})
    container = dataclasses.replace(
        ctx,
        location=dataclasses.replace(ctx.location, runtime=m.Runtime.APPTAINER),
        product_inputs=(product,),
    )
    raw, linked = stage_inputs(engine.begin, container)
    with Session(engine) as session:
        staged_copy = session.scalars(
            select(m.RawDataPackageCopy.path).where(
                m.RawDataPackageCopy.data_location_id == ctx.location.id
            )
        ).one()
    assert raw.host_path.samefile(staged_copy)  # a link: input/ is read-only in there
    assert (
        not linked.host_path.samefile(made) and linked.host_path.read_bytes() == b"upstream product"
    )
    assert linked.host_path.stat().st_mode & 0o222 == 0

    made.chmod(0o644)
    made.write_bytes(b"changed after it was recorded")
    with pytest.raises(StagingError, match=r"a\.npz \(product of run 99 \(up\)\) has sha256"):
        stage_inputs(engine.begin, container)


def test_a_corrupt_archive_copy_is_refused_and_removed(engine: Engine, run_id: int) -> None:
    with Session(engine) as session:
        ctx = load_run_context(session, run_id)
        archive_path = archive_copy(session, ctx.raw_inputs[0].package_id)
    archive_path.write_bytes(b"corrupted")
    with pytest.raises(
        StagingError, match=r"checksum mismatch staging package .* the copy was removed"
    ):
        stage_inputs(engine.begin, ctx)
    assert not (ctx.location.path / ".staging" / archive_path.name).exists()


def test_without_a_disk_copy_a_staging_job_is_created_and_awaited(
    engine: Engine, run_id: int, tmp_path: Path
) -> None:
    with Session(engine) as session, session.begin():
        ctx = load_run_context(session, run_id)
        archive_path = archive_copy(session, ctx.raw_inputs[0].package_id)
        session.execute(
            update(m.DataLocation)
            .where(m.DataLocation.name == "archive")
            .values(storage_type=m.StorageType.TAPE)
        )
        ctx = load_run_context(session, run_id)
    saved = tmp_path / "saved.npz"
    shutil.copy(archive_path, saved)

    def transfer_system() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with Session(engine) as session, session.begin():
                job = session.scalars(select(m.StagingJob)).first()
                if job is not None:
                    Path(job.destination_path).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(saved, job.destination_path)
                    job.status = m.StagingStatus.COMPLETED
                    return
            time.sleep(0.1)

    server = threading.Thread(target=transfer_system)
    server.start()
    (raw,) = stage_inputs(engine.begin, ctx, poll_s=0.1)
    server.join()
    assert raw.host_path.read_bytes() == saved.read_bytes()
    with Session(engine) as session:
        job = session.scalars(select(m.StagingJob)).one()
        assert job.executed_reduction_step_id == run_id and job.status is m.StagingStatus.COMPLETED


def test_a_staging_job_that_is_not_served_times_out(engine: Engine, run_id: int) -> None:
    with Session(engine) as session, session.begin():
        session.execute(
            update(m.DataLocation)
            .where(m.DataLocation.name == "archive")
            .values(storage_type=m.StorageType.S3)
        )
        session.execute(
            update(m.DataLocation)
            .where(m.DataLocation.name == "local")
            .values(settings={"staging_timeout_s": 0.3})
        )
        ctx = load_run_context(session, run_id)
    with pytest.raises(
        StagingError, match=r"staging job \d+ for package .* did not complete within 0.3 s"
    ):
        stage_inputs(engine.begin, ctx, poll_s=0.1)


def test_an_unexpected_error_fails_the_run_instead_of_leaving_it_in_flight(
    engine: Engine, run_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ccat_wm.execution import job_end, runner
    from ccat_wm.settings import Settings

    def broken(*args: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(job_end, "scan_outputs", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        runner.RunExecutor(engine, Settings()).execute(run_id)
    with Session(engine) as session:
        run = session.get_one(m.ExecutedReductionStep, run_id)
    assert run.status is S.FAILED
    assert run.failure_reason == "internal error: RuntimeError: disk on fire"
