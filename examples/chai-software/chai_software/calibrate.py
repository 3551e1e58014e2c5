"""chai-calibrate: chopper-wheel calibration of CHAI on-the-fly raw counts to T_A*.

The hot and cold loads give the gain per channel, `g = (C_hot - C_cold) / (T_hot -
T_cold)`, and the receiver temperature `T_rx = C_hot / g - T_hot`. The reference (OFF)
of each row gives the sky's brightness `T_off = C_off / g - T_rx`, hence the
atmosphere's transmission `exp(-tau) = 1 - T_off / T_atm`; each ON dump of the row
becomes `T_A* = (C_on - C_off) / g / exp(-tau)`, with the system temperature
`Tsys* = (T_rx + T_off) / exp(-tau)` and the radiometer noise of ON minus OFF. A dump
that reaches the spectrometer's saturation, or is not finite, is flagged and left out.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chai_software.contract import job, save_arrays, sidecar, velocity_axis

ON, HOT, COLD, OFF = 0, 1, 2, 3
SATURATION_COUNTS = 2.0e6


@dataclass(frozen=True)
class Calibrated:
    """The calibrated ON spectra of one scan, with what the calibration measured."""

    t_a_k: np.ndarray
    """Spectra (spectra x channels) in T_A* (K)."""
    x_arcsec: np.ndarray
    """Offset east of each spectrum."""
    y_arcsec: np.ndarray
    """Offset north of each spectrum."""
    noise_k: np.ndarray
    """Radiometer noise of each spectrum (K per channel)."""
    tsys_k: np.ndarray
    """Tsys* of each spectrum's row (median over the band)."""
    t_rx_k: float
    """Receiver temperature (median over the band)."""
    tau: float
    """Opacity along the line of sight (median over the rows)."""
    flagged: int
    """ON dumps left out (saturated or not finite)."""
    dumps: int
    """ON dumps in the scan."""


def calibrate(raw: dict[str, np.ndarray]) -> Calibrated:
    """Calibrate one raw package's ON dumps against its loads and the OFF of each row."""
    counts, phase, row = raw["counts"].astype(np.float64), raw["phase"], raw["row"]
    t_hot, t_cold, t_atm = (float(raw[k]) for k in ("t_hot_k", "t_cold_k", "t_atm_k"))
    channel_hz = abs(float(raw["frequency_ghz"][1] - raw["frequency_ghz"][0])) * 1e9
    usable = np.isfinite(counts).all(axis=1) & (counts < SATURATION_COUNTS).all(axis=1)
    hot = counts[(phase == HOT) & usable].mean(axis=0)
    cold = counts[(phase == COLD) & usable].mean(axis=0)
    gain = (hot - cold) / (t_hot - t_cold)
    t_rx = hot / gain - t_hot
    spectra, xs, ys, noise, tsys, taus = [], [], [], [], [], []
    flagged = dumps = 0
    for index in np.unique(row[row >= 0]):
        in_row = row == index
        off_dumps = in_row & (phase == OFF) & usable
        on_dumps = in_row & (phase == ON)
        dumps += int(on_dumps.sum())
        flagged += int((on_dumps & ~usable).sum())
        on_dumps &= usable
        if not off_dumps.any() or not on_dumps.any():
            flagged += int(on_dumps.sum())
            continue
        off = counts[off_dumps].mean(axis=0)
        t_off = off / gain - t_rx
        transmission = max(1.0 - float(np.median(t_off)) / t_atm, 0.02)
        row_tsys = (t_rx + t_off) / transmission
        spectra.append((counts[on_dumps] - off) / gain / transmission)
        xs.append(raw["offset_x_arcsec"][on_dumps])
        ys.append(raw["offset_y_arcsec"][on_dumps])
        t_on, t_ref = raw["integration_s"][on_dumps], raw["integration_s"][off_dumps].sum()
        sigma = float(np.median(row_tsys)) * np.sqrt(
            1 / (channel_hz * t_on) + 1 / (channel_hz * t_ref)
        )
        noise.append(sigma)
        tsys.append(np.full(int(on_dumps.sum()), float(np.median(row_tsys))))
        taus.append(-np.log(transmission))
    if not spectra:
        raise ValueError("no usable ON dumps: every row lacks a usable reference or ON dump")
    return Calibrated(
        t_a_k=np.concatenate(spectra),
        x_arcsec=np.concatenate(xs),
        y_arcsec=np.concatenate(ys),
        noise_k=np.concatenate(noise),
        tsys_k=np.concatenate(tsys),
        t_rx_k=float(np.median(t_rx)),
        tau=float(np.median(taus)),
        flagged=flagged,
        dumps=dumps,
    )


def main(argv: list[str] | None = None) -> int:
    """Calibrate every raw input of the manifest."""
    parser = argparse.ArgumentParser(prog="chai-calibrate")
    parser.add_argument("--mode", required=True, choices=["hot_cold"])
    args = parser.parse_args(argv)
    run = job()
    raws = [i for i in run.inputs if i["kind"] == "raw"]
    if not raws:
        print("no raw inputs in the manifest", file=sys.stderr)
        return 2
    qa: dict[str, list[float]] = {"tsys": [], "tau": [], "t_rx": []}
    flagged = dumps = 0
    for item in raws:
        with np.load(item["path"]) as data:
            raw = {k: data[k] for k in data.files}
        result = calibrate(raw)
        observation = item.get("metadata", {}).get("observation", {})
        frequency = raw["frequency_ghz"]
        name = Path(item["path"]).name.removesuffix(".npz")
        out = run.output / "science" / f"{name}.calibrated.npz"
        save_arrays(
            out,
            frequency_ghz=frequency,
            velocity_kms=velocity_axis(frequency, observation.get("frequency_ghz")),
            t_a_k=result.t_a_k.astype(np.float32),
            noise_k=result.noise_k,
            tsys_k=result.tsys_k,
            offset_x_arcsec=result.x_arcsec,
            offset_y_arcsec=result.y_arcsec,
        )
        instrument = item.get("metadata", {}).get("instrument", {})
        sidecar(out, {
            "package": item["name"], "mode": args.mode, "observation": observation,
            "instrument": instrument, "spectra": len(result.t_a_k),
            "tsys_k": round(float(np.median(result.tsys_k)), 2), "tau": round(result.tau, 4),
        })  # fmt: skip
        qa["tsys"].append(float(np.median(result.tsys_k)))
        qa["tau"].append(result.tau)
        qa["t_rx"].append(result.t_rx_k)
        flagged, dumps = flagged + result.flagged, dumps + result.dumps
        run.log(
            f"calibrated {item['name']}: {len(result.t_a_k)} spectra, Tsys* "
            f"{np.median(result.tsys_k):.0f} K, tau {result.tau:.2f}, T_rx {result.t_rx_k:.0f} K, "
            f"{result.flagged} of {result.dumps} dumps flagged"
        )
    run.write_json("qa", "calibration.json", {
        "tsys_k": round(float(np.median(qa["tsys"])), 2),
        "tau": round(float(np.median(qa["tau"])), 4),
        "t_rx_k": round(float(np.median(qa["t_rx"])), 2),
        "flagged_fraction": round(flagged / max(dumps, 1), 4),
    })  # fmt: skip
    run.write_json("statistics", "calibration.json", {"packages": len(raws), "dumps": dumps})
    return 0


if __name__ == "__main__":
    sys.exit(main())
