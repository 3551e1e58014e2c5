"""chai-calibrate: hot/cold load calibration of CHAI raw counts into antenna temperature.

The raw counts are `g * (T + T_rx)`; the hot and cold load phases give the gain
`g = (C_hot - C_cold) / (T_hot - T_cold)`, and each sky dump becomes
`T_sky = (C_sky - C_cold) / g + T_cold`. The calibrated spectrum is the mean over the
sky dumps; its noise is estimated from the dump-to-dump scatter.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from chai_software.contract import job, save_arrays, sidecar

SKY, HOT, COLD = 0, 1, 2


def calibrate(raw: dict[str, np.ndarray], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (mean antenna temperature spectrum, per-channel noise) of one raw package."""
    counts, phase = raw["counts"].astype(np.float64), raw["phase"]
    t_hot, t_cold = float(raw["t_hot_k"]), float(raw["t_cold_k"])
    hot, cold = counts[phase == HOT].mean(axis=0), counts[phase == COLD].mean(axis=0)
    if mode != "hot_cold":
        raise ValueError(f"unknown calibration mode {mode!r}; expected hot_cold")
    gain = (hot - cold) / (t_hot - t_cold)
    sky = (counts[phase == SKY] - cold) / gain + t_cold
    noise = sky.std(axis=0) / np.sqrt(max(len(sky), 1))
    return sky.mean(axis=0), noise


def main(argv: list[str] | None = None) -> int:
    """Calibrate every raw input of the manifest."""
    parser = argparse.ArgumentParser(prog="chai-calibrate")
    parser.add_argument("--mode", required=True)
    args = parser.parse_args(argv)
    run = job()
    raws = [i for i in run.inputs if i["kind"] == "raw"]
    if not raws:
        print("no raw inputs in the manifest", file=sys.stderr)
        return 2
    for item in raws:
        with np.load(item["path"]) as data:
            raw = {k: data[k] for k in data.files}
        spectrum, noise = calibrate(raw, args.mode)
        name = Path(item["path"]).name.removesuffix(".npz")
        out = run.output / "science" / f"{name}.calibrated.npz"
        save_arrays(out, frequency_ghz=raw["frequency_ghz"], t_a_k=spectrum, noise_k=noise)
        observation = item.get("metadata", {}).get("observation", {})
        sidecar(out, {"package": item["name"], "mode": args.mode, "observation": observation})
        run.log(f"calibrated {item['name']}: mean T_A {spectrum.mean():.2f} K")
    run.write_json("statistics", "calibration.json", {"packages": len(raws)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
