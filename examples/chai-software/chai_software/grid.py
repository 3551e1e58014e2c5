"""chai-grid: spectra gridded into a FITS cube, with an integrated-intensity map and statistics.

Each scan of the simulated survey observes one position of a 5 x 5 raster around its
source (the position follows from the scan number); spectra falling on the same pixel
are averaged with equal weights. The cube has axes (frequency, dec, ra) with a simple
CAR world coordinate system; the map is the sum over channels times the channel width
in km/s (K km/s), drawn with matplotlib: offsets from the source in arcseconds, a
colour bar in K km/s and a title naming the source and the line.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from chai_software.contract import job, sidecar

RASTER = 5
C_KMS = 299_792.458


def raster_offset(scan: str) -> tuple[int, int]:
    """Pixel offset (x, y) of a scan in the 5 x 5 raster, from its number."""
    match = re.search(r"(\d+)$", scan)
    number = int(match.group(1)) if match else 0
    return number % RASTER - RASTER // 2, (number // RASTER) % RASTER - RASTER // 2


def grid(
    spectra: list[tuple[dict[str, Any], np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Return (cube [chan, y, x], frequency axis) from (metadata, frequency, spectrum)."""
    frequency = spectra[0][1]
    cube = np.zeros((len(frequency), RASTER, RASTER))
    hits = np.zeros((RASTER, RASTER))
    for metadata, _, spectrum in spectra:
        dx, dy = raster_offset(metadata.get("observation", {}).get("scan", ""))
        x, y = dx + RASTER // 2, dy + RASTER // 2
        cube[:, y, x] += spectrum
        hits[y, x] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        cube = np.where(hits > 0, cube / np.maximum(hits, 1), np.nan)
    return cube, frequency


def line_label(line: str) -> str:
    """`CO43` -> `CO(4-3)`, `CI10` -> `[CI](1-0)`: how astronomers write the transitions."""
    match = re.fullmatch(r"(CO|CI|CII)(\d)(\d)", line)
    if not match:
        return line
    species, upper, lower = match.groups()
    species = f"[{species}]" if species.startswith("CI") else species
    return f"{species}({upper}-{lower})"


def write_map(
    path: Path, image: np.ndarray, *, pixel_arcsec: float, source: str, line: str, spectra: int
) -> None:
    """Write the integrated-intensity map as a figure: offset axes, colour bar, title."""
    import matplotlib  # noqa: PLC0415 - only the gridding step draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    half = RASTER * pixel_arcsec / 2
    figure, axes = plt.subplots(figsize=(5.6, 4.8), dpi=100, layout="constrained")
    shown = axes.imshow(
        np.ma.masked_invalid(image),
        origin="lower",
        extent=(half, -half, -half, half),  # RA offset grows to the east (left)
        cmap="inferno",
        interpolation="nearest",
    )
    colour_bar = figure.colorbar(shown, ax=axes)
    colour_bar.set_label(r"integrated intensity $\int T_A^* \, dv$ [K km s$^{-1}$]")
    axes.set_xlabel(r"$\Delta\alpha$ (RA offset) [arcsec]")
    axes.set_ylabel(r"$\Delta\delta$ (Dec offset) [arcsec]")
    axes.set_title(f"{source} {line_label(line)}: moment 0 ({spectra} spectra)")
    axes.set_facecolor("0.85")  # pixels without data
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    """Grid every baselined spectrum of the manifest."""
    parser = argparse.ArgumentParser(prog="chai-grid")
    parser.add_argument("--pixel-arcsec", type=float, default=10.0)
    args = parser.parse_args(argv)
    run = job()
    spectra = []
    for item in run.inputs:
        if item["kind"] != "product" or not item["path"].endswith(".baselined.npz"):
            continue
        with np.load(item["path"]) as data:
            spectra.append((item.get("metadata", {}), data["frequency_ghz"], data["t_a_k"]))
    if not spectra:
        print("no baselined spectra in the manifest", file=sys.stderr)
        return 2
    cube, frequency = grid(spectra)
    observation = spectra[0][0].get("observation", {})
    source, line = observation.get("source", "unknown"), observation.get("line", "unknown")
    channel_kms = abs(float(frequency[1] - frequency[0])) / float(frequency.mean()) * C_KMS
    moment0 = np.nansum(cube, axis=0) * channel_kms
    moment0[np.all(np.isnan(cube), axis=0)] = np.nan
    header = fits.Header()
    for axis, (ctype, crval, cdelt, unit) in enumerate(
        [
            ("RA---CAR", observation.get("ra_deg", 0.0), -args.pixel_arcsec / 3600, "deg"),
            ("DEC--CAR", observation.get("dec_deg", 0.0), args.pixel_arcsec / 3600, "deg"),
            ("FREQ", float(frequency[0]) * 1e9, float(frequency[1] - frequency[0]) * 1e9, "Hz"),
        ],
        start=1,
    ):
        header[f"CTYPE{axis}"], header[f"CRVAL{axis}"] = ctype, crval
        header[f"CDELT{axis}"], header[f"CUNIT{axis}"] = cdelt, unit
        header[f"CRPIX{axis}"] = RASTER // 2 + 1 if axis < 3 else 1
    header["BUNIT"], header["OBJECT"], header["LINE"] = "K", source, line
    stem = f"{source}_{line}".replace(" ", "_").replace("/", "_")
    cube_path = run.output / "science" / f"{stem}.cube.fits"
    fits.PrimaryHDU(cube.astype(np.float32), header=header).writeto(cube_path, overwrite=True)
    sidecar(
        cube_path,
        {
            "source": source,
            "line": line,
            "spectra": len(spectra),
            "pixel_arcsec": args.pixel_arcsec,
            "shape": list(cube.shape),
        },
    )
    map_path = run.output / "plots" / f"{stem}.moment0.png"
    write_map(
        map_path,
        moment0,
        pixel_arcsec=args.pixel_arcsec,
        source=source,
        line=line,
        spectra=len(spectra),
    )
    sidecar(map_path, {"source": source, "line": line, "unit": "K km/s"})
    finite = moment0[np.isfinite(moment0)]
    stats = {
        "spectra": len(spectra),
        "pixels_filled": int(finite.size),
        "peak_k_kms": float(finite.max()) if finite.size else None,
        "mean_k_kms": float(finite.mean()) if finite.size else None,
        "cube_rms_k": float(np.nanstd(cube)),
    }
    run.write_json("statistics", f"{stem}.stats.json", stats)
    run.log(f"gridded {len(spectra)} spectra of {source} {line} into {cube_path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
