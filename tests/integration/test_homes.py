"""Nothing outside its homes: with `CCAT_WM_HOME` set, a command writes nothing in the
user's home directory (`HOME` is an empty read-only directory here); Prefect's ephemeral
home and matplotlib's cache live under `CCAT_WM_HOME`, and expired slot leases the
ephemeral server left behind are removed (real DB, real ephemeral Prefect server)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ccat_wm.simulate.register import SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from tests.helpers import demo_spec_data, locations_data, run_cli, write_yaml

pytestmark = pytest.mark.db


def plant_expired_lease(leases: Path) -> Path:
    """A slot lease that expired a minute ago, as a server that stopped leaves it."""
    from prefect.server.concurrency.lease_storage.filesystem import ConcurrencyLeaseStorage

    storage = ConcurrencyLeaseStorage(storage_path=leases)
    lease = asyncio.run(storage.create_lease([], dt.timedelta(seconds=-60)))
    return leases / f"{lease.id}.json"


@pytest.mark.prefect_ephemeral
def test_every_command_keeps_to_its_homes_with_a_read_only_user_home(
    engine: Engine, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    user_home = tmp_path / "user"
    user_home.mkdir()
    user_home.chmod(0o555)
    unset = ("PREFECT_HOME", "PREFECT_API_URL", "MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")
    env = {k: v for k, v in cli_env.items() if k not in unset} | {"HOME": str(user_home)}
    wm_home = Path(env["CCAT_WM_HOME"])
    stale = plant_expired_lease(wm_home / "prefect" / "concurrency_leases")
    spec = write_yaml(tmp_path / "spec.yaml", {**locations_data(tmp_path), **demo_spec_data()})
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([spec]), user="tester")
        register_simulation(session, SimulationRequest(scans=1, seed=41))
    commands = [
        ("run", "chai-demo"), ("status",), ("plan",), ("products",), ("raw",), ("lineage", "1"),
        ("logs", "1"), ("verify",), ("resources", "--plot", str(tmp_path / "r.png")),
        ("gc", "--dry-run"), ("invalidate", "--run", "1", "--reason", "x", "--dry-run"),
        ("apply", str(spec), "--dry-run"), ("trigger",), ("db", "url"), ("--help",),
    ]  # fmt: skip
    for command in commands:
        result = run_cli(env, *command)
        assert result.returncode == 0, (command, result.stderr[-2000:])
    assert sorted(os.listdir(user_home)) == []
    assert (wm_home / "prefect").is_dir() and (wm_home / "matplotlib").is_dir()
    assert not stale.exists()  # the run's ephemeral server start removed it
