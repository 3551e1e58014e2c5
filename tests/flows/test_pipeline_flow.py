"""The pipeline flow end to end: real PostgreSQL, the session's Prefect server, host runtime, local backend."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.cli.demo import DEMO_SPEC, demo_locations_file
from ccat_wm.cli.driver import run_pipeline
from ccat_wm.execution.control import product_lineage
from ccat_wm.execution.report import artifact_rows
from ccat_wm.settings import Settings
from ccat_wm.simulate.register import SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from tests.flows.conftest import setup_pipeline, tool_step
from tests.helpers import run_cli, wait_gone, wait_until

pytestmark = [pytest.mark.db, pytest.mark.usefixtures("prefect_server")]
LIFECYCLE = ["PENDING", "STAGING_DATA", "SUBMITTED", "RUNNING", "COLLECTING_RESULTS", "COMPLETED"]


def history(engine: Engine, run_id: int) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.scalars(
                select(m.RunStatusChange.status)
                .where(m.RunStatusChange.executed_reduction_step_id == run_id)
                .order_by(m.RunStatusChange.id)
            )
        )


def runs(engine: Engine) -> list[Any]:
    with Session(engine) as session:
        return session.execute(
            select(m.ExecutedReductionStep, m.ReductionStep.name.label("step"))
            .join(m.ReductionStep)
            .order_by(m.ExecutedReductionStep.id)
        ).all()


def flow_task_runs(flow_run_id: str) -> list[Any]:
    """The task runs of a flow run, as the Prefect server has recorded them so far."""
    with get_client(sync_client=True) as client:
        return list(
            client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        )


def task_run_named(flow_run_id: str, name: str) -> Any:
    """The task run `name` of a flow run once the server recorded its final state (the
    server records task run states in batches, so they arrive after the flow's end)."""
    seen: list[Any] = []

    def final() -> Any:
        seen[:] = [t for t in flow_task_runs(flow_run_id) if t.name == name]
        return next((t for t in seen if t.state.is_final()), None)

    try:
        return wait_until(
            f"task run {name} of flow run {flow_run_id} in a final state", final, timeout=30
        )
    except AssertionError as exc:
        states = [(str(t.id), t.state.type.value, t.state.name, t.state.timestamp) for t in seen]
        every = [(t.name, str(t.id), t.state.name) for t in flow_task_runs(flow_run_id)]
        raise AssertionError(f"{exc}; task runs of that name: {states}; all: {every}") from None


def _run_ended(lines: list[str]) -> bool:
    return any("failed after" in line or "COMPLETED" in line for line in lines)


def task_run_log_lines(
    task_run_id: Any, timeout: float = 20.0, until: Callable[[list[str]], bool] = _run_ended
) -> list[str]:
    """The task run's log messages in the Prefect API, once `until` holds for them (they
    arrive in batches), or what there is after `timeout`."""
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(
                log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id]))
            )
        lines = [log.message for log in logs]
        if until(lines):
            return lines
        time.sleep(0.5)
    return lines


def task_run_names(flow_run_id: str, until: Callable[[set[str]], bool] = bool) -> set[str]:
    """Names of the task runs of a flow run, once `until` holds for them."""
    return wait_until(
        f"the task runs of flow run {flow_run_id}",
        lambda: (names := {t.name for t in flow_task_runs(flow_run_id)}) and until(names) and names,
        timeout=30,
    )


