"""`ccat-wm simulate`: real files with checksums and metadata, deterministic, repeatable."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from chai_software.calibrate import calibrate
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from ccat_ops_db import migrate
from ccat_ops_db import models as m
from ccat_wm.errors import SimulationError
from ccat_wm.simulate.catalog import DEFAULT_LINES, DEFAULT_SOURCES
from ccat_wm.simulate.generator import simulate_scan, source_position
from ccat_wm.simulate.register import FIRST_EPOCH, SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from tests.helpers import locations_data, run_cli, snapshot, write_yaml


def _with_archive(engine: Engine, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    path = write_yaml(root / "locations.yaml", locations_data(root))
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([path]), user="tester")


def _simulate(engine: Engine, **kwargs: object) -> None:
    with Session(engine) as session, session.begin():
        register_simulation(session, SimulationRequest(**kwargs))  # type: ignore[arg-type]


def test_packages_are_real_files_with_size_checksum_metadata_and_copy(
    engine: Engine, tmp_path: Path
) -> None:
    _with_archive(engine, tmp_path)
    _simulate(engine, scans=4, seed=7, sources=("NGC253", "Sgr B2/core"), lines=("CO43",))
    with Session(engine) as session:
        rows = session.execute(
            select(m.RawDataPackage, m.RawDataPackageCopy, m.InstrumentModule.name)
            .join(
                m.RawDataPackageCopy,
                m.RawDataPackageCopy.raw_data_package_id == m.RawDataPackage.id,
            )
            .join(
                m.InstrumentModule, m.InstrumentModule.id == m.RawDataPackage.instrument_module_id
            )
        ).all()
        scans = session.scalars(select(m.ExecutedObsUnit).order_by(m.ExecutedObsUnit.id)).all()
        assert [s.name for s in scans] == [f"scan-00000{i}" for i in range(1, 5)]
        assert all(s.end_time > s.start_time for s in scans)
        assert all(b.start_time > a.end_time for a, b in itertools.pairwise(scans))
    assert len(rows) == 8  # one package per scan and module
    assert {module for _, _, module in rows} == {"LFA", "HFA"}
    for package, copy, module in rows:
        path = Path(copy.path)
        assert path.is_relative_to(tmp_path / "archive")
        content = path.read_bytes()
        assert package.size == len(content)
        assert package.checksum == hashlib.sha256(content).hexdigest()
        obs = package.metadata_["observation"]
        assert obs["source"] in ("NGC253", "Sgr B2/core") and obs["frequency_ghz"] > 400
        assert package.metadata_["instrument"]["module"] == module
        data = np.load(io.BytesIO(content))
        assert set(data.files) == {
            "counts",
            "phase",
            "integration_s",
            "time_s",
            "row",
            "offset_x_arcsec",
            "offset_y_arcsec",
            "frequency_ghz",
            "t_hot_k",
            "t_cold_k",
            "t_atm_k",
            "elevation_deg",
        }
        assert set(data["phase"].tolist()) == {0, 1, 2, 3}  # ON, hot, cold, OFF
        dumps = package.metadata_["instrument"]["n_dumps"]
        assert data["counts"].shape == (dumps, 128)
        on = data["phase"] == 0
        # An on-the-fly map: the ON dumps cover the 320" field around the source.
        assert np.nanmax(data["offset_x_arcsec"][on]) == pytest.approx(160, abs=5)
        assert np.nanmin(data["offset_y_arcsec"][on]) == pytest.approx(-160, abs=5)
        assert obs["duration_s"] >= data["integration_s"].sum()


def test_raw_counts_calibrate_to_a_line_above_the_sky(engine: Engine, tmp_path: Path) -> None:
    _with_archive(engine, tmp_path)
    _simulate(engine, scans=1, seed=11, sources=("NGC253",), lines=("CO43",))
    with Session(engine) as session:
        path = session.scalars(select(m.RawDataPackageCopy.path)).first()
    assert path is not None
    data = np.load(path)
    counts, phase = data["counts"].astype(float), data["phase"]
    hot, cold, off = (counts[phase == p].mean(axis=0) for p in (1, 2, 3))
    gain = (hot - cold) / (data["t_hot_k"] - data["t_cold_k"])
    t_rx = hot / gain - data["t_hot_k"]
    t_off = off / gain - t_rx
    assert 60 < np.median(t_rx) < 160  # the receiver
    assert 50 < np.median(t_off) < 250  # the atmosphere's emission
    centre = (phase == 0) & (np.hypot(data["offset_x_arcsec"], data["offset_y_arcsec"]) < 15)
    line = (counts[centre].mean(axis=0) - off) / gain
    assert line.max() - np.median(line) > 1.0  # the source's line above the sky


def test_same_seed_gives_identical_data_on_fresh_databases(
    make_database: Callable[[], URL], tmp_path: Path
) -> None:
    results = []
    for name in ("a", "b"):
        engine = create_engine(make_database())
        migrate.upgrade(engine)
        _with_archive(engine, tmp_path / name)
        _simulate(engine, scans=3, seed=42)
        with Session(engine) as session:
            results.append(
                session.execute(
                    select(
                        m.RawDataPackage.name,
                        m.RawDataPackage.checksum,
                        m.RawDataPackage.size,
                        m.RawDataPackage.metadata_,
                    ).order_by(m.RawDataPackage.name)
                ).all()
            )
        engine.dispose()
    assert results[0] == results[1]
    assert len(results[0]) == 6


def test_repeated_calls_add_new_scans(engine: Engine, tmp_path: Path) -> None:
    _with_archive(engine, tmp_path)
    _simulate(engine, scans=2, seed=1)
    _simulate(engine, scans=3, seed=1)
    with Session(engine) as session:
        names = session.scalars(
            select(m.ExecutedObsUnit.name).order_by(m.ExecutedObsUnit.name)
        ).all()
        assert names == [f"scan-00000{i}" for i in range(1, 6)]
        assert session.query(m.RawDataPackage).count() == 10
        assert session.query(m.ObsUnit).count() == 4  # 2 sources x 2 lines, reused


@pytest.mark.parametrize(
    ("request_kwargs", "message"),
    [
        ({"scans": 0, "seed": 1}, "--scans must be at least 1, got 0"),
        ({"scans": 2, "seed": 1, "bad_scans": 3}, "--bad-scans must be between 0 and --scans (2)"),
        (
            {"scans": 1, "seed": 1, "lines": ("CO99",)},
            "unknown line(s) CO99; the simulator knows CO43",
        ),
        (
            {"scans": 1, "seed": 1, "location": "local"},
            "--location 'local' is not a LONG_TERM_ARCHIVE location",
        ),
    ],
)
def test_bad_requests_write_nothing(
    engine: Engine, tmp_path: Path, request_kwargs: dict[str, object], message: str
) -> None:
    _with_archive(engine, tmp_path)
    before = snapshot(engine)
    with pytest.raises(SimulationError) as info:
        _simulate(engine, **request_kwargs)
    assert message in str(info.value)
    assert snapshot(engine) == before
    assert not (tmp_path / "archive").exists()


def test_no_archive_location_is_a_clear_error(engine: Engine) -> None:
    with pytest.raises(
        SimulationError,
        match="found no LONG_TERM_ARCHIVE locations; declare one with `ccat-wm apply`",
    ):
        _simulate(engine, scans=1, seed=1)


def test_failed_transaction_removes_written_files(engine: Engine, tmp_path: Path) -> None:
    _with_archive(engine, tmp_path)
    # A scan name that collides makes the INSERT fail after the files were written.
    _simulate(engine, scans=1, seed=1)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE executed_obs_unit SET name = 'scan-000002'")
    files_before = sorted(p for p in (tmp_path / "archive").rglob("*") if p.is_file())
    with pytest.raises(Exception, match="uq_executed_obs_unit_name"):
        _simulate(engine, scans=1, seed=1)
    assert sorted(p for p in (tmp_path / "archive").rglob("*") if p.is_file()) == files_before


def test_cli_simulate_prints_progress_and_json(
    engine: Engine, cli_env: dict[str, str], tmp_path: Path
) -> None:
    _with_archive(engine, tmp_path)
    result = run_cli(
        cli_env,
        "simulate",
        "--scans",
        "20",
        "--seed",
        "5",
        "--sources",
        "NGC253,M83",
        "--lines",
        "CO43,CO76",
    )
    assert result.returncode == 0, result.stderr
    assert "simulated 2/20 scans" in result.stderr and "simulated 20/20 scans" in result.stderr
    assert "registered 20 scans (scan-000001 .. scan-000020), 40 raw data packages" in result.stdout
    result = run_cli(cli_env, "simulate", "--scans", "1", "--seed", "5", "--json")
    payload = json.loads(result.stdout)
    assert (
        payload["scan_names"] == ["scan-000021"]
        and payload["package_count"] == 2
        and payload["seed"] == 5
    )


def test_names_of_dots_never_write_outside_the_archive(engine: Engine, tmp_path: Path) -> None:
    """`simulate --program .. --sources ..` once wrote its files beside the archive."""
    archive = tmp_path / "inner"
    _with_archive(engine, archive)
    _simulate(engine, scans=2, seed=3, sources=("..", "."), program="..")
    root = (archive / "archive").resolve()
    with Session(engine) as session:
        paths = [Path(p) for p in session.scalars(select(m.RawDataPackageCopy.path))]
    assert len(paths) == 4
    for path in paths:
        assert ".." not in path.parts and "." not in path.parts[1:]
        assert path.resolve().is_relative_to(root) and path.is_file(), path
    outside = [p for p in tmp_path.rglob("*.npz") if not p.resolve().is_relative_to(root)]
    assert outside == []


def test_bad_scans_are_the_last_ones_observed_in_poor_weather(
    engine: Engine, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """`--bad-scans 1`: the last scan is observed through a thick atmosphere (its sidecar
    says so) and calibrates to a Tsys* of thousands of kelvin; the other scans are byte
    for byte those of the same seed in good weather."""
    _with_archive(engine, tmp_path)
    result = run_cli(cli_env, "simulate", "--scans", "3", "--bad-scans", "1", "--seed", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "observed in poor weather: scan-000003"
    package, scan, copy = m.RawDataPackage, m.ExecutedObsUnit, m.RawDataPackageCopy
    with Session(engine) as session:
        rows = session.execute(
            select(scan.name, package.name, package.checksum, package.metadata_, copy.path)
            .join(scan, scan.id == package.executed_obs_unit_id)
            .join(copy, copy.raw_data_package_id == package.id)
            .order_by(package.name)
        ).all()
    tsys: dict[str, list[float]] = {}
    for name, _, _, metadata, path in rows:
        with np.load(path) as data:
            calibrated = calibrate({k: data[k] for k in data.files})
        tsys.setdefault(name, []).append(float(np.median(calibrated.tsys_k)))
        assert metadata["observation"].get("weather") == ("poor" if name == "scan-000003" else None)
    assert min(tsys["scan-000003"]) > 5000
    assert max(t for name, ts in tsys.items() if name != "scan-000003" for t in ts) < 2000
    sources, lines = list(DEFAULT_SOURCES), list(DEFAULT_LINES)
    positions = {s: source_position(s) for s in sources}
    good = {
        p.name: p.checksum
        for n in (1, 2, 3)
        for p in simulate_scan(
            5, n, start=FIRST_EPOCH, sources=sources, lines=lines, positions=positions
        ).packages
    }
    same = {name: good[name] == checksum for _, name, checksum, _, _ in rows}
    assert same == {name: not name.startswith("scan-000003") for name in same}
