"""Provenance: runs keep what they used, and nothing rewrites it (real Prefect, DB, software)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.simulate.register import SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from tests.helpers import (
    SLURM_TEST_SETTINGS,
    demo_spec_data,
    locations_data,
    run_cli,
    snapshot,
    write_yaml,
)
from tests.integration.conftest import GRID, DemoCopy, edit

pytestmark = pytest.mark.db


def test_lineage_after_a_config_edit_shows_the_config_the_product_was_made_with(
    tmp_path: Path, demo_done: DemoCopy
) -> None:
    engine, cli_env, demo = demo_done.engine, demo_done.env, demo_done.data
    cube = next((demo_done.root / "runs").rglob("*.cube.fits"))
    edited = edit(demo, GRID, "parameters", {"pixel_arcsec": 12})
    applied = run_cli(cli_env, "apply", str(write_yaml(tmp_path / "edited.yaml", edited)))
    assert applied.returncode == 0, applied.stderr
    assert "pixel_arcsec" in applied.stdout  # the config itself stays editable

    shown = run_cli(cli_env, "lineage", str(cube), "--json")
    assert shown.returncode == 0, shown.stderr
    grid = json.loads(shown.stdout)["runs"][0]
    assert grid["step"] == "grid" and grid["snapshot"] == "recorded"
    assert grid["parameters"] == {"pixel_arcsec": 10}
    assert "--pixel-arcsec 10" in grid["execution_command"]
    assert grid["environment"] == {"OMP_NUM_THREADS": "1"}
    assert grid["withheld_environment"] == ["DB_PASSWORD"]
    assert grid["resources"] == {"cpu": 2, "memory_gb": 2, "time_hours": 1, "gpu": 0}
    assert grid["digest"] == demo["software"][2]["versions"][0]["digest"]
    assert grid["image_repository"] == "ghcr.io/ccatobs/chai-gridding"
    assert (grid["location"], grid["backend"], grid["runtime"]) == ("local", "local", "host")
    assert grid["unknown"] == []

    text_view = run_cli(cli_env, "lineage", str(cube)).stdout
    assert '{"pixel_arcsec": 10}' in text_view and 'pixel_arcsec": 12' not in text_view
    assert "secret values withheld: DB_PASSWORD" in text_view
    with Session(engine) as session:
        stored = json.dumps(
            [list(r) for r in session.execute(select(m.RunSnapshot.environment)).all()]
        )
    assert "hunter2" not in stored


def test_a_used_versions_digest_cannot_change_through_apply_or_sql(
    tmp_path: Path, demo_done: DemoCopy
) -> None:
    engine, cli_env, demo = demo_done.engine, demo_done.env, demo_done.data
    new_digest = "sha256:" + "e" * 64
    bumped = edit(demo, ("software", 1, "versions", 0), "digest", new_digest)
    before = snapshot(engine)
    refused = run_cli(cli_env, "apply", str(write_yaml(tmp_path / "bumped.yaml", bumped)))
    assert refused.returncode == 1
    assert "software version chai-baseline 0.9.2 was used by runs" in refused.stderr
    assert "publish a new version" in refused.stderr and "software[1].versions[0].digest" in (
        refused.stderr
    )
    moved = edit(demo, ("software", 1), "ghcr_url", "ghcr.io/elsewhere/chai-baseline")
    refused = run_cli(cli_env, "apply", str(write_yaml(tmp_path / "moved.yaml", moved)))
    assert refused.returncode == 1 and "image reference never changes" in refused.stderr
    assert snapshot(engine) == before

    # The database refuses it too, whatever code tries.
    for sql in (
        f"UPDATE reduction_software_version SET digest = '{new_digest}' WHERE tag = '0.9.2'",
        "UPDATE reduction_software SET ghcr_url = 'x' WHERE name = 'chai-baseline'",
        "UPDATE run_snapshot SET parameters = '{\"pixel_arcsec\": 12}'",
        "UPDATE run_snapshot SET image_digest = NULL",
        "DELETE FROM run_snapshot",
        "UPDATE executed_reduction_step SET execution_command = 'rm -rf /'",
        "UPDATE executed_reduction_step SET config_fingerprint = 'x'",
        "UPDATE executed_reduction_step_input SET checksum = 'x'",
    ):
        with pytest.raises(DBAPIError, match=r"never|for good|immutable"), engine.begin() as conn:
            conn.execute(text(sql))
    assert snapshot(engine) == before

    # A new version is the way: published, applied, and old runs keep their digest.
    published = copy.deepcopy(demo)
    published["software"][1]["versions"] = [
        {**published["software"][1]["versions"][0], "is_latest": False},
        {"tag": "0.9.3", "digest": new_digest, "is_latest": True},
    ]
    ok = run_cli(cli_env, "apply", str(write_yaml(tmp_path / "published.yaml", published)))
    assert ok.returncode == 0, ok.stderr
    with Session(engine) as session:
        digests = set(
            session.scalars(
                select(m.RunSnapshot.image_digest).where(m.RunSnapshot.software == "chai-baseline")
            )
        )
    assert digests == {demo["software"][1]["versions"][0]["digest"]}


def test_verify_reports_missing_changed_and_unexpected_files(
    tmp_path: Path, demo_done: DemoCopy
) -> None:
    engine, cli_env = demo_done.engine, demo_done.env
    clean = run_cli(cli_env, "verify")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.startswith("verified ") and ": OK" in clean.stdout
    with Session(engine) as session:
        products = sorted(session.scalars(select(m.DataProduct.file_path)))
        staged = sorted(session.scalars(select(m.RawDataPackageCopy.path)))
    staged = [p for p in staged if "/.staging/" in p]
    assert len(products) > 5 and staged
    science = [Path(p) for p in products if "/science/" in p]
    assert len(science) >= 4
    flipped, shortened, removed = science[0], science[1], Path(products[-1])
    linked, piped = science[2], science[3]
    outside = tmp_path / "identical-copy"  # same bytes, outside the run tree: not followed
    outside.write_bytes(linked.read_bytes())
    linked.unlink()
    linked.symlink_to(outside)
    piped.unlink()
    os.mkfifo(piped)  # opened without blocking, named, never read
    for path in (flipped, shortened, Path(staged[0])):
        path.chmod(0o644)
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed
    flipped.write_bytes(bytes(data))
    shortened.write_bytes(shortened.read_bytes()[:-1])
    removed.unlink()
    stray = flipped.parent / "stray.fits"
    stray.write_bytes(b"made by hand")
    stray_staged = Path(staged[0]).parent / "unrecorded.npz"
    stray_staged.write_bytes(b"?")

    found = run_cli(cli_env, "verify", "--json")
    assert found.returncode == 1
    report = json.loads(found.stdout)
    assert [f["path"] for f in report["missing"]] == [str(removed)]
    changed = {f["path"]: f for f in report["changed"]}
    assert set(changed) == {str(flipped), str(shortened), str(linked), str(piped)}
    assert "replaced by a symlink" in changed[str(linked)]["note"]
    assert "replaced by a named pipe" in changed[str(piped)]["note"]
    assert changed[str(flipped)]["problem"] == "checksum"
    assert (
        changed[str(flipped)]["actual_sha256"] == hashlib.sha256(flipped.read_bytes()).hexdigest()
    )
    assert changed[str(shortened)]["problem"] == "size"
    assert set(report["unexpected"]) == {str(stray), str(stray_staged)}
    assert report["files"] == len(products) + len(staged) and not report["ok"]

    text_view = run_cli(cli_env, "verify", "chai-demo")
    assert text_view.returncode == 1
    assert "1 missing, 4 changed, 2 unexpected" in text_view.stdout
    assert f"{flipped}  (product " in text_view.stdout
    unknown = run_cli(cli_env, "verify", "nope")
    assert unknown.returncode == 1 and "unknown pipeline 'nope'" in unknown.stderr


def test_lineage_prov_is_w3c_prov_json_from_the_map_back_to_every_raw_package(
    tmp_path: Path, demo_done: DemoCopy
) -> None:
    cli_env, demo = demo_done.env, demo_done.data
    from prov.model import (
        PROV_ATTR_ACTIVITY,
        PROV_ATTR_AGENT,
        PROV_ATTR_GENERATED_ENTITY,
        PROV_ATTR_INFORMANT,
        PROV_ATTR_INFORMED,
        PROV_ATTR_USED_ENTITY,
        ProvActivity,
        ProvAgent,
        ProvAssociation,
        ProvCommunication,
        ProvDerivation,
        ProvDocument,
        ProvGeneration,
        ProvUsage,
    )

    cube = next((demo_done.root / "runs").rglob("*.cube.fits"))
    shown = run_cli(cli_env, "lineage", str(cube), "--prov")
    assert shown.returncode == 0, shown.stderr
    doc = ProvDocument.deserialize(content=shown.stdout, format="json")
    lineage = json.loads(run_cli(cli_env, "lineage", str(cube), "--json").stdout)

    derived: dict[str, set[str]] = {}
    for record in doc.get_records(ProvDerivation):
        attrs = dict(record.formal_attributes)
        derived.setdefault(str(attrs[PROV_ATTR_GENERATED_ENTITY]), set()).add(
            str(attrs[PROV_ATTR_USED_ENTITY])
        )
    reached, todo = set(), [f"ccat:product/{lineage['product_id']}"]
    while todo:
        node = todo.pop()
        if node not in reached:
            reached.add(node)
            todo.extend(derived.get(node, ()))
    raw = {f"ccat:raw/{p['id']}" for p in lineage["raw_data_packages"]}
    assert raw and raw <= reached  # the map derives from every raw package of its lineage
    activities = {str(a.identifier) for a in doc.get_records(ProvActivity)}
    runs = {f"ccat:run/{r['run_id']}" for r in lineage["runs"]}
    # The demo gates its calibration: each calibration's decision is an activity it informed.
    calibrations = {f"ccat:run/{r['run_id']}" for r in lineage["runs"] if r["step"] == "calibrate"}
    informed = {
        (str(dict(r.formal_attributes)[PROV_ATTR_INFORMED]),
         str(dict(r.formal_attributes)[PROV_ATTR_INFORMANT]))
        for r in doc.get_records(ProvCommunication)
    }  # fmt: skip
    decisions = activities - runs
    assert runs <= activities and all(d.startswith("ccat:qa_decision/") for d in decisions)
    assert {informant for d, informant in informed if d in decisions} == calibrations
    agents = {str(a.identifier): a for a in doc.get_records(ProvAgent)}
    grid_agent = agents["ccat:software/chai-gridding/2.1.0"]
    digest = demo["software"][2]["versions"][0]["digest"]
    assert {str(v) for v in grid_agent.get_attribute("ccat:digest")} == {digest}
    assert "ccat:user/tester" in agents
    associations = {
        (
            str(dict(r.formal_attributes)[PROV_ATTR_ACTIVITY]),
            str(dict(r.formal_attributes)[PROV_ATTR_AGENT]),
        )
        for r in doc.get_records(ProvAssociation)
    }
    grid_id = lineage["runs"][0]["run_id"]
    assert (f"ccat:run/{grid_id}", "ccat:software/chai-gridding/2.1.0") in associations
    assert (f"ccat:run/{grid_id}", "ccat:user/tester") in associations
    assert doc.get_records(ProvUsage) and doc.get_records(ProvGeneration)
    grid_run = next(
        a for a in doc.get_records(ProvActivity) if "grid" in str(a.get_attribute("ccat:step"))
    )
    assert grid_run.get_startTime() is not None and grid_run.get_endTime() is not None
    product = next(
        e for e in doc.get_records() if str(e.identifier) == f"ccat:product/{lineage['product_id']}"
    )
    assert {str(v) for v in product.get_attribute("ccat:sha256")} == {lineage["checksum"]}


def test_plan_with_shows_what_a_version_bump_would_cost_and_writes_nothing(
    tmp_path: Path, demo_done: DemoCopy
) -> None:
    engine, cli_env, demo = demo_done.engine, demo_done.env, demo_done.data
    bumped = copy.deepcopy(demo)
    bumped["software"][1]["versions"] = [
        {**bumped["software"][1]["versions"][0], "is_latest": False},
        {"tag": "1.0.0", "digest": "sha256:" + "e" * 64, "is_latest": True},
    ]
    spec = write_yaml(tmp_path / "bumped.yaml", bumped)
    edited = write_yaml(
        tmp_path / "edited.yaml", edit(demo, GRID, "parameters", {"pixel_arcsec": 12})
    )
    assert json.loads(run_cli(cli_env, "plan", "--json").stdout)["gaps"] == []
    before = snapshot(engine)

    shown = run_cli(cli_env, "plan", "--with", str(spec), "--json")
    assert shown.returncode == 0, shown.stderr
    what_if = json.loads(shown.stdout)
    with Session(engine) as session:
        baseline_keys = set(
            session.scalars(
                select(m.ExecutedReductionStep.sub_group_key)
                .join(m.ReductionStep)
                .where(m.ReductionStep.name == "baseline")
            )
        )
        grid_runs = session.scalar(
            text("SELECT count(*) FROM executed_reduction_step r JOIN reduction_step s "
                 "ON s.id = r.reduction_step_id WHERE s.name = 'grid'")
        )  # fmt: skip
    reasons = {(g["step"], g["reason"]) for g in what_if["new_gaps"]}
    assert ("baseline", "version_changed") in reasons
    assert {g["sub_group_key"] for g in what_if["new_gaps"] if g["step"] == "baseline"} == (
        baseline_keys
    )
    assert sum(1 for g in what_if["new_gaps"] if g["step"] == "grid") == grid_runs  # downstream
    assert what_if["cpu_hours_before"] == 0 and what_if["cpu_hours_after"] > 0
    assert any("1.0.0" in c for c in what_if["changes"])
    assert snapshot(engine) == before  # rolled back: every table unchanged

    text_view = run_cli(cli_env, "plan", "chai-demo", "--with", str(edited))
    assert text_view.returncode == 0, text_view.stderr
    assert "config_changed" in text_view.stdout and "(nothing was written)" in text_view.stdout
    assert "estimated CPU-hours (+" in text_view.stdout
    assert snapshot(engine) == before
    assert json.loads(run_cli(cli_env, "plan", "--json").stdout)["gaps"] == []


def test_reproduce_remakes_the_demo_map_bit_for_bit_and_detects_a_changed_config(
    tmp_path: Path, demo_done: DemoCopy
) -> None:
    engine, cli_env = demo_done.engine, demo_done.env
    cube = next((demo_done.root / "runs").rglob("*.cube.fits"))
    before = snapshot(engine)
    keep = tmp_path / "remade"

    shown = run_cli(cli_env, "reproduce", str(cube), "--json", "--keep", str(keep))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    report = json.loads(shown.stdout)
    assert report["identical"] and report["differing"] == []
    assert str(cube) in {f["path"] for f in report["files"]}
    lineage = json.loads(run_cli(cli_env, "lineage", str(cube), "--json").stdout)
    assert [r["run_id"] for r in report["runs"]] == [r["run_id"] for r in reversed(lineage["runs"])]
    remade_cube = next(f["remade_path"] for f in report["files"] if f["path"] == str(cube))
    assert remade_cube.startswith(str(keep)) and Path(remade_cube).read_bytes() == cube.read_bytes()
    assert snapshot(engine) == before  # nothing written to the ops DB

    # A copy of the ops DB in which the grid run's recorded config says 12 arcsec pixels.
    copy_url = engine.url.set(database=f"{engine.url.database}_copy")
    admin = engine.url.set(database="postgres").render_as_string(hide_password=False)
    libpq = {
        "source": engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
        "copy": copy_url.set(drivername="postgresql").render_as_string(hide_password=False),
    }
    admin_engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{copy_url.database}"'))
        conn.execute(text(f'CREATE DATABASE "{copy_url.database}"'))
    try:
        dump = subprocess.run(
            ["pg_dump", "--no-owner", libpq["source"]], capture_output=True, check=True
        )
        subprocess.run(
            ["psql", "-q", "-v", "ON_ERROR_STOP=1", libpq["copy"]],
            input=dump.stdout, capture_output=True, check=True,
        )  # fmt: skip
        copy_engine = create_engine(copy_url)
        with copy_engine.begin() as conn:
            conn.execute(text("ALTER TABLE run_snapshot DISABLE TRIGGER run_snapshot_immutable"))
            conn.execute(
                text(
                    "UPDATE run_snapshot SET parameters = '{\"pixel_arcsec\": 12}' "
                    "WHERE executed_reduction_step_id = :id"
                ),
                {"id": lineage["runs"][0]["run_id"]},
            )
        copy_engine.dispose()
        changed = run_cli({**cli_env, "CCAT_OPS_DB_URL": libpq["copy"]}, "reproduce", str(cube))
    finally:
        with admin_engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{copy_url.database}" WITH (FORCE)'))
        admin_engine.dispose()
    assert changed.returncode == 1, changed.stdout + changed.stderr
    assert f"DIFFERS    {cube}" in changed.stdout
    commands = [line for line in changed.stdout.splitlines() if "command " in line]
    assert any(c.endswith(" chai-grid --pixel-arcsec 12") for c in commands), commands
    assert f"recorded sha256 {hashlib.sha256(cube.read_bytes()).hexdigest()}" in changed.stdout
    assert "NOT reproduced" in changed.stdout


def _gaps(env: dict[str, str]) -> list[dict[str, Any]]:
    shown = run_cli(env, "plan", "--json")
    assert shown.returncode == 0, shown.stderr
    gaps: list[dict[str, Any]] = json.loads(shown.stdout)["gaps"]
    return gaps


def test_invalidate_takes_bad_data_out_and_marks_what_it_reached_then_undo_restores(
    tmp_path: Path, demo_done: DemoCopy
) -> None:
    engine, cli_env = demo_done.engine, demo_done.env
    # The map with the most raw data: invalidating one package leaves it the others.
    lineages = [
        json.loads(run_cli(cli_env, "lineage", str(cube), "--json").stdout)
        for cube in (demo_done.root / "runs").rglob("*.cube.fits")
    ]
    lineage = max(lineages, key=lambda found: len(found["raw_data_packages"]))
    assert len(lineage["raw_data_packages"]) >= 2
    grid_key = lineage["runs"][0]["sub_group_key"]
    bad = lineage["raw_data_packages"][0]
    before = snapshot(engine)

    dry = run_cli(cli_env, "invalidate", "--raw-package", str(bad["id"]), "--reason",
                  "receiver 3 was warm", "--dry-run", "--json")  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    radius = {i["step"]: i for i in json.loads(dry.stdout)["impact"]}
    assert set(radius) == {"calibrate", "baseline", "grid"}
    assert all(i["current"] == 1 and i["products"] > 0 for i in radius.values())
    assert json.loads(dry.stdout)["cpu_hours"] > 0
    assert snapshot(engine) == before  # a dry run writes nothing

    done = run_cli(cli_env, "invalidate", "--raw-package", str(bad["id"]), "--reason",
                   "receiver 3 was warm", "--user", "alice")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "3 run(s) no longer current" in done.stdout
    with Session(engine) as session:
        mark = session.scalars(select(m.Invalidation)).one()
        grid_run = session.get_one(m.ExecutedReductionStep, lineage["runs"][0]["run_id"])
    assert (mark.raw_data_package_id, mark.reason, mark.created_by) == (
        bad["id"],
        "receiver 3 was warm",
        "alice",
    )
    assert not grid_run.is_current
    gaps = _gaps(cli_env)
    assert {(g["step"], g["sub_group_key"], g["reason"]) for g in gaps} >= {
        ("grid", grid_key, "invalidated")
    }
    assert all(g["reason"] == "invalidated" for g in gaps)
    again = run_cli(cli_env, "invalidate", "--raw-package", str(bad["id"]), "--reason", "x")
    assert again.returncode == 1 and "already invalidated" in again.stderr

    rerun = run_cli(cli_env, "run", "chai-demo")
    assert rerun.returncode == 0, rerun.stderr
    assert _gaps(cli_env) == []
    with Session(engine) as session:
        new_grid = session.scalars(
            select(m.ExecutedReductionStep).where(
                m.ExecutedReductionStep.sub_group_key == grid_key,
                m.ExecutedReductionStep.is_current,
            )
        ).one()
        assert new_grid.reason is m.GapReason.INVALIDATED
        used = set(
            session.scalars(
                select(m.data_product_lineage.c.raw_data_package_id)
                .join(m.DataProduct)
                .where(m.DataProduct.executed_reduction_step_id == new_grid.id)
            )
        )
    assert used and bad["id"] not in used  # the bad package left the selection

    undo = run_cli(cli_env, "invalidate", "--undo", "--raw-package", str(bad["id"]), "--reason",
                   "it was fine", "--user", "bob")  # fmt: skip
    assert undo.returncode == 0, undo.stderr
    assert "run(s) current again" in undo.stdout
    with Session(engine) as session:
        mark = session.scalars(select(m.Invalidation)).one()
    assert (mark.undone_by, mark.undo_reason) == ("bob", "it was fine") and mark.undone_at
    back = _gaps(cli_env)  # the package is selected again: the map's inputs changed
    assert ("grid", grid_key, "inputs_changed") in {
        (g["step"], g["sub_group_key"], g["reason"]) for g in back
    }
    with pytest.raises(DBAPIError, match="never deleted"), engine.begin() as conn:
        conn.execute(text("DELETE FROM invalidation"))
    unknown = run_cli(cli_env, "invalidate", "--run", "999999", "--reason", "x")
    assert unknown.returncode == 1 and "no run with id 999999" in unknown.stderr


def test_invalidating_a_run_makes_it_and_everything_downstream_a_gap(
    demo_done: DemoCopy,
) -> None:
    engine, cli_env = demo_done.engine, demo_done.env
    with Session(engine) as session:
        calibrate = session.scalars(
            select(m.ExecutedReductionStep)
            .join(m.ReductionStep)
            .where(m.ReductionStep.name == "calibrate")
            .order_by(m.ExecutedReductionStep.id)
        ).first()
    assert calibrate is not None
    done = run_cli(cli_env, "invalidate", "--run", str(calibrate.id), "--reason", "bad load")
    assert done.returncode == 0, done.stderr
    gaps = {(g["step"], g["sub_group_key"]): g for g in _gaps(cli_env)}
    own = gaps[("calibrate", calibrate.sub_group_key)]
    assert own["reason"] == "invalidated" and own["ready"]
    downstream = [g for (step, _), g in gaps.items() if step != "calibrate"]
    assert {g["step"] for g in downstream} == {"baseline", "grid"}
    assert all(g["reason"] == "invalidated" and not g["ready"] for g in downstream)


@pytest.mark.usefixtures("slurm_cluster")
def test_reproduce_remakes_a_map_made_on_slurm_with_slurm_jobs(
    engine: Engine, tmp_path: Path, run_env: dict[str, str]
) -> None:
    data = {**locations_data(tmp_path), **demo_spec_data()}
    data["locations"][1] |= {"backend": "slurm", "runtime": "host", "settings": SLURM_TEST_SETTINGS}
    spec = write_yaml(tmp_path / "spec.yaml", data)
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([spec]), user="tester")
        register_simulation(session, SimulationRequest(scans=1, seed=253))
    done = run_cli(run_env, "run", "chai-demo", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    cube = next((tmp_path / "runs").rglob("*.cube.fits"))

    shown = run_cli(run_env, "reproduce", str(cube), "--json", timeout=600)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    report = json.loads(shown.stdout)
    assert report["identical"] and len(report["runs"]) == 3
    assert all(
        r["backend"] == "slurm" and r["job_id"].split("_")[0].isdigit() for r in report["runs"]
    )
