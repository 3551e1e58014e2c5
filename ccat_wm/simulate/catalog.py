"""What the simulator knows of the sky, of FYST and of CHAI: lines, sources, module bands."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LineInfo:
    """A spectral line CHAI can observe."""

    name: str
    """Short name used as the `line` dimension, e.g. CO43."""
    rest_frequency_ghz: float
    """Rest frequency in GHz."""
    relative_brightness: float
    """Brightness relative to CO(4-3) in the simulated sources ([CI] is fainter than CO)."""


@dataclass(frozen=True, slots=True)
class ModuleInfo:
    """A CHAI module (array) and its tuning range."""

    name: str
    """Module name, the `instrument_module` dimension's value after `CHAI/`."""
    min_ghz: float
    """Lowest tunable frequency in GHz."""
    max_ghz: float
    """Highest tunable frequency in GHz."""
    default_line: str
    """Line the module is tuned to when the scan's line is outside its band."""
    channel_width_ghz: float
    """Spectrometer channel width: about 2.5 km/s at the module's lines."""


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """A source the simulator knows: where it is and how bright its CO(4-3) emission is."""

    ra_deg: float
    """Right ascension (ICRS) in degrees."""
    dec_deg: float
    """Declination (ICRS) in degrees."""
    v_lsr_kms: float
    """Systemic velocity (LSRK, radio convention) in km/s: the receiver is tuned to it."""
    peak_k: float
    """Peak CO(4-3) antenna temperature of its brightest clump, in K."""


LINES: dict[str, LineInfo] = {
    line.name: line
    for line in (
        LineInfo("CO43", 461.040768, 1.0),
        LineInfo("CI10", 492.160651, 0.45),
        LineInfo("CO65", 691.473076, 0.8),
        LineInfo("CO76", 806.651806, 0.65),
        LineInfo("CI21", 809.341970, 0.35),
    )
}

MODULES: tuple[ModuleInfo, ...] = (
    ModuleInfo("LFA", 455.0, 495.0, "CO43", 0.004),
    ModuleInfo("HFA", 800.0, 815.0, "CO76", 0.007),
)

SOURCES: dict[str, SourceInfo] = {
    "NGC253": SourceInfo(11.888, -25.288, 243.0, 6.0),
    "Orion-KL": SourceInfo(83.809, -5.373, 9.0, 30.0),
    "M83": SourceInfo(204.254, -29.866, 513.0, 3.0),
    "Sgr B2": SourceInfo(266.835, -28.385, 62.0, 12.0),
    "30 Dor": SourceInfo(84.676, -69.101, 250.0, 4.0),
}
"""Known sources; other names get a position, velocity and brightness from their hash."""

DEFAULT_SOURCES = ("NGC253", "Orion-KL")
DEFAULT_LINES = ("CO43", "CI10")
INSTRUMENT = "CHAI"
TELESCOPE = "FYST"
DISH_DIAMETER_M = 6.0
DEFAULT_PROGRAM = "demo-survey"
T_HOT_K = 293.0
"""The ambient (hot) calibration load."""
T_COLD_K = 77.0
"""The cold calibration load (liquid nitrogen)."""
T_ATM_K = 265.0
"""Physical temperature of the atmosphere's emitting layer at the site."""
N_CHANNELS = 128
DUMP_SECONDS = 0.5
"""Integration time of one spectrum (dump)."""
SATURATION_COUNTS = 2.0e6
"""Counts at which the spectrometer saturates: a dump that reaches it is unusable."""

FIELD_ARCSEC = 320.0
"""Side of the square field an on-the-fly map covers, centred on the source."""
ROW_SPACING_ARCSEC = 10.0
"""Distance between the rows of one scan (below half the beam at CHAI's frequencies)."""
SAMPLE_SPACING_ARCSEC = 10.0
"""Distance the telescope moves along a row during one dump."""


def tuned_line(module: ModuleInfo, line: str) -> LineInfo:
    """Return the line a module observes during a scan of `line`."""
    info = LINES[line]
    if module.min_ghz <= info.rest_frequency_ghz <= module.max_ghz:
        return info
    return LINES[module.default_line]


def beam_fwhm_arcsec(frequency_ghz: float) -> float:
    """FYST's main-beam width at a frequency: 1.2 lambda / D."""
    wavelength_m = 0.299_792_458 / frequency_ghz
    return 1.2 * wavelength_m / DISH_DIAMETER_M * 206_264.806