def test_demo_pipeline_runs_every_step_with_products_and_lineage(
    engine: Engine, tmp_path: Path
) -> None:
    settings = Settings(CCAT_WM_HOME=tmp_path / "home")
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([demo_locations_file(settings), DEMO_SPEC]), user="t")
        register_simulation(session, SimulationRequest(scans=4, seed=253))

    result = run_pipeline(engine, "chai-demo")

    assert result.state == "Completed", result.message
    rows = runs(engine)
    steps = [r.step for r in rows]
    assert steps.count("calibrate") == 4 and steps.count("baseline") == 4
    assert steps.count("grid") >= 1
    for row in rows:
        run = row.ExecutedReductionStep
        assert run.status is m.RunStatus.COMPLETED
        assert history(engine, run.id) == LIFECYCLE
        assert run.hpc_job_id and run.execution_command
        assert run.processing_time_s > 0 and run.cpu_hours > 0 and run.peak_memory_gb > 0
    with Session(engine) as conn:
        products = conn.execute(select(m.DataProduct)).scalars().all()
        assert {p.data_product_type for p in products} >= {
            m.DataProductType.SCIENCE,
            m.DataProductType.INTERMEDIATE,
            m.DataProductType.QA_METRIC,
            m.DataProductType.PLOT,
            m.DataProductType.STATISTICS,
            m.DataProductType.LOG,
        }
        for product in products:
            path = Path(product.file_path)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == product.checksum
            assert path.stat().st_size == product.file_size
        cube = next(p for p in products if p.file_path.endswith(".cube.fits"))
        assert cube.metadata_["spectra"] > 1000 * cube.metadata_["scans"]  # an OTF map per scan
        # The cube derives from the raw packages of the scans of its source and line.
        expected = set(
            conn.scalars(
                text(
                    "SELECT p.id FROM raw_data_package p"
                    " JOIN executed_obs_unit e ON e.id = p.executed_obs_unit_id"
                    " JOIN obs_unit o ON o.id = e.obs_unit_id JOIN source s ON s.id = o.source_id"
                    " JOIN line l ON l.id = o.line_id JOIN instrument_module im ON im.id = p.instrument_module_id"
                    " WHERE s.name = :source AND l.name = :line AND im.name = 'LFA'"
                ),
                {"source": cube.metadata_["source"], "line": cube.metadata_["line"]},
            )
        )
        lineage = set(
            conn.scalars(
                select(m.data_product_lineage.c.raw_data_package_id).where(
                    m.data_product_lineage.c.data_product_id == cube.id
                )
            )
        )
        assert lineage == expected and len(expected) == cube.metadata_["scans"]
    names = task_run_names(
        result.flow_run_id,
        until=lambda names: (
            "calibrate[executed_obs_unit=scan-000001]" in names
            and any(n.startswith("grid[line=") for n in names)
        ),
    )
    assert "calibrate[executed_obs_unit=scan-000001]" in names
    assert any(n.startswith("grid[line=") for n in names)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[result.flow_run_id])
            )
        )
    by_type = {a.type: a for a in artifacts if not (a.key or "").endswith("-overview")}
    [overview] = [a for a in artifacts if a.key == "chai-demo-overview"]
    assert "chai-demo at a glance" in str(overview.data) and "| grid | " in str(overview.data)
    table = (
        json.loads(by_type["table"].data)
        if isinstance(by_type["table"].data, str)
        else by_type["table"].data
    )
    assert {row["step"] for row in table} == {"calibrate", "baseline", "grid"}
    assert all(row["status"] == "COMPLETED" and row["job_id"] for row in table)
    assert {row["why"] for row in table} == {"new"}
    assert all(row["started"] <= row["finished"] and row["finished"] for row in table)
    assert all(Path(row["run_dir"], "config", "manifest.json").is_file() for row in table)
    markdown = by_type["markdown"].data
    assert "## Science products" in markdown and ".cube.fits" in markdown
    # Every map is shown inline as a PNG the UI renders (a data URI), with its path.
    maps = [r for r in rows if r.step == "grid"]
    assert markdown.count("](data:image/png;base64,iVBORw0KGgo") == min(len(maps), 6)

    again = run_pipeline(engine, "chai-demo")
    assert again.state == "Completed" and again.runs == []
    assert len(runs(engine)) == len(rows)


