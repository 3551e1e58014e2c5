"""Touching a run's directories without trusting what the job left in them.

Everything a job can write (`logs/`, `workspace/`, `output/`, and whatever a container
mounts read-write) is hostile territory: the job may have replaced any entry by a
symbolic link to a host file or directory, a named pipe, a device or a directory where a
file belongs. The manager therefore never resolves a path the job controls. Each
operation here starts from the run's root (which the manager created and the job cannot
replace: a container sees only the directories below it) and walks down one component
at a time with `openat(..., O_NOFOLLOW)`: a symlink anywhere below the root ends the walk
with `UnsafeEntryError`, which names the entry and what it was. Files are opened without
blocking (a FIFO cannot hang the manager) and used only if `fstat` says they are regular;
permissions are changed with `fchmod` on such a descriptor, and files are moved with
`renameat` between directory descriptors obtained the same way.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from ccat_wm.errors import CcatWmError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_LINK_NOT_READ = "was replaced by a symlink; it is not read"


class UnsafeEntryError(CcatWmError):
    """An entry of a run tree the job could have made is not what the manager may touch."""

    def __init__(self, path: Path, what: str) -> None:
        """Keep the entry and `what` it is instead (e.g. 'was replaced by a symlink')."""
        self.path = path
        self.what = what
        super().__init__(f"{shown(path)}: {what}")


def shown(path: Path | str) -> str:
    r"""Return a path as text that can be printed and stored (bytes not UTF-8 as \x..)."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def kind_of(mode: int) -> str:
    """Name the kind of a file that is not what was expected ("a symlink", "a FIFO", ...)."""
    kinds = (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISREG, "a regular file"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")


def _parts(root: Path, path: Path | str) -> list[str]:
    """Return the components of `path` below `root` (absolute under it, or relative to it)."""
    candidate = Path(path)
    rel = candidate.relative_to(root) if candidate.is_absolute() else candidate
    parts = [p for p in rel.parts if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeEntryError(root / rel, "leaves the run's directory ('..')")
    return parts


def _replaced(path: Path, dir_fd: int, name: str) -> UnsafeEntryError:
    """Return the error for an entry that is not a directory where one belongs."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        return UnsafeEntryError(path, "is missing")
    return UnsafeEntryError(path, f"was replaced by {kind_of(mode)}; it is not followed")


@contextmanager
def open_dir(root: Path, rel: Path | str = "", *, create: bool = False) -> Iterator[int]:
    """Yield a descriptor of directory `root/rel`, reached without following any link below root.

    `create`: make missing directories on the way (mode 0o755, umask applies). A symlink
    or a non-directory on the way raises `UnsafeEntryError` naming it.
    """
    with ExitStack() as stack:
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UnsafeEntryError(root, "is missing") from None
        stack.callback(os.close, fd)
        here = root
        for part in _parts(root, rel):
            here = here / part
            if create:
                with suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise UnsafeEntryError(here, "is missing") from None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _replaced(here, fd, part) from None
                raise
            stack.callback(os.close, child)
            fd = child
        yield fd


def open_regular(root: Path, path: Path | str) -> BinaryIO:
    """Open a regular file below `root` for reading, following no link; name anything else."""
    parts = _parts(root, path)
    if not parts:
        raise UnsafeEntryError(root, "is a directory, not a file")
    target = root.joinpath(*parts)
    with open_dir(root, Path(*parts[:-1]) if len(parts) > 1 else "") as dir_fd:
        try:
            fd = os.open(parts[-1], FILE_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            raise UnsafeEntryError(target, "is missing") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeEntryError(target, _LINK_NOT_READ) from None
            raise
    return _regular_or_close(fd, target)


def open_regular_path(path: Path) -> BinaryIO:
    """Open a file for reading without blocking or following a final link; regular files only.

    For readers of registered files (verify, logs) that hold only a path: the final
    component is never followed and a FIFO or device is named, not read.
    """
    try:
        fd = os.open(path, FILE_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeEntryError(path, _LINK_NOT_READ) from None
        raise
    return _regular_or_close(fd, path)


def _regular_or_close(fd: int, path: Path) -> BinaryIO:
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeEntryError(path, f"was replaced by {kind_of(mode)}; it is not read")
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def unexpected_kind(root: Path, path: Path | str) -> str | None:
    """Name what a file the manager expects to be regular is instead ("a symlink", ...).

    None: it is a regular file, or it is missing. A directory on the way that the job
    replaced raises `UnsafeEntryError` naming it.
    """
    parts = _parts(root, path)
    try:
        with open_dir(root, Path(*parts[:-1]) if len(parts) > 1 else "") as dir_fd:
            mode = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return None
    except UnsafeEntryError as exc:
        if exc.what == "is missing":
            return None
        raise
    return None if stat.S_ISREG(mode) else kind_of(mode)


def make_read_only(root: Path, path: Path | str) -> None:
    """Drop write permission of a regular file below `root` (through its descriptor)."""
    with open_regular(root, path) as handle:
        mode = os.fstat(handle.fileno()).st_mode
        os.fchmod(handle.fileno(), mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def create_log(root: Path, path: Path | str) -> None:
    """Create (or keep) an attempt's log file as a regular file, refusing what the job planted.

    The backend then appends the job's output to it; a symlink, FIFO or directory left
    at its name by an earlier attempt's job raises `UnsafeEntryError` before any job runs.
    """
    parts = _parts(root, path)
    target = root.joinpath(*parts)
    with open_dir(root, Path(*parts[:-1]), create=True) as dir_fd:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(parts[-1], flags | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise _replaced(target, dir_fd, parts[-1]) from None
            raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeEntryError(target, f"was replaced by {kind_of(mode)}; it is not used")
    finally:
        os.close(fd)


def move_into(root: Path, source_dir: int, name: str, target: Path | str) -> None:
    """Move entry `name` of directory `source_dir` to `target` (below `root`), making its parents.

    The source is taken as it is (`renameat` does not follow a link); the target's
    directories are created or entered without following links, so nothing the job
    made can redirect the move outside the run's tree.
    """
    parts = _parts(root, target)
    with open_dir(root, Path(*parts[:-1]), create=True) as target_dir:
        os.rename(name, parts[-1], src_dir_fd=source_dir, dst_dir_fd=target_dir)
