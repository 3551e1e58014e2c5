"""The example CHAI reduction turns simulated on-the-fly scans into maps an astronomer reads.

The programs run as a job runs them (a manifest, an output directory, their `main`) on
scans the simulator makes in memory: no ops DB. What is checked is what an astronomer
would check: the FITS files open with a valid WCS and the usual keywords, the map is
filled and recognisable (its peak where the source's brightest clump is, its shape
that of the model), the noise is what the radiometer equation says, and the same
inputs give the same bytes.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from chai_software import baseline, calibrate, grid

from ccat_wm.simulate.catalog import LINES, beam_fwhm_arcsec
from ccat_wm.simulate.generator import simulate_scan, source_position
from ccat_wm.simulate.sky import brightness, source_model

START = dt.datetime(2026, 3, 1, 2, 30, tzinfo=dt.UTC)


def _step(
    monkeypatch: pytest.MonkeyPatch,
    program: Any,
    args: list[str],
    inputs: list[dict[str, Any]],
    out: Path,
) -> list[dict[str, Any]]:
    """Run one program on a manifest; return its science products as the next inputs."""
    out.mkdir(parents=True)
    manifest = out / "manifest.json"
    manifest.write_text(json.dumps({"step": out.name, "inputs": inputs}))
    monkeypatch.setenv("WORKFLOW_MANIFEST", str(manifest))
    monkeypatch.setenv("WORKFLOW_OUTPUT_DIR", str(out))
    assert program.main(args) == 0
    products = []
    for path in sorted((out / "science").iterdir()):
        if not path.name.endswith(".meta.json"):
            metadata = json.loads(path.with_name(path.name + ".meta.json").read_text())
            products.append(
                {"kind": "product", "path": str(path), "name": path.name, "metadata": metadata}
            )
    return products


def _reduce(
    monkeypatch: pytest.MonkeyPatch, root: Path, *, scans: int, source: str, line: str
) -> Path:
    """Simulate `scans` scans, calibrate and baseline each, grid them all; return grid's output."""
    baselined: list[dict[str, Any]] = []
    start = START
    for number in range(1, scans + 1):
        scan = simulate_scan(
            5, number, start=start, sources=[source], lines=[line],
            positions={source: source_position(source)},
        )  # fmt: skip
        start = scan.end_time
        package = scan.packages[0]  # the LFA module
        raw = root / "raw" / f"{package.name}.npz"
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_bytes(package.content)
        item = {"kind": "raw", "path": str(raw), "name": package.name, "metadata": package.metadata}
        calibrated = _step(
            monkeypatch, calibrate, ["--mode", "hot_cold"], [item], root / f"calibrate-{number}"
        )
        baselined += _step(
            monkeypatch, baseline, ["--order", "1"], calibrated, root / f"baseline-{number}"
        )
    out = root / "grid"
    _step(monkeypatch, grid, ["--pixel-arcsec", "10"], baselined, out)
    return out


@pytest.fixture(scope="module")
def ngc253(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six scans of NGC253 in CO(4-3), reduced."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _reduce(
            monkeypatch, tmp_path_factory.mktemp("ngc253"), scans=6, source="NGC253", line="CO43"
        )