def test_failing_sub_group_is_retried_then_failed_while_others_complete(
    engine: Engine, tmp_path: Path
) -> None:
    step = tool_step("reduce", max_retries=2, parameters={"fail_key": "scan-000002"})
    setup_pipeline(engine, tmp_path, [step], scans=3)

    result = run_pipeline(engine, "t")

    assert result.state == "Failed"
    by_key = {r.ExecutedReductionStep.sub_group_key: r.ExecutedReductionStep for r in runs(engine)}
    failed = by_key["executed_obs_unit=scan-000002"]
    assert failed.status is m.RunStatus.FAILED and failed.retry_count == 2
    assert failed.failure_reason == "exit code 3"
    attempt = ["PENDING", "STAGING_DATA", "SUBMITTED", "RUNNING", "COLLECTING_RESULTS", "FAILED"]
    assert history(engine, failed.id) == attempt * 3
    with engine.connect() as conn:
        logs = conn.scalars(
            select(m.DataProduct.file_path).where(
                m.DataProduct.executed_reduction_step_id == failed.id,
                m.DataProduct.data_product_type == m.DataProductType.LOG,
            )
        ).all()
    captured = sorted(p for p in logs if p.endswith(".log") and "attempt-" in Path(p).name)
    assert len(captured) == 3
    assert all("boom: failing on purpose" in Path(p).read_text() for p in captured)
    assert sum(1 for p in logs if p.endswith("tool.log")) == 3
    others = [r for k, r in by_key.items() if k != "executed_obs_unit=scan-000002"]
    assert [r.status for r in others] == [m.RunStatus.COMPLETED] * 2
    # The task run is the run's page: Failed with the reason, the end of the job's log and
    # the log's path as its message; each attempt counted by Prefect; tagged; logged.
    task_run = task_run_named(result.flow_run_id, "reduce[executed_obs_unit=scan-000002]")
    assert task_run.state.type.value == "FAILED" and task_run.run_count == 3
    message = task_run.state.message
    assert message.startswith(
        f"run {failed.id} (reduce[executed_obs_unit=scan-000002]) failed after 3 attempt(s), "
        f"last job {failed.hpc_job_id}: exit code 3"
    )
    assert "exit code 3" in message and "boom: failing on purpose" in message
    assert str(Path(captured[-1])) in message and "Traceback" not in message
    assert set(task_run.tags) == {"step:reduce", "pipeline:t", "location:local"}
    logged = task_run_log_lines(task_run.id)
    who = f"run {failed.id} (reduce[executed_obs_unit=scan-000002])"  # names the data
    attempts = [line for line in logged if line.startswith(f"{who}: attempt")]
    assert [line.split(" (job ")[0] for line in attempts] == [
        f"{who}: attempt {k} of 3" for k in (1, 2, 3)
    ], logged
    assert all(line.endswith(") failed (EXIT_CODE): exit code 3") for line in attempts), attempts
    assert attempts[-1].endswith(f"(job {failed.hpc_job_id}) failed (EXIT_CODE): exit code 3"), (
        attempts
    )
    assert sum("retrying (attempt" in line for line in logged) == 2, logged
    # A large wave's table artifact lists runs that did not complete first.
    with Session(engine) as session:
        shown, total = artifact_rows(session, result.flow_run_id, limit=2)
    assert total == 3 and [r.status for r in shown] == ["FAILED", "COMPLETED"]
    assert shown[0].id == failed.id


def test_a_follow_up_whose_upstream_failed_is_not_run_and_says_so(
    engine: Engine, tmp_path: Path
) -> None:
    """`first[scan 2]` fails: `second[scan 2]` and `third[scan 2]` (two steps down) end
    Cancelled `UpstreamFailed` naming `first[scan 2]`, not a green "not due"; the flow
    run's message counts them apart from the runs (which its runs table counts)."""
    first = tool_step("first", parameters={"fail_key": "scan-000002"})
    second = tool_step("second", depends_on=["first"])
    third = tool_step("third", depends_on=["second"])
    setup_pipeline(engine, tmp_path, [first, second, third], scans=2)

    result = run_pipeline(engine, "t")

    assert result.state == "Failed"
    assert result.message.startswith(
        "1 of 4 sub-group run(s) failed: first[executed_obs_unit=scan-000002]: exit code 3."
        " 2 downstream sub-group(s) were not run: they wait for these."
    ), result.message
    for step in ("second", "third"):
        task_run = task_run_named(result.flow_run_id, f"{step}[executed_obs_unit=scan-000002]")
        assert (task_run.state.type.value, task_run.state.name) == ("CANCELLED", "UpstreamFailed")
        assert task_run.state.message == (
            f"{step}[executed_obs_unit=scan-000002]: not run, because "
            "first[executed_obs_unit=scan-000002] upstream of it failed; it runs once they "
            "complete (press Retry on the flow run)"
        )
    done = task_run_named(result.flow_run_id, "third[executed_obs_unit=scan-000001]")
    assert done.state.type.value == "COMPLETED" and done.state.name == "Completed"


