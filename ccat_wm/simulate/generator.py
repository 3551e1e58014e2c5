"""Deterministic generation of on-the-fly (OTF) map scans and their raw counts (no DB access).

A scan maps the square field around its source in rows: before the rows the receiver
looks at the hot and the cold load, and before each row at a reference position off the
source (OFF); along a row it records a spectrum every dump (ON). Even scans run their
rows along RA, odd ones along Dec, and every other pair is shifted by half a row, so
scans of one source cross and interleave. What the receiver sees is the sky (the
atmosphere's emission, the source's line through the atmosphere's transmission) or a
load, plus its own noise temperature, times a gain that ripples across the band, with
the radiometer noise of the system temperature (Tsys) in each channel and dump.

A raw data package file is an `.npz` archive written with fixed zip timestamps, so the
same seed gives byte-identical files. It holds per dump `counts` (dumps x channels,
float32), `phase` (0 ON, 1 hot load, 2 cold load, 3 OFF), `integration_s`, `time_s`,
`row` (-1 off the rows), `offset_x_arcsec` and `offset_y_arcsec` (east and north of the
source; NaN off the rows), the channel axis `frequency_ghz`, and the scalars `t_hot_k`,
`t_cold_k`, `t_atm_k` and `elevation_deg`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import math
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from ccat_wm.simulate.catalog import (
    DUMP_SECONDS,
    FIELD_ARCSEC,
    INSTRUMENT,
    MODULES,
    N_CHANNELS,
    ROW_SPACING_ARCSEC,
    SAMPLE_SPACING_ARCSEC,
    T_ATM_K,
    T_COLD_K,
    T_HOT_K,
    TELESCOPE,
    LineInfo,
    ModuleInfo,
    beam_fwhm_arcsec,
    tuned_line,
)
from ccat_wm.simulate.sky import SourceModel, brightness, source_info, source_model

PHASE_ON, PHASE_HOT, PHASE_COLD, PHASE_OFF = 0, 1, 2, 3
FILE_FORMAT = "ccat-raw-otf-npz/2"
SPEED_OF_LIGHT_KM_S = 299_792.458
LOAD_DUMPS = 2
LOAD_SECONDS = 1.0
OFF_SECONDS = 4.0
"""The reference of a row integrates longer than an ON dump, so its noise stays small."""
TURNAROUND_SECONDS = 2.0
POOR_WEATHER_OPACITY = 3.0
"""Zenith opacity a bad scan's atmosphere adds (`ccat-wm simulate --bad-scans`): at most
5% of the sky's signal comes through, and Tsys* is several thousand kelvin."""


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
    """Metadata JSON: observation (frequency, source, line, timing, field) and instrument."""


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


@dataclass(frozen=True, slots=True)
class ScanPattern:
    """Where the telescope points in each dump of a scan, and for how long."""

    phase: np.ndarray
    """Per dump: ON, HOT, COLD or OFF."""
    row: np.ndarray
    """Per dump: the row it belongs to (-1 for loads)."""
    x_arcsec: np.ndarray
    """Per dump: offset east of the source (NaN off the rows)."""
    y_arcsec: np.ndarray
    """Per dump: offset north of the source (NaN off the rows)."""
    integration_s: np.ndarray
    """Per dump: integration time."""
    direction: str
    """`RA` or `Dec`: the direction of the rows."""

    @property
    def duration_s(self) -> float:
        """Time on the loads, the references and the rows, with the turnarounds."""
        rows = int(self.row.max()) + 1
        return float(self.integration_s.sum()) + rows * TURNAROUND_SECONDS