def test_the_cube_has_a_full_wcs_and_the_keywords_astronomers_look_for(ngc253: Path) -> None:
    header = fits.getheader(ngc253 / "science" / "NGC253_CO43.cube.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FITSFixedWarning)  # nothing astropy must repair
        wcs = WCS(header)
    assert wcs.naxis == 3 and wcs.has_celestial and wcs.wcs.spec == 2
    assert list(wcs.wcs.ctype) == ["RA---SIN", "DEC--SIN", "VRAD"]
    assert wcs.wcs.radesys == "ICRS" and wcs.wcs.specsys == "LSRK"
    assert wcs.wcs.restfrq == pytest.approx(LINES["CO43"].rest_frequency_ghz * 1e9)
    assert header["TELESCOP"] == "FYST" and header["INSTRUME"] == "CHAI"
    assert header["OBJECT"] == "NGC253" and header["LINE"] == "CO(4-3)"
    assert header["BUNIT"] == "K" and header["EQUINOX"] == 2000.0
    assert header["DATE-OBS"] == "2026-03-01T02:30:00.000"
    # The effective beam: FYST's 27" at 461 GHz convolved with the gridding kernel.
    beam = beam_fwhm_arcsec(461.04)
    assert header["BMAJ"] * 3600 == pytest.approx(math.hypot(beam, beam / 3), rel=1e-3)
    assert header["BMIN"] == header["BMAJ"] and header["BPA"] == 0.0
    # The centre pixel is the source; the velocity axis covers its systemic velocity.
    ra, dec = source_position("NGC253")
    centre = wcs.celestial.pixel_to_world(header["NAXIS1"] // 2, header["NAXIS2"] // 2)
    assert centre.ra.deg == pytest.approx(ra) and centre.dec.deg == pytest.approx(dec)
    velocity = wcs.spectral.pixel_to_world(np.arange(header["NAXIS3"])).to_value("km/s")
    assert np.all(np.diff(velocity) > 0) and velocity[0] < 243 < velocity[-1]


def test_six_scans_fill_a_map_of_at_least_32_pixels_a_side(ngc253: Path) -> None:
    cube = fits.getdata(ngc253 / "science" / "NGC253_CO43.cube.fits")
    channels, rows, columns = cube.shape
    assert channels == 128 and rows >= 32 and columns >= 32
    empty = np.isnan(cube).all(axis=0).mean()
    assert empty < 0.10
    qa = json.loads((ngc253 / "qa" / "NGC253_CO43.map.json").read_text())
    assert qa["empty_fraction"] == pytest.approx(empty, abs=1e-4)
    assert len(qa["rms_per_channel_k"]) == channels


def test_the_map_is_the_source_the_sky_model_holds(ngc253: Path) -> None:
    """The moment-0 map looks like the beam-convolved model: same peak, same shape."""
    path = ngc253 / "science" / "NGC253_CO43.mom0.fits"
    moment0, header = fits.getdata(path), fits.getheader(path)
    assert header["BUNIT"] == "K km/s"
    size, pixel = header["NAXIS1"], -header["CDELT1"] * 3600
    offsets = (np.arange(size) - size // 2) * pixel
    y, x = np.meshgrid(offsets, offsets, indexing="ij")
    model = source_model("NGC253")
    velocity = np.arange(header["VMIN"], header["VMAX"] + 1.0, 1.0)
    beam = beam_fwhm_arcsec(461.04)
    model_cube = brightness(
        model, LINES["CO43"], beam, x_arcsec=-x.ravel(), y_arcsec=y.ravel(), velocity_kms=velocity
    )
    expected = model_cube.sum(axis=1).reshape(size, size)  # K km/s at 1 km/s steps
    filled = np.isfinite(moment0)
    correlation = np.corrcoef(moment0[filled], expected[filled])[0, 1]
    assert correlation > 0.95
    peak = np.unravel_index(np.nanargmax(moment0), moment0.shape)
    model_peak = np.unravel_index(np.argmax(expected), expected.shape)
    assert math.dist(peak, model_peak) * pixel <= beam_fwhm_arcsec(461.04) / 2
    # The gridding kernel smooths: the peak is a little lower than the model's, not more.
    assert 0.7 < np.nanmax(moment0) / expected.max() < 1.05


def test_the_noise_is_what_the_radiometer_equation_says(ngc253: Path) -> None:
    calibration = json.loads(
        (ngc253.parent / "calibrate-1" / "qa" / "calibration.json").read_text()
    )
    assert 150 < calibration["tsys_k"] < 1500 and 0 < calibration["tau"] < 3
    assert calibration["flagged_fraction"] == 0.0
    spectra = json.loads((ngc253.parent / "baseline-1" / "qa" / "baseline.json").read_text())
    # One dump: Tsys / sqrt(channel width x 0.5 s), with the reference's share.
    expected = calibration["tsys_k"] / math.sqrt(4e6 * 0.5) * math.sqrt(1 + 0.5 / 4.0)
    assert spectra["rms_k"] == pytest.approx(expected, rel=0.15)
    # The map averages several spectra per pixel: its noise is lower than one spectrum's.
    qa = json.loads((ngc253 / "qa" / "NGC253_CO43.map.json").read_text())
    assert 0.01 < qa["rms_k"] < spectra["rms_k"] / 2


def test_the_same_scans_give_the_same_bytes(
    ngc253: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    again = _reduce(monkeypatch, tmp_path, scans=6, source="NGC253", line="CO43")
    for kind in ("science", "plots", "qa", "statistics"):
        for first in sorted((ngc253 / kind).iterdir()):
            assert (again / kind / first.name).read_bytes() == first.read_bytes(), first.name


def test_a_saturated_dump_is_flagged_and_left_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    scan = simulate_scan(
        5, 1, start=START, sources=["M83"], lines=["CO43"], positions={"M83": (0.0, 0.0)}
    )
    with np.load(__import__("io").BytesIO(scan.packages[0].content)) as data:
        raw = {k: data[k] for k in data.files}
    on = np.flatnonzero(raw["phase"] == calibrate.ON)
    raw["counts"][on[:10]] = calibrate.SATURATION_COUNTS
    result = calibrate.calibrate(raw)
    assert result.flagged == 10 and len(result.t_a_k) == len(on) - 10
