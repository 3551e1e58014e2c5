"""The demo pipeline run once per test session, handed to each test as a fresh copy.

Tests that need "an ops DB after the demo" get their own copy of it: a database made
with `CREATE DATABASE ... TEMPLATE` from the one the demo wrote, and the demo's run tree
restored at the same path (the ops DB records absolute paths), so a test may change
files, rerun or invalidate without touching the next test's starting point.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from ccat_ops_db import migrate
from ccat_wm.simulate.register import SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from tests.helpers import demo_spec_data, locations_data, run_cli, write_yaml

GRID = ("pipelines", 0, "steps", 2, "config")
"""Where the demo spec keeps the grid step's config."""


def edit(data: dict[str, Any], path: tuple[Any, ...], key: str, value: Any) -> dict[str, Any]:
    """A deep copy of `data` with `key` set to `value` in the node at `path`."""
    edited = copy.deepcopy(data)
    node = edited
    for part in path:
        node = node[part]
    node[key] = value
    return edited


@dataclass(frozen=True)
class DemoTemplate:
    """The demo as it ran once: its database, its run tree and a pristine copy of it."""

    url: URL
    root: Path
    pristine: Path
    data: dict[str, Any]


@dataclass(frozen=True)
class DemoCopy:
    """A test's own copy of the demo: its ops DB, the CLI environment on it, its files."""

    engine: Engine
    env: dict[str, str]
    root: Path
    """The directory holding `runs/` and `archive/` (the locations' paths)."""
    data: dict[str, Any]
    """The spec the demo was applied with."""


@pytest.fixture(scope="session")
def demo_template(
    make_database: Callable[..., URL],
    prefect_api: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> DemoTemplate:
    """The demo pipeline (4 scans) run to the end once, with a secret and a plain variable
    in the grid step's environment."""
    root = tmp_path_factory.mktemp("demo")
    url = make_database()
    engine = create_engine(url)
    migrate.upgrade(engine)
    data = {**locations_data(root), **demo_spec_data()}
    data = edit(data, GRID, "environment", {"OMP_NUM_THREADS": "1", "DB_PASSWORD": "hunter2"})
    spec = write_yaml(tmp_path_factory.mktemp("demo-spec") / "spec.yaml", data)
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([spec]), user="tester")
        register_simulation(session, SimulationRequest(scans=4, seed=253))
    engine.dispose()
    env = {
        **_base_env(url, tmp_path_factory.mktemp("demo-home")),
        **prefect_api,
    }
    done = run_cli(env, "run", "chai-demo")
    assert done.returncode == 0, done.stdout + done.stderr
    pristine = tmp_path_factory.mktemp("demo-pristine") / "tree"
    shutil.copytree(root, pristine, symlinks=True)
    return DemoTemplate(url, root, pristine, data)


def _base_env(url: URL, home: Path) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["CCAT_OPS_DB_URL"] = url.set(drivername="postgresql").render_as_string(hide_password=False)
    env["CCAT_WM_HOME"] = str(home)
    return env


@pytest.fixture
def demo_done(
    demo_template: DemoTemplate,
    make_database: Callable[..., URL],
    prefect_api: dict[str, str],
    tmp_path: Path,
) -> Iterator[DemoCopy]:
    """A fresh copy of the demo's ops DB and run tree for one test."""
    shutil.rmtree(demo_template.root)
    shutil.copytree(demo_template.pristine, demo_template.root, symlinks=True)
    url = make_database(template=demo_template.url)
    engine = create_engine(url)
    env = {**_base_env(url, tmp_path / "home"), **prefect_api}
    yield DemoCopy(engine, env, demo_template.root, copy.deepcopy(demo_template.data))
    engine.dispose()
