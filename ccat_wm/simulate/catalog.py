"""What the simulator knows of the sky and of CHAI: lines, sources, module bands."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LineInfo:
    """A spectral line CHAI can observe."""

    name: str
    """Short name used as the `line` dimension, e.g. CO43."""
    rest_frequency_ghz: float
    """Rest frequency in GHz."""


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


LINES: dict[str, LineInfo] = {
    line.name: line
    for line in (
        LineInfo("CO43", 461.040768),
        LineInfo("CI10", 492.160651),
        LineInfo("CO65", 691.473076),
        LineInfo("CO76", 806.651806),
        LineInfo("CI21", 809.341970),
    )
}

MODULES: tuple[ModuleInfo, ...] = (
    ModuleInfo("LFA", 455.0, 495.0, "CO43"),
    ModuleInfo("HFA", 800.0, 815.0, "CO76"),
)

SOURCES: dict[str, tuple[float, float]] = {
    "NGC253": (11.888, -25.288),
    "Orion-KL": (83.809, -5.373),
    "M83": (204.254, -29.866),
    "Sgr B2": (266.835, -28.385),
    "30 Dor": (84.676, -69.101),
}
"""Known sources with (RA, Dec) in degrees; other names get a position from their hash."""

DEFAULT_SOURCES = ("NGC253", "Orion-KL")
DEFAULT_LINES = ("CO43", "CI10")
INSTRUMENT = "CHAI"
DEFAULT_PROGRAM = "demo-survey"
T_HOT_K = 293.0
T_COLD_K = 77.0
N_CHANNELS = 128
CHANNEL_WIDTH_GHZ = 0.002
DUMP_SECONDS = 5.0


def tuned_line(module: ModuleInfo, line: str) -> LineInfo:
    """Return the line a module observes during a scan of `line`."""
    info = LINES[line]
    if module.min_ghz <= info.rest_frequency_ghz <= module.max_ghz:
        return info
    return LINES[module.default_line]
