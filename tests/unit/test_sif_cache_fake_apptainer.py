"""The SIF cache with a FAKE `apptainer pull` (Apptainer cannot be installed here).

The fake stands in for the binary only: it checks each argument list against
Apptainer 1.3's documented `pull` grammar (tests/unit/apptainer_grammar.py) and writes
a file where the real one would. The locking, the verification and the file handling
under test are the real code.
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from infra.runtimes import ImageRef
from infra.sif_cache import ImagePullError, ensure_sif
from tests.unit.apptainer_grammar import parse_pull

DIGEST_A = "sha256:" + "a1" * 32
DIGEST_B = "sha256:" + "b2" * 32


class FakeApptainerPull:
    """Records pulls; writes `SIF of <uri>` to the output file after a delay."""

    def __init__(self, delay_s: float = 0.3, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.delay_s, self.fail = delay_s, fail
        self.lock = threading.Lock()

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        parsed = parse_pull(list(argv))
        with self.lock:
            self.calls.append(list(argv))
        time.sleep(self.delay_s)
        if self.fail:
            return subprocess.CompletedProcess(argv, 255, "", "FATAL: manifest unknown")
        output, uri = parsed.positionals
        Path(output).write_text(f"SIF of {uri}")
        return subprocess.CompletedProcess(argv, 0, "", "")


def test_many_runs_starting_at_once_pull_each_digest_once_fake_apptainer(tmp_path: Path) -> None:
    fake = FakeApptainerPull()
    image = ImageRef("ghcr.io/ccatobs/chai-calibration", DIGEST_A, "1.4.0", sif=True)
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: ensure_sif(image, tmp_path, fake), range(8)))
    assert len(fake.calls) == 1
    assert fake.calls[0][-1] == f"oras://ghcr.io/ccatobs/chai-calibration@{DIGEST_A}"
    assert len(set(paths)) == 1 and paths[0].read_text().startswith("SIF of oras://")
    record = paths[0].with_name(paths[0].name + ".sha256").read_text().split()
    assert record[0] == "sha256:" + hashlib.sha256(paths[0].read_bytes()).hexdigest()
    assert record[1] == image.reference
    assert not list(tmp_path.glob("*.partial*"))

    other = ImageRef("ghcr.io/ccatobs/chai-calibration", DIGEST_B, "1.5.0")
    ensure_sif(other, tmp_path, fake)
    ensure_sif(image, tmp_path, fake)
    assert len(fake.calls) == 2
    assert fake.calls[1][-1] == f"docker://ghcr.io/ccatobs/chai-calibration@{DIGEST_B}"


def test_a_damaged_cached_sif_is_pulled_again_fake_apptainer(tmp_path: Path) -> None:
    fake = FakeApptainerPull(delay_s=0)
    image = ImageRef("ghcr.io/ccatobs/chai-gridding", DIGEST_A, "2.1.0")
    sif = ensure_sif(image, tmp_path, fake)
    sif.write_text("damaged on disk")
    again = ensure_sif(image, tmp_path, fake)
    assert again == sif and len(fake.calls) == 2
    assert sif.read_text() == f"SIF of {image.reference}"


def test_a_failed_pull_leaves_no_cache_entry_fake_apptainer(tmp_path: Path) -> None:
    image = ImageRef("ghcr.io/ccatobs/missing", DIGEST_A, "1.0.0")
    with pytest.raises(
        ImagePullError, match=r"pull` of docker://ghcr.io/ccatobs/missing@.*manifest unknown"
    ):
        ensure_sif(image, tmp_path, FakeApptainerPull(delay_s=0, fail=True))
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_a_sif_file_is_verified_against_the_version_digest(tmp_path: Path) -> None:
    """No pull for a SIF file; its digest is its SHA-256, and a replaced file fails the run."""
    sif = tmp_path / "chai.sif"
    sif.write_bytes(b"a SIF image")
    digest = "sha256:" + hashlib.sha256(b"a SIF image").hexdigest()
    fake = FakeApptainerPull()
    image = ImageRef("", digest, "1.0.0", sif=True, sif_path=str(sif))
    assert ensure_sif(image, tmp_path / "cache", fake) == sif
    assert fake.calls == []
    sif.write_bytes(b"another image, same path")
    with pytest.raises(ImagePullError, match=rf"{sif} has SHA-256 sha256:\w+, not the version's"):
        ensure_sif(image, tmp_path / "cache", fake)
    with pytest.raises(ImagePullError, match="does not exist"):
        ensure_sif(ImageRef("", digest, "1", sif=True, sif_path=str(tmp_path / "no.sif")), tmp_path)
