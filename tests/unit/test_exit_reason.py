"""How a job's end is put in words, for every backend."""

from __future__ import annotations

import pytest

from infra.backends.base import exit_reason


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (0, "exit code 0"),
        (3, "exit code 3"),
        (-9, "killed by SIGKILL"),
        (-15, "killed by SIGTERM"),
        (137, "killed by SIGKILL (exit code 137)"),
        (139, "killed by SIGSEGV (exit code 139)"),
        (128, "exit code 128"),
        (255, "exit code 255"),
        (-99, "killed by signal 99"),
    ],
)
def test_signals_are_named_not_numbered(code: int, reason: str) -> None:
    assert exit_reason(code) == reason
