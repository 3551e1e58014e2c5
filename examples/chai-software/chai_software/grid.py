"""chai-grid: baselined OTF spectra gridded into a FITS cube, a moment-0 map and its figure.

All spectra of a source and line (every scan the manifest lists) go onto one grid
centred on the source (`--pixel-arcsec`; the grid covers every spectrum), with a
Gaussian kernel a third of the beam wide and weights from each spectrum's measured
noise (`chai_software.gridding`). The cube's velocity axis runs upwards; the moment-0
map integrates the line window around the systemic velocity. QA reports the noise per
channel, the empty fraction and the peak; see `chai_software.maps` for the files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from astropy.io import fits

from chai_software.contract import Job, job, sidecar
from chai_software.gridding import GridGeometry, Kernel, grid_spectra
from chai_software.maps import MapInfo, channel_noise, cube_header, moment0_header, write_map_figure

C_KMS = 299_792.458


def _software() -> str:
    try:
        return f"chai-software {version('chai-software')}"
    except PackageNotFoundError:
        return "chai-software"


def _load(run: Job) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Return the baselined inputs' metadata and their spectra stacked (velocity upwards)."""
    metadata, parts = [], []
    for item in run.inputs:
        if item["kind"] != "product" or not item["path"].endswith(".baselined.npz"):
            continue
        with np.load(item["path"]) as data:
            parts.append({k: data[k] for k in data.files})
        metadata.append(item.get("metadata", {}))
    if not parts:
        return [], {}
    velocity = parts[0]["velocity_kms"]
    for part, meta in zip(parts[1:], metadata[1:], strict=True):
        if not np.array_equal(part["velocity_kms"], velocity):
            scan = meta.get("observation", {}).get("scan", "?")
            raise ValueError(f"scan {scan} has another velocity axis than the first scan")
    flip = slice(None, None, -1) if velocity[1] < velocity[0] else slice(None)
    stacked = {
        "velocity_kms": velocity[flip],
        "t_a_k": np.concatenate([p["t_a_k"] for p in parts]).astype(np.float64)[:, flip],
        "x": np.concatenate([p["offset_x_arcsec"] for p in parts]),
        "y": np.concatenate([p["offset_y_arcsec"] for p in parts]),
        "rms": np.concatenate([p["rms_k"] for p in parts]),
    }
    return metadata, stacked


def main(argv: list[str] | None = None) -> int:
    """Grid every baselined spectrum of the manifest."""
    parser = argparse.ArgumentParser(prog="chai-grid")
    parser.add_argument("--pixel-arcsec", type=float, default=10.0)
    args = parser.parse_args(argv)
    run = job()
    metadata, data = _load(run)
    if not metadata:
        print("no baselined spectra in the manifest", file=sys.stderr)
        return 2
    observation = metadata[0].get("observation", {})
    instrument = metadata[0].get("instrument", {})
    source, line = observation.get("source", "unknown"), observation.get("line", "unknown")
    rest_ghz = float(observation["frequency_ghz"])
    beam = float(
        instrument.get("beam_fwhm_arcsec") or 1.2 * C_KMS / 1e6 / rest_ghz / 6.0 * 206_264.806
    )
    geometry = GridGeometry.covering(data["x"], data["y"], args.pixel_arcsec)
    kernel = Kernel.for_beam(beam, args.pixel_arcsec)
    weights = 1.0 / np.maximum(data["rms"], 1e-6) ** 2
    gridded = grid_spectra(
        data["x"], data["y"], data["t_a_k"], weights, geometry=geometry, kernel=kernel
    )
    velocity = data["velocity_kms"]
    info = MapInfo(
        source=source, line=line, ra_deg=float(observation.get("ra_deg", 0.0)),
        dec_deg=float(observation.get("dec_deg", 0.0)), rest_frequency_ghz=rest_ghz,
        date_obs=min(dt.datetime.fromisoformat(m["observation"]["start_time"]) for m in metadata),
        pixel_arcsec=args.pixel_arcsec, centre=geometry.centre,
        beam_arcsec=kernel.resolution(beam), software=_software(),
    )  # fmt: skip
    v_lsr = float(observation.get("v_lsr_kms", 0.0))
    window = float(metadata[0].get("line_window_kms", observation.get("line_window_kms", 100.0)))
    in_line = np.abs(velocity - v_lsr) <= window / 2
    channel_kms = float(velocity[1] - velocity[0])
    moment0 = np.nansum(gridded.cube[in_line], axis=0) * channel_kms
    moment0[gridded.weight <= 0] = np.nan
    noise = channel_noise(gridded.cube)
    rms = float(np.median(noise[~in_line])) if (~in_line).any() else float(np.median(noise))
    sigma0 = rms * channel_kms * float(np.sqrt(in_line.sum()))
    stem = f"{source}_{line}".replace(" ", "_").replace("/", "_")
    science = run.output / "science"
    cube_path, moment0_path = science / f"{stem}.cube.fits", science / f"{stem}.mom0.fits"
    fits.PrimaryHDU(gridded.cube.astype(np.float32), header=cube_header(info, velocity)).writeto(
        cube_path
    )
    v_from, v_to = float(velocity[in_line][0]), float(velocity[in_line][-1])
    m0_header = moment0_header(info, v_from, v_to)
    fits.PrimaryHDU(moment0.astype(np.float32), header=m0_header).writeto(moment0_path)
    empty = float(np.mean(gridded.weight <= 0))
    described = {
        "source": source, "line": line, "scans": len(metadata), "spectra": len(data["t_a_k"]),
        "pixel_arcsec": args.pixel_arcsec, "shape": list(gridded.cube.shape),
        "beam_arcsec": round(info.beam_arcsec, 2),
    }  # fmt: skip
    sidecar(cube_path, described)
    sidecar(
        moment0_path,
        {**described, "unit": "K km/s", "velocity_kms": [round(v_from, 2), round(v_to, 2)]},
    )
    map_path = run.output / "plots" / f"{stem}.moment0.png"
    caption = (
        f"{len(data['t_a_k']):,} spectra from {len(metadata)} scans;  "
        f"{v_from:.0f} to {v_to:.0f} km/s;  "
        f'contours 3, 6, 12, ... x {sigma0:.2f} K km/s;  beam {info.beam_arcsec:.1f}"'
    )
    write_map_figure(map_path, moment0, m0_header, info=info, sigma=sigma0, caption=caption)
    sidecar(map_path, {"source": source, "line": line, "unit": "K km/s"})
    finite = moment0[np.isfinite(moment0)]
    run.write_json("qa", f"{stem}.map.json", {
        "rms_k": round(rms, 4),
        "rms_per_channel_k": [round(float(v), 4) for v in noise],
        "empty_fraction": round(empty, 4),
        "peak_k": round(float(np.nanmax(gridded.cube)), 3),
        "moment0_sigma_k_kms": round(sigma0, 4),
    })  # fmt: skip
    run.write_json("statistics", f"{stem}.stats.json", {
        "scans": len(metadata), "spectra": len(data["t_a_k"]),
        "pixels_filled": int(finite.size), "pixels": int(moment0.size),
        "peak_k_kms": round(float(finite.max()), 3) if finite.size else None,
        "mean_k_kms": round(float(finite.mean()), 3) if finite.size else None,
    })  # fmt: skip
    run.log(
        f"gridded {len(data['t_a_k'])} spectra of {source} {line} from {len(metadata)} scans "
        f"onto {geometry.size} x {geometry.size} pixels ({empty:.1%} empty); rms {rms:.3f} K"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
