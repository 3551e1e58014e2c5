"""Deterministic generation of scans and their raw counts (no database access).

A raw data package file is an `.npz` archive written with fixed zip timestamps, so the
same seed gives byte-identical files. It holds `counts` (dumps x channels, float32),
`phase` (0 sky, 1 hot load, 2 cold load per dump), `frequency_ghz` (channel axis),
`time_s` and the load temperatures `t_hot_k` and `t_cold_k`, so the calibration
software can compute T_sky = T_hot - (T_hot - T_cold) * (C_hot - C_sky) / (C_hot - C_cold).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from ccat_wm.simulate.catalog import (
    CHANNEL_WIDTH_GHZ,
    DUMP_SECONDS,
    INSTRUMENT,
    MODULES,
    N_CHANNELS,
    T_COLD_K,
    T_HOT_K,
    tuned_line,
)

PHASE_SKY, PHASE_HOT, PHASE_COLD = 0, 1, 2
FILE_FORMAT = "ccat-raw-counts-npz/1"
SPEED_OF_LIGHT_KM_S = 299_792.458


@dataclass(frozen=True, slots=True)
class SimulatedPackage:
    """One raw data package: one scan x one instrument module, with its file bytes."""

    name: str
    """Package name, unique."""
    module: str
    """Instrument module name."""
    content: bytes
    """The `.npz` file."""
    checksum: str
    """SHA-256 of `content`, hex."""
    metadata: dict[str, Any]
    """Metadata JSON: observation (frequency, source, line, timing) and instrument."""


@dataclass(frozen=True, slots=True)
class SimulatedScan:
    """One scan (ExecutedObsUnit) with its packages."""

    number: int
    """Scan number, continuing over repeated simulations."""
    name: str
    """Scan name `scan-000042`."""
    source: str
    """Source observed."""
    line: str
    """Line the obs unit targets."""
    start_time: dt.datetime
    """Start of the scan (UTC)."""
    end_time: dt.datetime
    """End of the scan (UTC)."""
    packages: tuple[SimulatedPackage, ...]
    """One package per instrument module."""


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w") as handle:
                np.lib.format.write_array(handle, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def _raw_counts(
    rng: np.random.Generator, centre_ghz: float, line_ghz: float, n_dumps: int
) -> dict[str, np.ndarray]:
    channels = np.arange(N_CHANNELS)
    frequency = centre_ghz + (channels - N_CHANNELS / 2) * CHANNEL_WIDTH_GHZ
    gain = 1000.0 * (1.0 + 0.1 * np.sin(channels / 9.0 + rng.uniform(0, 6.28)))
    t_receiver = 120.0 + rng.uniform(-10, 10)
    velocity_km_s = rng.uniform(-30, 30)
    observed_ghz = line_ghz * (1 - velocity_km_s / SPEED_OF_LIGHT_KM_S)
    sigma_ghz = line_ghz * rng.uniform(10, 40) / 2.355 / SPEED_OF_LIGHT_KM_S
    line_k = rng.uniform(2.0, 8.0) * np.exp(-0.5 * ((frequency - observed_ghz) / sigma_ghz) ** 2)
    baseline_k = 30.0 + rng.uniform(-2, 2) + rng.uniform(-3, 3) * (channels / N_CHANNELS - 0.5)
    phase = np.full(n_dumps, PHASE_SKY, dtype=np.int8)
    phase[:2], phase[2:4] = PHASE_HOT, PHASE_COLD
    load_k = np.where(phase == PHASE_HOT, T_HOT_K, T_COLD_K)[:, None]
    sky_k = (baseline_k + line_k)[None, :] + rng.normal(0, 0.3, (n_dumps, N_CHANNELS))
    temperature = np.where((phase == PHASE_SKY)[:, None], sky_k, load_k)
    counts = gain[None, :] * (temperature + t_receiver) + rng.normal(0, 5, (n_dumps, N_CHANNELS))
    return {
        "counts": counts.astype(np.float32),
        "phase": phase,
        "frequency_ghz": frequency,
        "time_s": np.arange(n_dumps) * DUMP_SECONDS,
        "t_hot_k": np.array(T_HOT_K),
        "t_cold_k": np.array(T_COLD_K),
    }


def simulate_scan(
    seed: int,
    number: int,
    *,
    start: dt.datetime,
    sources: list[str],
    lines: list[str],
    positions: dict[str, tuple[float, float]],
) -> SimulatedScan:
    """Generate scan `number` deterministically from (`seed`, `number`)."""
    rng = np.random.default_rng([seed, number])
    source = sources[int(rng.integers(len(sources)))]
    line = lines[int(rng.integers(len(lines)))]
    n_dumps = int(rng.integers(24, 64))
    end = start + dt.timedelta(seconds=n_dumps * DUMP_SECONDS)
    name = f"scan-{number:06d}"
    ra, dec = positions[source]
    packages = []
    for module in MODULES:
        tuned = tuned_line(module, line)
        arrays = _raw_counts(rng, tuned.rest_frequency_ghz, tuned.rest_frequency_ghz, n_dumps)
        content = _npz_bytes(arrays)
        metadata = {
            "format": FILE_FORMAT,
            "observation": {
                "scan": name,
                "source": source,
                "line": tuned.name,
                "target_line": line,
                "frequency_ghz": tuned.rest_frequency_ghz,
                "ra_deg": ra,
                "dec_deg": dec,
                "start_time": start.isoformat(),
                "end_time": end.isoformat(),
                "duration_s": n_dumps * DUMP_SECONDS,
            },
            "instrument": {
                "name": INSTRUMENT,
                "module": module.name,
                "n_channels": N_CHANNELS,
                "n_dumps": n_dumps,
                "channel_width_ghz": CHANNEL_WIDTH_GHZ,
                "t_hot_k": T_HOT_K,
                "t_cold_k": T_COLD_K,
            },
        }
        packages.append(
            SimulatedPackage(
                name=f"{name}-{INSTRUMENT}-{module.name}",
                module=module.name,
                content=content,
                checksum=hashlib.sha256(content).hexdigest(),
                metadata=metadata,
            )
        )
    return SimulatedScan(number, name, source, line, start, end, tuple(packages))


def source_position(name: str, known: dict[str, tuple[float, float]]) -> tuple[float, float]:
    """Return a source's (RA, Dec) in degrees; unknown names get a stable one from their hash."""
    if name in known:
        return known[name]
    digest = hashlib.sha256(name.encode()).digest()
    ra = int.from_bytes(digest[:4], "big") / 2**32 * 360.0
    dec = int.from_bytes(digest[4:8], "big") / 2**32 * 120.0 - 60.0
    return round(ra, 4), round(dec, 4)