def test_contract_violation_fails_the_run_naming_the_file(engine: Engine, tmp_path: Path) -> None:
    setup_pipeline(engine, tmp_path, [tool_step("reduce", parameters={"mode": "outside"})], scans=1)

    result = run_pipeline(engine, "t")

    assert result.state == "Failed"
    (row,) = runs(engine)
    run = row.ExecutedReductionStep
    assert run.status is m.RunStatus.FAILED
    assert "contract violation" in run.failure_reason and "stray.txt" in run.failure_reason
    with engine.connect() as conn:
        kinds = set(
            conn.scalars(
                select(m.DataProduct.data_product_type).where(
                    m.DataProduct.executed_reduction_step_id == run.id
                )
            )
        )
    assert kinds == {m.DataProductType.LOG}


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        ("fifo", "pipe.fits: a named pipe (FIFO), not a regular file"),
        ("nan-sidecar", "metric.json.meta.json: malformed sidecar, not JSON (NaN is not"),
        ("link-input", "raw-copy.npz: a hard link shared with"),
    ],
)
def test_a_collection_failure_names_the_file_and_keeps_the_log(
    engine: Engine, tmp_path: Path, mode: str, problem: str
) -> None:
    """A FIFO once blocked collection forever; NaN was an internal DataError; a linked input
    was registered as a product (and the archive file made read-only)."""
    setup_pipeline(engine, tmp_path, [tool_step("reduce", parameters={"mode": mode})], scans=1)
    archive_modes = {p: p.stat().st_mode for p in (tmp_path / "archive").rglob("*.npz")}

    result = run_pipeline(engine, "t")

    assert result.state == "Failed"
    (row,) = runs(engine)
    run = row.ExecutedReductionStep
    assert run.status is m.RunStatus.FAILED
    assert problem in run.failure_reason and "internal error" not in run.failure_reason
    with engine.connect() as conn:
        logs = conn.scalars(
            select(m.DataProduct.file_path).where(
                m.DataProduct.executed_reduction_step_id == run.id
            )
        ).all()
    assert any(path.endswith("reduce-attempt-1.log") for path in logs), logs
    assert "tool " + mode in Path(next(p for p in logs if p.endswith(".log"))).read_text()
    assert {p: p.stat().st_mode for p in archive_modes} == archive_modes


def test_nothing_the_job_left_running_rewrites_a_registered_product(
    engine: Engine, tmp_path: Path
) -> None:
    step = tool_step("reduce", parameters={"mode": "leave-writers"})
    setup_pipeline(engine, tmp_path, [step], scans=1)

    result = run_pipeline(engine, "t")

    assert result.state == "Completed", result.message
    # Once the leftovers are gone (killed, or done writing a second after the job's end),
    # a write of theirs cannot be missed.
    wait_gone(str(tmp_path / "runs"))  # they name the product they append to
    with engine.connect() as conn:
        products = conn.execute(
            select(m.DataProduct.file_path, m.DataProduct.file_size, m.DataProduct.checksum)
        ).all()
    assert products
    for path, size, checksum in products:
        data = Path(path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, checksum), path


def test_lineage_finds_a_product_by_its_stored_and_its_real_path_under_a_symlink(
    engine: Engine, tmp_path: Path
) -> None:
    real = tmp_path / "real-runs"
    real.mkdir()
    (tmp_path / "runs-link").symlink_to(real)
    location = {
        "site": "test",
        "location_type": "PROCESSING",
        "backend": "local",
        "path": str(tmp_path / "elsewhere" / ".." / "runs-link"),  # stored normalized
    }
    setup_pipeline(engine, tmp_path, [tool_step("reduce")], scans=1, location=location)

    assert run_pipeline(engine, "t").state == "Completed"

    with Session(engine) as session:
        stored = session.scalar(
            select(m.DataProduct.file_path).where(m.DataProduct.file_path.like("%result.json"))
        )
        assert stored is not None and stored.startswith(str(tmp_path / "runs-link") + "/")
        real_path = str(Path(stored).resolve())
        assert real_path.startswith(str(real))
        for given in (stored, real_path, os.path.relpath(real_path)):
            assert product_lineage(session, given).file_path == stored, given


