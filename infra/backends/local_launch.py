"""How the local backend starts a job's process: its program, its log, its PID namespace."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

from infra.backends.base import BackendError

_FOUND: dict[tuple[str, str], str] = {}


def which(program: str, path: str) -> str | None:
    """Resolve a program on a PATH; found ones are remembered (a step runs one program)."""
    found = _FOUND.get((program, path))
    if found is None or not os.access(found, os.X_OK):
        found = shutil.which(program, path=path)
        if found is not None:
            _FOUND[(program, path)] = found
    return found


_NAMESPACE: list[list[str]] = []


def namespace_prefix() -> list[str]:
    """Return the `unshare` arguments giving a job its own PID namespace ([]: impossible).

    Probed once per process by running `true` in one (a few milliseconds).
    """
    if not _NAMESPACE:
        unshare = shutil.which("unshare", path="/usr/bin:/bin")
        # --mount-proc: /proc shows the namespace's own processes (a container runtime
        # inside the job, runc, reads /proc/<pid> of the processes it starts).
        prefix = [unshare, "--pid", "--fork", "--kill-child", "--mount-proc"] if unshare else []
        if prefix and os.geteuid() != 0:
            prefix[1:1] = ["--user", "--map-current-user"]
        if prefix:
            probe = subprocess.run(  # noqa: S603 - an argument list
                [*prefix, "true"], capture_output=True, check=False, timeout=30
            )
            prefix = prefix if probe.returncode == 0 else []
        _NAMESPACE.append([str(part) for part in prefix])
    return _NAMESPACE[0]


def append_log(path: Path, name: str) -> Any:
    """Open the job's log for appending: a regular file only, never through a final link.

    The log lives in a directory the job writes: a link or FIFO an earlier attempt left
    at its name must not redirect the next job's output to a host file.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise BackendError(f"cannot open the log {path} of job {name}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BackendError(f"the log {path} of job {name} is not a regular file; it is not used")
    return os.fdopen(fd, "ab")
