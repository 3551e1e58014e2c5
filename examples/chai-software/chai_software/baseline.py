"""chai-baseline: polynomial baselines fitted on the line-free channels and subtracted.

The line-free channels are those outside the source's line window, centred on its
systemic velocity (both from the observation's metadata; `--window-kms` overrides the
width). A polynomial of `--order` is fitted to each spectrum's line-free channels and
subtracted from the whole spectrum; the residual's RMS on the line-free channels is the
spectrum's measured noise, which the gridding uses as its weight.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from chai_software.contract import job, save_arrays, sidecar

MIN_FREE_CHANNELS = 8


def line_free(velocity_kms: np.ndarray, v_lsr_kms: float, window_kms: float) -> np.ndarray:
    """Mask of the channels outside the line window (full width `window_kms`)."""
    return np.abs(velocity_kms - v_lsr_kms) > window_kms / 2


def subtract_baselines(
    velocity_kms: np.ndarray, spectra: np.ndarray, free: np.ndarray, order: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return (spectra minus their baselines, RMS of each on the line-free channels)."""
    if int(free.sum()) < max(MIN_FREE_CHANNELS, order + 2):
        raise ValueError(
            f"only {int(free.sum())} line-free channels for a baseline of order {order}; "
            "narrow the line window (--window-kms)"
        )
    x = (velocity_kms - velocity_kms.mean()) / (np.ptp(velocity_kms) or 1.0)
    coefficients = np.polyfit(x[free], spectra[:, free].T, order)  # (order + 1, spectra)
    baseline = np.zeros_like(spectra)
    for power, row in zip(range(order, -1, -1), coefficients, strict=True):
        baseline += row[:, None] * x[None, :] ** power
    residual = spectra - baseline
    return residual, np.sqrt(np.mean(residual[:, free] ** 2, axis=1))


def main(argv: list[str] | None = None) -> int:
    """Subtract baselines of every calibrated scan in the manifest."""
    parser = argparse.ArgumentParser(prog="chai-baseline")
    parser.add_argument("--order", type=int, default=1)
    parser.add_argument("--window-kms", type=float, default=None)
    args = parser.parse_args(argv)
    run = job()
    inputs = [i for i in run.inputs if i["kind"] == "product" and i["path"].endswith(".npz")]
    if not inputs:
        print("no calibrated spectra in the manifest", file=sys.stderr)
        return 2
    all_rms = []
    for item in inputs:
        path = Path(item["path"])
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        upstream = item.get("metadata", {})
        observation = upstream.get("observation", {})
        window = args.window_kms or float(observation.get("line_window_kms", 100.0))
        velocity = arrays["velocity_kms"]
        free = line_free(velocity, float(observation.get("v_lsr_kms", 0.0)), window)
        residual, rms = subtract_baselines(
            velocity, arrays["t_a_k"].astype(np.float64), free, args.order
        )
        name = path.name.removesuffix(".calibrated.npz")
        out = run.output / "science" / f"{name}.baselined.npz"
        save_arrays(out, **{**arrays, "t_a_k": residual.astype(np.float32), "rms_k": rms})
        sidecar(out, {**upstream, "baseline_order": args.order, "line_window_kms": window,
                      "rms_k": round(float(np.median(rms)), 4)})  # fmt: skip
        all_rms.append(rms)
        run.log(
            f"baseline order {args.order} on {name}: {int(free.sum())} line-free channels, "
            f"median rms {np.median(rms):.3f} K over {len(rms)} spectra"
        )
    rms = np.concatenate(all_rms)
    run.write_json("qa", "baseline.json", {
        "rms_k": round(float(np.median(rms)), 4),
        "rms_p95_k": round(float(np.percentile(rms, 95)), 4),
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
