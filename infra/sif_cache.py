"""The SIF cache of an Apptainer location: one pull per digest, verified before each use.

Many runs of a wave start at once and all need the same image. The first takes an
exclusive lock on `<sif>.lock`, pulls into a temporary file beside the cache entry,
records the file's SHA-256 in `<sif>.sha256` and renames the file into place; the
others wait on the lock and find it there. Before a run uses a cached SIF, its
SHA-256 is compared with the record (once per file version per process: a multi-GB
SIF is not re-read for every run); a mismatch (a damaged or replaced file) removes the
entry and pulls again. A SIF given as a file (`sif_path`) is verified against the
version's digest, which for a file is its own SHA-256; a mismatch fails the run.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from infra.runtimes import ImageRef, RuntimeConfigError, apptainer_pull_command, sif_path

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]
CHUNK = 8 << 20

_verified: dict[tuple[str, int, int, int], str] = {}
_verified_lock = threading.Lock()


class ImagePullError(RuntimeConfigError):
    """The image could not be pulled, or its file does not match its digest."""


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)  # noqa: S603


def file_sha256(path: Path) -> str:
    """`sha256:<hex>` of a file, memoized per (path, inode, size, mtime) in this process."""
    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    with _verified_lock:
        known = _verified.get(key)
    if known:
        return known
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    value = f"sha256:{digest.hexdigest()}"
    with _verified_lock:
        _verified[key] = value
    return value


def _record(sif: Path) -> Path:
    return sif.with_name(sif.name + ".sha256")


def _cached_ok(sif: Path) -> bool:
    """Return whether the cached SIF exists and matches its recorded SHA-256."""
    record = _record(sif)
    if not sif.exists() or not record.exists():
        return False
    return file_sha256(sif) == record.read_text().split()[0]


def ensure_sif(image: ImageRef, cache_dir: Path, run: Runner = _run) -> Path:
    """Return the SIF file a run of `image` executes, pulling it once if needed."""
    if image.sif_path:
        path = Path(image.sif_path)
        if not path.is_file():
            raise ImagePullError(f"SIF file {path} does not exist (sif_path of the version)")
        if image.digest and file_sha256(path) != image.digest:
            raise ImagePullError(
                f"SIF file {path} has SHA-256 {file_sha256(path)}, not the version's digest "
                f"{image.digest}: the file was replaced; publish it as a new version"
            )
        return path
    sif = sif_path(image, cache_dir)
    if _cached_ok(sif):
        return sif
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(sif.with_name(sif.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _cached_ok(sif):  # another run pulled it while this one waited
                return sif
            sif.unlink(missing_ok=True)
            partial = sif.with_name(f"{sif.name}.partial-{os.getpid()}-{threading.get_ident()}")
            partial.unlink(missing_ok=True)
            result = run(apptainer_pull_command(image, partial))
            if result.returncode != 0 or not partial.exists():
                partial.unlink(missing_ok=True)
                raise ImagePullError(
                    f"`apptainer pull` of {image.reference} failed (exit {result.returncode}): "
                    f"{(result.stderr or '').strip()[-500:]}"
                )
            checksum = file_sha256(partial)
            _record(sif).write_text(f"{checksum} {image.reference}\n")
            partial.replace(sif)
            return sif
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
