"""Find the data: `ccat-wm products` and `raw` list what there is, newest first, and the
commands that take an id take the natural name too (real Prefect server, real DB)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.simulate.register import SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from tests.helpers import demo_spec_data, locations_data, run_cli, write_yaml

pytestmark = pytest.mark.db


def test_products_and_raw_packages_are_listed_and_found_by_name(
    engine: Engine, tmp_path: Path, run_env: dict[str, str]
) -> None:
    spec = write_yaml(tmp_path / "spec.yaml", {**locations_data(tmp_path), **demo_spec_data()})
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([spec]), user="tester")
        register_simulation(session, SimulationRequest(scans=2, seed=31))
    ran = run_cli(run_env, "run", "chai-demo")
    assert ran.returncode == 0, ran.stderr
    # `run` ends with what it made, the maps and plots by path, and the flow run's page.
    summary = ran.stdout[ran.stdout.index("products made: ") :]
    assert "SCIENCE" in summary.splitlines()[0] and "PLOT" in summary.splitlines()[0]
    made_maps = [line.split("map:  ")[1] for line in summary.splitlines() if "map:  " in line]
    assert made_maps and all(p.endswith(".fits") and Path(p).is_file() for p in made_maps)
    assert any(
        line.startswith("  plot: ") and line.endswith(".png") for line in summary.splitlines()
    )
    ui = run_env["PREFECT_API_URL"].removesuffix("/api")
    assert f"in the Prefect UI: {ui}/runs/flow-run/" in summary

    listed = json.loads(run_cli(run_env, "products", "chai-demo", "--json").stdout)
    with Session(engine) as session:
        total = session.scalar(select(func.count()).select_from(m.DataProduct))
    assert len(listed) == total > 0
    times = [p["created_at"] for p in listed]
    assert times == sorted(times, reverse=True) and times[0].endswith("+00:00")  # with zone
    assert all(Path(p["path"]).is_file() and p["size"] == Path(p["path"]).stat().st_size
               for p in listed)  # fmt: skip
    cubes = json.loads(
        run_cli(run_env, "products", "--step", "grid", "--type", "science", "--json").stdout
    )
    assert cubes and {(p["step"], p["type"]) for p in cubes} == {("grid", "SCIENCE")}
    assert len(json.loads(run_cli(run_env, "products", "--limit", "3", "--json").stdout)) == 3
    text = run_cli(run_env, "products", "--type", "plot")
    assert text.stdout.splitlines()[0].split() == [
        "id",
        "type",
        "pipeline",
        "step",
        "sub_group",
        "run",
        "size",
        "created",
        "path",
    ]
    assert ".png" in text.stdout and "Z  " in text.stdout
    unknown = run_cli(run_env, "products", "nope")
    assert unknown.returncode == 1 and "unknown pipeline 'nope'" in unknown.stderr

    raw = json.loads(run_cli(run_env, "raw", "--json").stdout)
    assert len(raw) == 4  # 2 scans x 2 modules
    assert all(r["paths"] and r["paths"][0].startswith("archive:") for r in raw)
    source = raw[0]["source"]
    only = json.loads(run_cli(run_env, "raw", "--source", source, "--json").stdout)
    assert only and {r["source"] for r in only} == {source}
    assert json.loads(run_cli(run_env, "raw", "--source", "nowhere", "--json").stdout) == []

    # A raw package by name, a product by path: the dry run names what it would affect.
    package = next(r["name"] for r in raw if r["module"] == "LFA")  # the demo reduces LFA
    dry = run_cli(run_env, "invalidate", "--raw-package", package, "--reason", "x", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "(invalidation" not in dry.stdout  # a dry run records nothing, so shows no id
    assert "sub-groups to re-make: calibrate[executed_obs_unit=" in dry.stdout
    assert "dry run: nothing was written" in dry.stdout
    cube = cubes[0]["path"]
    by_path = run_cli(run_env, "invalidate", "--product", cube, "--reason", "x", "--dry-run",
                      "--json")  # fmt: skip
    impact = json.loads(by_path.stdout)["impact"]
    assert [i["product_paths"] for i in impact if i["step"] == "grid"] == [
        sorted(p["path"] for p in listed if p["run_id"] == cubes[0]["run_id"]
               and p["type"] != "LOG")]  # fmt: skip
    missing = run_cli(run_env, "invalidate", "--raw-package", "no-such", "--reason", "x")
    assert missing.returncode == 1
    assert "no raw data package named 'no-such'; `ccat-wm raw` lists them" in missing.stderr
