"""`ccat-wm apply`: create, update in place, idempotence, dry-run, files referring to each other."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.changes import Change
from ccat_wm.spec.loader import load_spec_files
from tests.helpers import demo_spec_data, locations_data, run_cli, snapshot, write_yaml


def add_run(
    engine: Engine,
    pipeline: str,
    step: str,
    status: m.RunStatus = m.RunStatus.COMPLETED,
    key: str = "",
) -> int:
    """Insert a run of `pipeline.step` with the software's latest version; return its id."""
    with Session(engine) as session, session.begin():
        step_row = session.execute(  # columns only: older schemas (migration tests) lack some
            select(m.ReductionStep.id, m.ReductionStep.reduction_software_id)
            .join(m.Pipeline)
            .where(m.Pipeline.name == pipeline, m.ReductionStep.name == step)
        ).one()
        version_id = session.scalars(  # the id only: older schemas (migration tests) lack columns
            select(m.ReductionSoftwareVersion.id).where(
                m.ReductionSoftwareVersion.reduction_software_id == step_row.reduction_software_id,
                m.ReductionSoftwareVersion.is_latest,
            )
        ).one()
        run = m.ExecutedReductionStep
        return session.execute(  # the columns every schema since 0001 has
            insert(run)
            .values(
                reduction_step_id=step_row.id,
                reduction_software_version_id=version_id,
                status=status,
                sub_group_key=key,
                reason=m.GapReason.NEW,
                input_fingerprint="f" * 64,
                config_fingerprint="c" * 64,
                retry_count=0,
            )
            .returning(run.id)
        ).scalar_one()


def _apply(engine: Engine, *paths: Path) -> list[Change]:
    with Session(engine) as session:
        changes = apply_specs(session, load_spec_files(list(paths)), user="tester")
        session.commit()
    return changes


def test_apply_creates_every_object(engine: Engine, tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "spec.yaml", {**locations_data(tmp_path), **demo_spec_data()})
    changes = _apply(engine, path)
    kinds = {(c.action, c.kind) for c in changes}
    assert ("create", "pipeline") in kinds and ("create", "step") in kinds
    # Only real changes: a new step's upstream steps are part of its creation, not an update.
    assert not [c for c in changes if c.action == "update"], [c.render() for c in changes]
    [grid] = [c for c in changes if c.name == "chai-demo.grid"]
    assert grid.render() == "+ step chai-demo.grid (depends_on: ['baseline'])"
    with Session(engine) as session:
        pipeline = session.scalars(select(m.Pipeline)).one()
        assert pipeline.name == "chai-demo" and pipeline.priority == 10
        assert pipeline.trigger_type is m.TriggerType.CONTINUOUS
        steps = session.scalars(select(m.ReductionStep).order_by(m.ReductionStep.step_order)).all()
        assert [s.name for s in steps] == ["calibrate", "baseline", "grid"]
        assert steps[2].group_by == ["source", "line"] and steps[2].max_wait_seconds == 86400
        deps = session.execute(select(m.reduction_step_dependency)).all()
        assert sorted(deps) == sorted([(steps[1].id, steps[0].id), (steps[2].id, steps[1].id)])
        config = session.get(m.ReductionStepConfig, steps[0].reduction_step_config_id)
        assert config is not None and config.command_template == [
            "chai-calibrate",
            "--mode",
            "{calibration_mode}",
        ]
        assert config.resource_requirements == {
            "cpu": 1.0,
            "memory_gb": 1.0,
            "time_hours": 0.5,
            "gpu": 0,
        }
        local = session.scalars(select(m.DataLocation).where(m.DataLocation.name == "local")).one()
        assert local.backend is m.Backend.LOCAL and local.runtime is m.Runtime.HOST
        user = session.get(m.User, pipeline.created_by_user_id)
        assert user is not None and user.username == "tester"


def test_applying_the_same_file_twice_changes_nothing(engine: Engine, tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "spec.yaml", {**locations_data(tmp_path), **demo_spec_data()})
    _apply(engine, path)
    before = snapshot(engine)
    assert _apply(engine, path) == []
    assert snapshot(engine) == before


def test_edited_file_updates_rows_in_place_and_keeps_history(
    engine: Engine, tmp_path: Path
) -> None:
    path = write_yaml(tmp_path / "spec.yaml", {**locations_data(tmp_path), **demo_spec_data()})
    _apply(engine, path)
    run_id = add_run(engine, "chai-demo", "calibrate", key="executed_obs_unit=scan-000001")
    with Session(engine) as session:
        ids_before = dict(session.execute(select(m.ReductionStep.name, m.ReductionStep.id)).all())
        pipeline_id = session.scalars(select(m.Pipeline.id)).one()

    spec = {**locations_data(tmp_path), **demo_spec_data()}
    spec["pipelines"][0]["priority"] = 20
    spec["pipelines"][0]["steps"][0]["config"]["parameters"] = {"calibration_mode": "sky_hot"}
    spec["software"][0]["versions"].append({"tag": "2.0.0", "is_latest": True})
    spec["software"][0]["versions"][0]["is_latest"] = False
    spec["pipelines"][0]["steps"][2]["depends_on"] = ["calibrate", "baseline"]
    changes = _apply(engine, write_yaml(path, spec))

    rendered = [c.render() for c in changes]
    assert "~ pipeline chai-demo (priority: 10 -> 20)" in rendered
    assert any(r.startswith("~ config chai-demo-hot-cold (config_parameters:") for r in rendered)
    assert "+ software version chai-calibration:2.0.0" in rendered
    assert "~ software version chai-calibration:1.4.0 (is_latest: True -> False)" in rendered
    assert (
        "~ step chai-demo.grid (depends_on: ['baseline'] -> ['baseline', 'calibrate'])" in rendered
    )
    with Session(engine) as session:
        assert (
            dict(session.execute(select(m.ReductionStep.name, m.ReductionStep.id)).all())
            == ids_before
        )
        assert session.scalars(select(m.Pipeline.id)).one() == pipeline_id
        run = session.get(m.ExecutedReductionStep, run_id)
        assert run is not None and run.reduction_step_id == ids_before["calibrate"]
        latest = session.scalars(
            select(m.ReductionSoftwareVersion.tag)
            .where(m.ReductionSoftwareVersion.is_latest)
            .join(m.ReductionSoftware)
            .where(m.ReductionSoftware.name == "chai-calibration")
        ).one()
        assert latest == "2.0.0"


