"""chai-baseline: polynomial baseline subtraction, with the residual RMS as a QA metric.

The baseline is fitted on the line-free channels (the outer quarter on each side of the
band, where the tuned line is centred) and subtracted from the whole spectrum.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from chai_software.contract import job, save_arrays, sidecar


def subtract_baseline(
    frequency: np.ndarray, spectrum: np.ndarray, order: int
) -> tuple[np.ndarray, float]:
    """Return (baseline-subtracted spectrum, RMS of the line-free residual)."""
    n = len(spectrum)
    free = np.zeros(n, dtype=bool)
    free[: n // 4] = free[-(n // 4) :] = True
    x = (frequency - frequency.mean()) / (np.ptp(frequency) or 1.0)
    coefficients = np.polyfit(x[free], spectrum[free], order)
    residual = spectrum - np.polyval(coefficients, x)
    return residual, float(np.sqrt(np.mean(residual[free] ** 2)))


def main(argv: list[str] | None = None) -> int:
    """Subtract baselines of every calibrated spectrum in the manifest."""
    parser = argparse.ArgumentParser(prog="chai-baseline")
    parser.add_argument("--order", type=int, default=1)
    args = parser.parse_args(argv)
    run = job()
    spectra = [i for i in run.inputs if i["kind"] == "product" and i["path"].endswith(".npz")]
    rms_values = {}
    for item in spectra:
        path = Path(item["path"])
        with np.load(path) as data:
            frequency, spectrum = data["frequency_ghz"], data["t_a_k"]
        residual, rms = subtract_baseline(frequency, spectrum, args.order)
        name = path.name.removesuffix(".calibrated.npz")
        out = run.output / "science" / f"{name}.baselined.npz"
        save_arrays(out, frequency_ghz=frequency, t_a_k=residual)
        upstream = item.get("metadata", {})
        sidecar(out, {**upstream, "baseline_order": args.order, "rms_k": rms})
        rms_values[name] = rms
        run.log(f"baseline order {args.order} on {name}: rms {rms:.4f} K")
    qa = run.write_json("qa", "rms.json", {"rms_k": rms_values, "order": args.order})
    sidecar(qa, {"max_rms_k": max(rms_values.values(), default=0.0)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
