"""The simulated sky: each source is a few Gaussian clumps of line emission that rotate.

A source's model depends on its name only (not on the seed), so every scan of a source
sees the same sky, as a telescope would. The brightness a scan records at an offset is
the model convolved with FYST's beam (a Gaussian clump stays Gaussian, wider and fainter)
times the line's relative brightness; each clump's line has its own velocity and width,
shifted by a velocity gradient across the source.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from ccat_wm.simulate.catalog import FIELD_ARCSEC, SOURCES, LineInfo, SourceInfo

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True, slots=True)
class Clump:
    """One Gaussian clump of emission, at an offset from the source's position."""

    x_arcsec: float
    """Offset east (RA) in arcsec."""
    y_arcsec: float
    """Offset north (Dec) in arcsec."""
    fwhm_arcsec: float
    """Intrinsic size (before the beam)."""
    peak_k: float
    """Intrinsic peak CO(4-3) brightness in K."""
    dv_kms: float
    """Velocity relative to the source's systemic velocity, in km/s."""
    sigma_kms: float
    """Line width (Gaussian sigma) in km/s."""


@dataclass(frozen=True, slots=True)
class SourceModel:
    """A source's position, velocity and clumps."""

    name: str
    """Source name."""
    info: SourceInfo
    """Position, systemic velocity and peak brightness."""
    clumps: tuple[Clump, ...]
    """The clumps, brightest first."""
    gradient_kms_per_arcsec: tuple[float, float]
    """Velocity gradient (east, north): the source's rotation."""

    def line_window_kms(self) -> float:
        """Full width of the velocity range that holds emission anywhere in the field.

        The reduction fits baselines outside this window and integrates the moment-0
        map inside it; a catalog gives it to the observer, the simulator to the metadata.
        """
        corner = FIELD_ARCSEC / math.sqrt(2.0)
        shift = math.hypot(*self.gradient_kms_per_arcsec) * corner
        extent = max(abs(c.dv_kms) + 3.5 * c.sigma_kms for c in self.clumps) + shift
        return 10.0 * math.ceil(2.0 * extent / 10.0)


def _name_rng(name: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big"))


def source_info(name: str) -> SourceInfo:
    """Return a source's data; other names get a stable position, velocity and brightness."""
    if name in SOURCES:
        return SOURCES[name]
    digest = hashlib.sha256(name.encode()).digest()
    ra = int.from_bytes(digest[:4], "big") / 2**32 * 360.0
    dec = int.from_bytes(digest[4:8], "big") / 2**32 * 120.0 - 60.0
    velocity = int.from_bytes(digest[8:10], "big") / 2**16 * 350.0 - 50.0
    peak = 3.0 + int.from_bytes(digest[10:12], "big") / 2**16 * 9.0
    return SourceInfo(round(ra, 4), round(dec, 4), round(velocity, 1), round(peak, 1))


def source_model(name: str) -> SourceModel:
    """Return a source's clumps, drawn from its name: the same sky in every scan and run."""
    rng = _name_rng(name)
    info = source_info(name)
    count = int(rng.integers(3, 6))
    clumps = [
        Clump(0.0, 0.0, float(rng.uniform(50, 90)), info.peak_k, 0.0, float(rng.uniform(8, 12)))
    ]
    for _ in range(count - 1):
        clumps.append(
            Clump(
                x_arcsec=float(rng.uniform(-100, 100)),
                y_arcsec=float(rng.uniform(-100, 100)),
                fwhm_arcsec=float(rng.uniform(25, 70)),
                peak_k=info.peak_k * float(rng.uniform(0.25, 0.7)),
                dv_kms=float(rng.uniform(-12, 12)),
                sigma_kms=float(rng.uniform(5, 11)),
            )
        )
    angle, rate = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.05, 0.15))
    gradient = (rate * math.cos(angle), rate * math.sin(angle))
    return SourceModel(name, info, tuple(clumps), gradient)


def brightness(
    model: SourceModel,
    line: LineInfo,
    beam_fwhm_arcsec: float,
    *,
    x_arcsec: np.ndarray,
    y_arcsec: np.ndarray,
    velocity_kms: np.ndarray,
) -> np.ndarray:
    """Beam-convolved brightness (K) at offsets (n,) and velocities (channels,): (n, channels)."""
    x, y = x_arcsec[:, None], y_arcsec[:, None]
    gx, gy = model.gradient_kms_per_arcsec
    total = np.zeros((len(x_arcsec), len(velocity_kms)))
    for clump in model.clumps:
        size2 = clump.fwhm_arcsec**2 + beam_fwhm_arcsec**2
        amplitude = clump.peak_k * line.relative_brightness * clump.fwhm_arcsec**2 / size2
        sigma2 = size2 / FWHM_PER_SIGMA**2
        spatial = np.exp(-((x - clump.x_arcsec) ** 2 + (y - clump.y_arcsec) ** 2) / (2 * sigma2))
        centre = model.info.v_lsr_kms + clump.dv_kms + gx * x + gy * y
        spectral = np.exp(-0.5 * ((velocity_kms[None, :] - centre) / clump.sigma_kms) ** 2)
        total += amplitude * spatial * spectral
    return total