def test_a_step_without_runs_removed_from_the_file_is_deleted(
    engine: Engine, tmp_path: Path
) -> None:
    spec = {**locations_data(tmp_path), **demo_spec_data()}
    path = write_yaml(tmp_path / "spec.yaml", spec)
    _apply(engine, path)
    spec["pipelines"][0]["steps"].pop()
    changes = _apply(engine, write_yaml(path, spec))
    assert Change("delete", "step", "chai-demo.grid") in changes
    with Session(engine) as session:
        assert session.scalars(
            select(m.ReductionStep.name).order_by(m.ReductionStep.step_order)
        ).all() == ["calibrate", "baseline"]


def test_files_may_refer_to_each_other_and_to_the_db(engine: Engine, tmp_path: Path) -> None:
    locations = write_yaml(tmp_path / "locations.yaml", locations_data(tmp_path))
    spec = demo_spec_data()
    pipelines_only = {"pipelines": spec.pop("pipelines")}
    rest = write_yaml(tmp_path / "software.yaml", spec)
    _apply(engine, locations, rest)  # two files at once
    changes = _apply(
        engine, write_yaml(tmp_path / "pipelines.yaml", pipelines_only)
    )  # refers to the DB
    assert Change("create", "pipeline", "chai-demo") in changes


def test_the_example_site_with_slurm_kubernetes_local_and_podman_locations_applies(
    engine: Engine,
) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "specs" / "locations-example.yaml"
    changes = _apply(engine, example)
    assert {c.name for c in changes if c.kind == "location"} == {
        "archive", "ramses", "laptop", "workstation", "k8s-cologne",
    }  # fmt: skip
    with Session(engine) as session:
        podman = session.scalars(
            select(m.DataLocation).where(m.DataLocation.name == "workstation")
        ).one()
        assert (podman.backend, podman.runtime) == (m.Backend.LOCAL, m.Runtime.PODMAN)
        assert podman.settings["podman_ulimits"] == {"nofile": "1024:1024", "nproc": "4096:4096"}
        k8s = session.scalars(
            select(m.DataLocation).where(m.DataLocation.name == "k8s-cologne")
        ).one()
        assert (k8s.backend, k8s.runtime) == (m.Backend.KUBERNETES, m.Runtime.APPTAINER)
        assert k8s.settings["k8s_volumes"] == {
            "/data/k8s-pipelines": {"persistentVolumeClaim": {"claimName": "ccat-pipelines"}}
        }


def test_cli_dry_run_prints_changes_and_writes_nothing(
    engine: Engine, cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = write_yaml(tmp_path / "spec.yaml", {**locations_data(tmp_path), **demo_spec_data()})
    before = snapshot(engine)
    result = run_cli(cli_env, "apply", "--dry-run", str(path))
    assert result.returncode == 0, result.stderr
    assert "+ pipeline chai-demo" in result.stdout
    assert "object(s) would change" in result.stdout
    assert snapshot(engine) == before
    result = run_cli(cli_env, "apply", str(path))
    assert result.returncode == 0 and "object(s) changed" in result.stdout
    assert run_cli(cli_env, "apply", str(path)).stdout.strip() == "no changes"
    spec = {**locations_data(tmp_path), **demo_spec_data()}
    spec["pipelines"][0]["enabled"] = False
    result = run_cli(cli_env, "apply", "--dry-run", "--json", str(write_yaml(path, spec)))
    assert json.loads(result.stdout) == {
        "dry_run": True,
        "changes": [
            {
                "action": "update",
                "kind": "pipeline",
                "name": "chai-demo",
                "details": ["enabled: True -> False"],
            }
        ],
    }


def test_cli_rejects_bad_file_with_cause_on_stderr(
    engine: Engine, cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("pipelines: [{name: p}]\nfoo: 1\n")
    result = run_cli(cli_env, "apply", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    first, *rest = result.stderr.splitlines()
    assert first == "error: 4 problems in the pipeline spec; nothing was written"
    assert any("foo: unknown key 'foo'" in line for line in rest)
    assert "Traceback" not in result.stderr


def test_concurrent_applies_of_the_same_file_both_succeed_once(
    engine: Engine, tmp_path: Path
) -> None:
    """Without the advisory lock, the second insert of each name would fail on a unique key."""
    path = write_yaml(tmp_path / "spec.yaml", {**locations_data(tmp_path), **demo_spec_data()})
    results: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker() -> None:
        try:
            with Session(engine) as session:
                barrier.wait()
                results.append(len(apply_specs(session, load_spec_files([path]), user="tester")))
                session.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(results)[0] == 0 and sorted(results)[1] > 0
    with Session(engine) as session:
        assert session.query(m.Pipeline).count() == 1
        assert session.query(m.ReductionStep).count() == 3