def test_a_flow_that_cannot_start_its_wave_leaves_no_run_pending(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injected where Prefect once failed to create task runs (a name it rejects):
    the runs the flow run claimed are cancelled with the reason, and are gaps again."""
    import flows.pipeline

    setup_pipeline(engine, tmp_path, [tool_step("reduce")], scans=2)

    def cannot_start(*args: object) -> None:
        raise RuntimeError("the task runs could not be created")

    monkeypatch.setattr(flows.pipeline, "_run_wave", cannot_start)
    result = run_pipeline(engine, "t")
    monkeypatch.undo()

    assert result.state == "Failed"
    rows = [r.ExecutedReductionStep for r in runs(engine)]
    assert [r.status for r in rows] == [m.RunStatus.CANCELLED] * 2
    for run in rows:
        assert run.failure_reason == (
            f"flow run {result.flow_run_id} failed before starting it: "
            "unexpected RuntimeError: the task runs could not be created"
        )
    again = run_pipeline(engine, "t")  # the sub-groups are gaps again: new runs do them
    assert again.state == "Completed", again.message
    assert sorted(r.ExecutedReductionStep.status for r in runs(engine)) == sorted(
        [m.RunStatus.CANCELLED] * 2 + [m.RunStatus.COMPLETED] * 2
    )


def test_config_values_reach_the_program_as_literal_arguments(
    engine: Engine, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    nasty = f"$(touch {marker})"
    setup_pipeline(
        engine,
        tmp_path,
        [tool_step("reduce", parameters={"arg": nasty, "fail_key": "; rm -rf"})],
        scans=1,
    )

    result = run_pipeline(engine, "t")

    assert result.state == "Completed", result.message
    with engine.connect() as conn:
        path = conn.scalar(
            select(m.DataProduct.file_path).where(m.DataProduct.file_path.like("%result.json"))
        )
    argv = json.loads(Path(path).read_text())["argv"]
    assert argv[argv.index("--arg") + 1] == nasty
    assert argv[argv.index("--fail-key") + 1] == "; rm -rf"
    assert not marker.exists()


def test_step_concurrency_never_exceeds_max_concurrent_runs(engine: Engine, tmp_path: Path) -> None:
    track = tmp_path / "track"
    track.mkdir()
    step = tool_step(
        "reduce", max_concurrent_runs=2, parameters={"track": str(track), "sleep": 1.0}
    )
    setup_pipeline(engine, tmp_path, [step], scans=6)

    result = run_pipeline(engine, "t")

    assert result.state == "Completed", result.message
    events = []
    for line in (track / "events.log").read_text().splitlines():
        kind, moment, *_ = line.split()
        events.append((float(moment), 1 if kind == "start" else -1))
    running = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        running += delta
        peak = max(peak, running)
    assert len(events) == 12
    assert peak == 2


def test_a_downstream_run_starts_without_waiting_for_unrelated_upstream_sub_groups(
    engine: Engine, tmp_path: Path
) -> None:
    """`second[scan 1]` needs only `first[scan 1]`: it runs to its end while
    `first[scan 2]` is still held in flight, not after the whole upstream step."""
    release = tmp_path / "release"
    first = tool_step("first", parameters={"hold_key": "scan-000002", "arg": str(release)})
    second = tool_step("second", depends_on=["first"])
    setup_pipeline(engine, tmp_path, [first, second], scans=2)

    def statuses() -> dict[tuple[str, str], m.RunStatus]:
        return {
            (r.step, r.ExecutedReductionStep.sub_group_key.split("=")[1]):
            r.ExecutedReductionStep.status
            for r in runs(engine)
        }  # fmt: skip

    flow = threading.Thread(target=lambda: run_pipeline(engine, "t"))
    flow.start()
    try:
        wait_until(
            "first[scan-000002] RUNNING (held)",
            lambda: statuses().get(("first", "scan-000002")) is m.RunStatus.RUNNING,
            timeout=120,
        )
        seen = wait_until(
            "second[scan-000001] COMPLETED while first[scan-000002] is held",
            lambda: (
                (now := statuses()).get(("second", "scan-000001")) is m.RunStatus.COMPLETED and now
            ),
            timeout=120,
        )
        assert seen[("first", "scan-000002")] is m.RunStatus.RUNNING, seen
    finally:
        release.touch()
        flow.join(timeout=120)
    assert not flow.is_alive()
    assert set(statuses().values()) == {m.RunStatus.COMPLETED}


def test_cancel_stops_the_process_and_marks_the_run_cancelled(
    engine: Engine, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    track = tmp_path / "track"
    track.mkdir()
    setup_pipeline(
        engine,
        tmp_path,
        [tool_step("reduce", parameters={"sleep": 120, "track": str(track)})],
        scans=1,
    )
    outcome: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: outcome.update(result=run_pipeline(engine, "t")))
    worker.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = runs(engine)
        if (
            rows
            and rows[0].ExecutedReductionStep.status is m.RunStatus.RUNNING
            and (track / "events.log").exists()
        ):
            break
        time.sleep(0.2)
    run = runs(engine)[0].ExecutedReductionStep
    # The job's processes as the host sees them (inside its PID namespace it is pid 2).
    job = [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(track) in " ".join(p.info["cmdline"] or [])
    ]
    assert run.status is m.RunStatus.RUNNING and job

    cancelled = run_cli(cli_env, "cancel", str(run.id))

    assert cancelled.returncode == 0, cancelled.stderr
    assert f"run {run.id} cancelled (was RUNNING)" in cancelled.stdout
    worker.join(timeout=60)
    assert not worker.is_alive()
    for process in job:
        with contextlib.suppress(psutil.NoSuchProcess):  # gone, or a zombie not reaped yet
            assert process.status() == psutil.STATUS_ZOMBIE, process
    run = runs(engine)[0].ExecutedReductionStep
    assert run.status is m.RunStatus.CANCELLED
    assert history(engine, run.id)[-1] == "CANCELLED"
    again = run_cli(cli_env, "cancel", str(run.id))
    assert again.returncode == 1 and "is CANCELLED" in again.stderr


def test_a_wave_larger_than_the_task_run_budget_goes_out_in_several_flow_runs(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CCAT_WM_MAX_TASK_RUNS", "10")
    setup_pipeline(engine, tmp_path, [tool_step("reduce")], scans=9)

    result = run_pipeline(engine, "t")

    assert result.state == "Completed", result.message
    assert [r.status for r in result.runs] == ["COMPLETED"] * 9
    with get_client(sync_client=True) as client:
        parent = client.read_flow_run(result.flow_run_id)
        children = [
            f for f in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])
                )
            )
            if f.name.startswith(f"{parent.name} part ")
        ]  # fmt: skip
        # The parts are flow runs of the pipeline's own flow, as the parent is.
        assert {f.flow_id for f in children} == {parent.flow_id}

    def sizes() -> dict[str, int]:
        return {
            f.name.removeprefix(parent.name).strip(): len(flow_task_runs(str(f.id)))
            for f in children
        }

    wait_until("6 and 3 task runs in the parts", lambda: sizes() == {"part 1": 6, "part 2": 3}, 30)
    assert len(task_run_names(result.flow_run_id)) <= 10


def test_a_missing_concurrency_limit_is_an_error_not_no_limit() -> None:
    from ccat_wm.errors import ConfigurationError
    from tasks.slots import StepSlots

    slots = StepSlots("ccat-step:nope:x", remaining=1, limit=1)
    with (
        pytest.raises(ConfigurationError, match="limit 'ccat-step:nope:x' does not exist"),
        slots.slot(),
    ):
        pass


def test_slots_reserved_together_are_one_lease_kept_while_any_is_needed() -> None:
    """`reserve` takes what the limit has free (halving), as one lease; it goes back whole."""
    from tasks.slots import StepSlots

    name = "ccat-step:slots-test:reduce"

    def active() -> int:
        with get_client(sync_client=True) as client:
            return client.read_global_concurrency_limit_by_name(name).active_slots

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 5)
        other = client.increment_concurrency_slots_with_lease([name], 2, "concurrency", 60)
    slots = StepSlots(name, remaining=4, limit=5)

    assert slots.reserve([11, 12, 13, 14]) == [11, 12]  # 4 asked, 3 free: 2 in one lease
    assert active() == 4
    with slots.slot(11):
        pass
    with slots.slot(13):  # the lease's free slot: no new one
        assert active() == 4
    with slots.slot(12):
        pass
    assert active() == 4  # one run of the step is still to start
    slots.skip()
    assert active() == 2
    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(other.json()["lease_id"])
    assert active() == 0


def test_task_run_tags_can_be_turned_off(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`CCAT_WM_TASK_RUN_TAGS=false`: no tags, so no concurrency check per task run."""
    monkeypatch.setenv("CCAT_WM_TASK_RUN_TAGS", "false")
    setup_pipeline(engine, tmp_path, [tool_step("reduce")], scans=1)

    result = run_pipeline(engine, "t")

    assert result.state == "Completed", result.message
    task_run = task_run_named(result.flow_run_id, "reduce[executed_obs_unit=scan-000001]")
    assert task_run.tags == []
