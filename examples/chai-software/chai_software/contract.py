"""The container contract as the reduction programs see it."""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Job:
    """The manifest and the output directory of this run."""

    manifest: dict[str, Any]
    output: Path

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """The manifest's inputs."""
        return list(self.manifest["inputs"])

    def write_json(self, kind: str, name: str, data: dict[str, Any]) -> Path:
        """Write `data` as `<kind>/<name>` (e.g. qa/rms.json)."""
        path = self.output / kind / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, sort_keys=True))
        return path

    def log(self, message: str) -> None:
        """Append a line to logs/<step>.log and echo it to stdout."""
        path = self.output / "logs" / f"{self.manifest['step']}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(message + "\n")
        print(message, flush=True)


def save_arrays(path: Path, **arrays: Any) -> None:
    """Write arrays as an `.npz` file whose bytes depend on the arrays only.

    `numpy.savez` stamps each member with the time of writing; fixed zip timestamps make
    the same result the same bytes, wherever and whenever it is made (host or container).
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, buffer.getvalue())


def sidecar(path: Path, metadata: dict[str, Any]) -> None:
    """Write `<file>.meta.json` next to a product."""
    path.with_name(path.name + ".meta.json").write_text(json.dumps(metadata, sort_keys=True))


def job() -> Job:
    """Read the contract's environment and the manifest."""
    manifest = json.loads(Path(os.environ["WORKFLOW_MANIFEST"]).read_text())
    output = Path(os.environ["WORKFLOW_OUTPUT_DIR"])
    for kind in ("science", "qa", "plots", "statistics", "logs"):
        (output / kind).mkdir(parents=True, exist_ok=True)
    return Job(manifest, output)


SPEED_OF_LIGHT_KM_S = 299_792.458


def velocity_axis(frequency_ghz: np.ndarray, rest_ghz: float | None) -> np.ndarray:
    """Radio velocity (km/s) of each channel relative to the line's rest frequency."""
    rest = float(rest_ghz) if rest_ghz else float(np.mean(frequency_ghz))
    return SPEED_OF_LIGHT_KM_S * (1.0 - np.asarray(frequency_ghz) / rest)