def scan_pattern(number: int) -> ScanPattern:
    """Return the OTF pattern of scan `number`: loads, then per row an OFF and its dumps."""
    half = FIELD_ARCSEC / 2
    along = np.arange(-half, half + 1e-9, SAMPLE_SPACING_ARCSEC)
    shift = ROW_SPACING_ARCSEC / 2 if (number // 2) % 2 else 0.0
    across = np.arange(-half + shift, half + 1e-9, ROW_SPACING_ARCSEC)
    direction = "RA" if number % 2 == 0 else "Dec"
    phase = [PHASE_HOT] * LOAD_DUMPS + [PHASE_COLD] * LOAD_DUMPS
    row = [-1] * (2 * LOAD_DUMPS)
    xs, ys = [math.nan] * (2 * LOAD_DUMPS), [math.nan] * (2 * LOAD_DUMPS)
    seconds = [LOAD_SECONDS] * (2 * LOAD_DUMPS)
    for index, offset in enumerate(across):
        path = along if index % 2 == 0 else along[::-1]  # back and forth
        phase += [PHASE_OFF] + [PHASE_ON] * len(path)
        row += [index] * (len(path) + 1)
        seconds += [OFF_SECONDS] + [DUMP_SECONDS] * len(path)
        if direction == "RA":
            xs += [math.nan, *path]
            ys += [math.nan] + [offset] * len(path)
        else:
            xs += [math.nan] + [offset] * len(path)
            ys += [math.nan, *path]
    return ScanPattern(
        phase=np.array(phase, dtype=np.int8),
        row=np.array(row, dtype=np.int16),
        x_arcsec=np.array(xs),
        y_arcsec=np.array(ys),
        integration_s=np.array(seconds),
        direction=direction,
    )


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w") as handle:
                np.lib.format.write_array(handle, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def band(module: ModuleInfo, line: LineInfo, v_lsr_kms: float) -> np.ndarray:
    """Channel frequencies (GHz): the band centred on the line at the source's velocity."""
    centre = line.rest_frequency_ghz * (1 - v_lsr_kms / SPEED_OF_LIGHT_KM_S)
    return centre + (np.arange(N_CHANNELS) - N_CHANNELS / 2) * module.channel_width_ghz


def _raw_arrays(
    pattern: ScanPattern, counts: np.ndarray, frequency: np.ndarray, elevation: float
) -> dict[str, np.ndarray]:
    """Return the arrays of a raw file: the counts, and each dump's phase, time and offset."""
    start = np.concatenate([[0.0], np.cumsum(pattern.integration_s)[:-1]])
    return {
        "counts": counts.astype(np.float32),
        "phase": pattern.phase,
        "integration_s": pattern.integration_s,
        "time_s": start + np.maximum(pattern.row, 0) * TURNAROUND_SECONDS,
        "row": pattern.row,
        "offset_x_arcsec": pattern.x_arcsec,
        "offset_y_arcsec": pattern.y_arcsec,
        "frequency_ghz": frequency,
        "t_hot_k": np.array(T_HOT_K),
        "t_cold_k": np.array(T_COLD_K),
        "t_atm_k": np.array(T_ATM_K),
        "elevation_deg": np.array(round(elevation, 3)),
    }


def raw_counts(
    rng: np.random.Generator,
    pattern: ScanPattern,
    *,
    module: ModuleInfo,
    line: LineInfo,
    model: SourceModel,
    poor_weather: bool = False,
) -> dict[str, np.ndarray]:
    """Return the counts a CHAI module records during a scan of `model` in `line`.

    `poor_weather`: the atmosphere is `POOR_WEATHER_OPACITY` more opaque (the same
    random draws otherwise), so the scan's Tsys* is thousands of kelvin.
    """
    frequency = band(module, line, model.info.v_lsr_kms)
    velocity = SPEED_OF_LIGHT_KM_S * (1 - frequency / line.rest_frequency_ghz)
    channels = np.arange(N_CHANNELS)
    gain = 1000.0 * (1.0 + 0.1 * np.sin(channels / 9.0 + rng.uniform(0, 2 * math.pi)))
    scale = line.rest_frequency_ghz / 461.0
    t_receiver = rng.uniform(90.0, 130.0) * scale
    elevation = rng.uniform(35.0, 70.0)
    opacity = rng.uniform(0.3, 0.7) * scale / math.sin(math.radians(elevation))
    if poor_weather:
        opacity += POOR_WEATHER_OPACITY * scale / math.sin(math.radians(elevation))
    transmission = math.exp(-opacity)
    t_sky = T_ATM_K * (1 - transmission)
    n_rows = int(pattern.row.max()) + 1
    drift = rng.normal(0.0, 0.15, (n_rows, 2))  # per row: offset and slope across the band
    on = pattern.phase == PHASE_ON
    temperature = np.empty((len(pattern.phase), N_CHANNELS))
    temperature[pattern.phase == PHASE_HOT] = T_HOT_K
    temperature[pattern.phase == PHASE_COLD] = T_COLD_K
    temperature[pattern.phase == PHASE_OFF] = t_sky
    source = brightness(
        model, line, beam_fwhm_arcsec(line.rest_frequency_ghz),
        x_arcsec=pattern.x_arcsec[on], y_arcsec=pattern.y_arcsec[on], velocity_kms=velocity,
    )  # fmt: skip
    rows = pattern.row[on]
    ripple = drift[rows, :1] + drift[rows, 1:] * (channels / N_CHANNELS - 0.5)
    temperature[on] = t_sky + transmission * source + ripple
    channel_hz = module.channel_width_ghz * 1e9
    noise = (temperature + t_receiver) / np.sqrt(channel_hz * pattern.integration_s)[:, None]
    system = temperature + t_receiver + rng.normal(0.0, 1.0, temperature.shape) * noise
    counts = gain[None, :] * system
    return _raw_arrays(pattern, counts, frequency, elevation)


def _package_metadata(  # noqa: PLR0917 - the facts of one package, each its own
    name: str,
    source: str,
    line: str,
    tuned: LineInfo,
    module: ModuleInfo,
    model: SourceModel,
    pattern: ScanPattern,
    position: tuple[float, float],
    times: tuple[dt.datetime, dt.datetime],
) -> dict[str, Any]:
    """Return the sidecar metadata of one module's package of a scan."""
    (ra, dec), (start, end) = position, times
    return {
        "format": FILE_FORMAT,
        "observation": {
            "scan": name,
            "source": source,
            "line": tuned.name,
            "target_line": line,
            "frequency_ghz": tuned.rest_frequency_ghz,
            "ra_deg": ra,
            "dec_deg": dec,
            "v_lsr_kms": model.info.v_lsr_kms,
            "line_window_kms": model.line_window_kms(),
            "mode": "otf",
            "scan_direction": pattern.direction,
            "field_arcsec": FIELD_ARCSEC,
            "start_time": start.isoformat(),
            "end_time": end.isoformat(),
            "duration_s": pattern.duration_s,
        },
        "instrument": {
            "telescope": TELESCOPE,
            "name": INSTRUMENT,
            "module": module.name,
            "n_channels": N_CHANNELS,
            "n_dumps": len(pattern.phase),
            "channel_width_ghz": module.channel_width_ghz,
            "beam_fwhm_arcsec": round(beam_fwhm_arcsec(tuned.rest_frequency_ghz), 2),
            "t_hot_k": T_HOT_K,
            "t_cold_k": T_COLD_K,
        },
    }


def simulate_scan(
    seed: int,
    number: int,
    *,
    start: dt.datetime,
    sources: list[str],
    lines: list[str],
    positions: dict[str, tuple[float, float]],
    poor_weather: bool = False,
) -> SimulatedScan:
    """Generate scan `number` deterministically from (`seed`, `number`).

    `poor_weather`: observed through a far more opaque atmosphere (a bad scan, which a
    quality gate on Tsys* rejects); its source, line and pattern are those of the same
    scan in good weather.
    """
    rng = np.random.default_rng([seed, number])
    source = sources[int(rng.integers(len(sources)))]
    line = lines[int(rng.integers(len(lines)))]
    pattern = scan_pattern(number)
    end = start + dt.timedelta(seconds=pattern.duration_s)
    name = f"scan-{number:06d}"
    ra, dec = positions[source]
    model = source_model(source)
    packages = []
    for module in MODULES:
        tuned = tuned_line(module, line)
        arrays = raw_counts(
            rng, pattern, module=module, line=tuned, model=model, poor_weather=poor_weather
        )
        content = _npz_bytes(arrays)
        metadata = _package_metadata(
            name, source, line, tuned, module, model, pattern, (ra, dec), (start, end)
        )
        if poor_weather:
            metadata["observation"]["weather"] = "poor"
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


def source_position(name: str) -> tuple[float, float]:
    """Return a source's (RA, Dec) in degrees; unknown names get a stable one from their hash."""
    info = source_info(name)
    return info.ra_deg, info.dec_deg
