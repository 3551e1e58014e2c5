"""What the gridding step hands to astronomers: FITS cube and moment-0 map, and its figure.

The FITS files carry a complete world coordinate system (RA/Dec in a SIN projection
centred on the source, ICRS; radio velocity in the LSRK frame with the line's rest
frequency), the telescope, instrument, date and the effective beam, so that DS9,
CARTA, CASA or astropy read them without help. The figure is the moment-0 map in
sky coordinates, with contours at multiples of its noise, the beam and a colour bar.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.time import Time

TELESCOPE = "FYST"
INSTRUMENT = "CHAI"


@dataclass(frozen=True)
class MapInfo:
    """Where, what and when a map shows."""

    source: str
    """Source name."""
    line: str
    """Line short name (CO43)."""
    ra_deg: float
    """Source position, the map's centre."""
    dec_deg: float
    """Source position, the map's centre."""
    rest_frequency_ghz: float
    """Rest frequency of the line."""
    date_obs: dt.datetime
    """Start of the earliest scan."""
    pixel_arcsec: float
    """Pixel size."""
    centre: int
    """Index of the central pixel (0-based)."""
    beam_arcsec: float
    """Effective resolution (beam convolved with the gridding kernel)."""
    software: str
    """Name and version of the program that made the map."""


def line_label(line: str) -> str:
    """`CO43` -> `CO(4-3)`, `CI10` -> `[CI](1-0)`: how astronomers write the transitions."""
    match = re.fullmatch(r"(CO|CI|CII)(\d)(\d)", line)
    if not match:
        return line
    species, upper, lower = match.groups()
    species = f"[{species}]" if species.startswith("CI") else species
    return f"{species}({upper}-{lower})"


def celestial_header(info: MapInfo) -> fits.Header:
    """Return the header keywords of the sky axes, the observation and the beam."""
    header = fits.Header()
    header["OBJECT"] = (info.source, "source name")
    header["TELESCOP"] = (TELESCOPE, "Fred Young Submillimeter Telescope")
    header["INSTRUME"] = (INSTRUMENT, "CCAT Heterodyne Array Instrument")
    header["LINE"] = (line_label(info.line), "spectral line")
    date = info.date_obs.astimezone(dt.UTC).replace(tzinfo=None)
    header["DATE-OBS"] = (date.isoformat(timespec="milliseconds"), "start of the first scan (UTC)")
    header["MJD-OBS"] = (round(float(Time(date, scale="utc").mjd), 8), "DATE-OBS as MJD")
    header["RADESYS"], header["EQUINOX"] = "ICRS", 2000.0
    for axis, (ctype, crval, cdelt) in enumerate(
        [
            ("RA---SIN", info.ra_deg, -info.pixel_arcsec / 3600),
            ("DEC--SIN", info.dec_deg, info.pixel_arcsec / 3600),
        ],
        start=1,
    ):
        header[f"CTYPE{axis}"], header[f"CRVAL{axis}"] = ctype, crval
        header[f"CDELT{axis}"], header[f"CRPIX{axis}"] = cdelt, info.centre + 1.0
        header[f"CUNIT{axis}"] = "deg"
    beam = info.beam_arcsec / 3600
    header["BMAJ"], header["BMIN"], header["BPA"] = beam, beam, 0.0
    header["ORIGIN"] = (info.software, "software that made this file")
    return header


def cube_header(info: MapInfo, velocity_kms: np.ndarray) -> fits.Header:
    """Return a cube's header: sky axes, then radio velocity (LSRK) and rest frequency."""
    header = celestial_header(info)
    header["CTYPE3"], header["CUNIT3"] = "VRAD", "m/s"
    header["CRVAL3"], header["CRPIX3"] = float(velocity_kms[0]) * 1000.0, 1.0
    header["CDELT3"] = float(velocity_kms[1] - velocity_kms[0]) * 1000.0
    header["SPECSYS"] = ("LSRK", "frame of the velocity axis")
    header["RESTFRQ"] = (info.rest_frequency_ghz * 1e9, "rest frequency of the line [Hz]")
    header["BUNIT"], header["BTYPE"] = ("K", "T_A* antenna temperature"), "Brightness"
    return header


def moment0_header(info: MapInfo, v_from: float, v_to: float) -> fits.Header:
    """Return a moment-0 map's header: sky axes, integrated over [v_from, v_to] km/s."""
    header = celestial_header(info)
    header["BUNIT"] = ("K km/s", "integrated T_A*")
    header["BTYPE"] = "Integrated brightness"
    header["RESTFRQ"] = info.rest_frequency_ghz * 1e9
    header["SPECSYS"] = "LSRK"
    header["VMIN"], header["VMAX"] = (round(v_from, 3), "km/s"), (round(v_to, 3), "km/s")
    return header


def channel_noise(cube: np.ndarray) -> np.ndarray:
    """Noise of each channel (K): robust scatter of the difference with the next channel.

    A difference of neighbouring channels cancels the smooth line and keeps the noise
    (times sqrt 2), so line channels are not mistaken for noisy ones.
    """
    difference = np.diff(cube, axis=0, append=cube[-2:-1])
    flat = difference.reshape(len(cube), -1)
    median = np.nanmedian(flat, axis=1, keepdims=True)
    return 1.4826 * np.nanmedian(np.abs(flat - median), axis=1) / math.sqrt(2.0)


def write_map_figure(
    path: Path,
    moment0: np.ndarray,
    header: fits.Header,
    *,
    info: MapInfo,
    sigma: float,
    caption: str,
) -> None:
    """Draw the moment-0 map in sky coordinates: contours, beam, colour bar, title."""
    import matplotlib  # noqa: PLC0415 - only the gridding step draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from astropy.wcs import WCS  # noqa: PLC0415
    from matplotlib.patches import Ellipse  # noqa: PLC0415

    figure = plt.figure(figsize=(6.4, 5.6), dpi=100)
    axes = figure.add_axes((0.17, 0.1, 0.62, 0.78), projection=WCS(header))
    shown = axes.imshow(np.ma.masked_invalid(moment0), origin="lower", cmap="inferno")
    axes.set_facecolor("0.8")  # pixels without data
    peak = float(np.nanmax(moment0)) if np.isfinite(moment0).any() else 0.0
    levels = [sigma * 3 * 2**k for k in range(12) if sigma > 0 and sigma * 3 * 2**k < peak]
    if levels:
        axes.contour(np.nan_to_num(moment0, nan=0.0), levels=levels, colors="white", linewidths=0.7)
    beam = info.beam_arcsec / info.pixel_arcsec
    corner = 0.6 * beam + 1
    axes.add_patch(Ellipse((corner, corner), beam, beam, edgecolor="white", facecolor="0.6", lw=1))
    axes.coords[0].set_axislabel("Right ascension (ICRS)")
    axes.coords[1].set_axislabel("Declination (ICRS)")
    colour_bar = figure.colorbar(shown, cax=figure.add_axes((0.82, 0.1, 0.035, 0.78)))
    colour_bar.set_label(r"$\int T_A^*\,dv$  [K km s$^{-1}$]")
    axes.set_title(f"{info.source}  {line_label(info.line)}  moment 0", fontsize=12)
    figure.text(0.5, 0.015, caption, ha="center", fontsize=8)
    figure.savefig(path)
    plt.close(figure)
