"""Convolution gridding of on-the-fly spectra onto a regular map grid.

Every spectrum is spread onto the pixels around its position with a Gaussian kernel
(FWHM a third of the beam, cut at its support radius), weighted by the inverse of its
measured noise squared; each pixel is the weighted mean of the spectra near it (the
usual single-dish OTF gridding, as in Mangum, Emerson & Greisen 2007). A pixel no
spectrum reaches within the support radius is empty (NaN). The map's resolution is
the beam convolved with the kernel. Sums run in a fixed order, so the same spectra
give the same bytes on any machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class GridGeometry:
    """A square grid centred on the source, as the FITS image stores it.

    Column `i` is at RA offset `-(i - centre) * pixel`, row `j` at Dec offset
    `(j - centre) * pixel` (RA grows to the east, to the left of the image).
    """

    pixel_arcsec: float
    """Pixel size."""
    size: int
    """Pixels per side (odd: the source is on the central pixel)."""

    @property
    def centre(self) -> int:
        """Index of the central pixel (0-based)."""
        return self.size // 2

    @classmethod
    def covering(
        cls, x_arcsec: np.ndarray, y_arcsec: np.ndarray, pixel_arcsec: float
    ) -> GridGeometry:
        """Return the smallest centred grid that holds every position."""
        extent = float(max(np.max(np.abs(x_arcsec)), np.max(np.abs(y_arcsec)), pixel_arcsec))
        return cls(pixel_arcsec, 2 * math.ceil(extent / pixel_arcsec - 1e-9) + 1)


@dataclass(frozen=True)
class Kernel:
    """The gridding kernel."""

    fwhm_arcsec: float
    """Width of the Gaussian."""
    support_arcsec: float
    """Radius beyond which a spectrum does not reach a pixel."""

    @classmethod
    def for_beam(cls, beam_fwhm_arcsec: float, pixel_arcsec: float) -> Kernel:
        """Return a kernel a third of the beam wide, reaching at least the next pixel."""
        fwhm = beam_fwhm_arcsec / 3.0
        return cls(fwhm, max(1.5 * fwhm, pixel_arcsec))

    def resolution(self, beam_fwhm_arcsec: float) -> float:
        """Return the map's effective beam: the beam convolved with the kernel."""
        return math.hypot(beam_fwhm_arcsec, self.fwhm_arcsec)


@dataclass(frozen=True)
class Gridded:
    """A gridded cube and the weight behind each pixel."""

    cube: np.ndarray
    """(channels, rows, columns): weighted mean brightness, NaN where empty."""
    weight: np.ndarray
    """(rows, columns): sum of kernel x spectrum weights."""
    hits: np.ndarray
    """(rows, columns): number of spectra within the support radius."""


def grid_spectra(
    x_arcsec: np.ndarray,
    y_arcsec: np.ndarray,
    spectra: np.ndarray,
    weights: np.ndarray,
    *,
    geometry: GridGeometry,
    kernel: Kernel,
) -> Gridded:
    """Grid spectra (n, channels) at offsets (n,) with weights (n,) onto `geometry`."""
    channels = spectra.shape[1]
    size, pixel = geometry.size, geometry.pixel_arcsec
    column = geometry.centre - x_arcsec / pixel  # fractional pixel coordinates
    row = geometry.centre + y_arcsec / pixel
    nearest_c, nearest_r = np.rint(column).astype(int), np.rint(row).astype(int)
    reach = math.ceil(kernel.support_arcsec / pixel)
    sigma = kernel.fwhm_arcsec / FWHM_PER_SIGMA
    total = np.zeros(size * size * channels)
    weight = np.zeros(size * size)
    hits = np.zeros(size * size)
    channel_index = np.arange(channels)[None, :]
    for dr in range(-reach, reach + 1):
        for dc in range(-reach, reach + 1):
            c, r = nearest_c + dc, nearest_r + dr
            distance = np.hypot(c - column, r - row) * pixel
            ok = (c >= 0) & (c < size) & (r >= 0) & (r < size) & (distance <= kernel.support_arcsec)
            if not ok.any():
                continue
            k = np.exp(-0.5 * (distance[ok] / sigma) ** 2) * weights[ok]
            flat = r[ok] * size + c[ok]
            weight += np.bincount(flat, weights=k, minlength=size * size)
            hits += np.bincount(flat, minlength=size * size)
            index = (flat[:, None] * channels + channel_index).ravel()
            total += np.bincount(
                index, weights=(k[:, None] * spectra[ok]).ravel(), minlength=total.size
            )
    weight_map = weight.reshape(size, size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total.reshape(size, size, channels) / weight_map[:, :, None]
    mean[weight_map <= 0] = np.nan
    return Gridded(
        cube=np.ascontiguousarray(np.moveaxis(mean, 2, 0)),
        weight=weight_map,
        hits=hits.reshape(size, size),
    )
