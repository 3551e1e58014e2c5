"""Where a run's files live on the host (docs/concepts.md section 4).

A run's workflow directory is `<base>/<pipeline>/<sub-group dir>/run-<id>/`, holding the
contract's `input/`, `workspace/<step>/`, `output/`, `config/manifest.json` and `logs/`.
One directory per run (rather than per sub-group) keeps every registered product where
it was written: a reprocessing run never overwrites the files of the run it replaces,
so old products and their provenance stay intact until someone deletes them on purpose.

The sub-group directory is the key in a filesystem-safe, reversible form
(`ccat_wm.paths.path_component`: every byte outside `A-Z a-z 0-9 . _ - = ,` is
percent-encoded, so `/`, spaces, `+`, `|` and `:` never appear, and a name of dots is
encoded too), and the empty all-data key is `all`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ccat_wm.execution.runtree import open_dir
from ccat_wm.paths import from_path_component, path_component

ALL_DIR = "all"
OUTPUT_CLASSES = ("science", "qa", "plots", "statistics", "logs")
"""The sub-directories of `$WORKFLOW_OUTPUT_DIR` the contract declares."""


def key_to_dirname(key: str) -> str:
    """Filesystem-safe, reversible directory name of a sub-group key."""
    return path_component(key) if key else ALL_DIR


def dirname_to_key(name: str) -> str:
    """Inverse of `key_to_dirname`."""
    return "" if name == ALL_DIR else from_path_component(name)


def run_root(base: Path, pipeline: str, key: str, run_id: int) -> Path:
    """Return the directory of run `run_id` under the processing location's base directory."""
    return base / key_to_dirname(pipeline) / key_to_dirname(key) / f"run-{run_id}"


@dataclass(frozen=True, slots=True)
class RunLayout:
    """The host directories of one run."""

    root: Path
    step: str
    is_final: bool
    """The step has no downstream step: it writes to `output/`."""

    @classmethod
    def for_run(
        cls, base: Path, pipeline: str, key: str, run_id: int, step: str, *, is_final: bool
    ) -> RunLayout:
        """Return the layout of run `run_id` under the processing location's base directory."""
        return cls(run_root(base, pipeline, key, run_id), step, is_final)

    @property
    def output_rel(self) -> str:
        """`$WORKFLOW_OUTPUT_DIR` relative to the root."""
        return "output" if self.is_final else f"workspace/{self.step}"

    @property
    def output(self) -> Path:
        """`$WORKFLOW_OUTPUT_DIR` on the host."""
        return self.root / self.output_rel

    @property
    def input(self) -> Path:
        """Staged raw data."""
        return self.root / "input"

    @property
    def manifest(self) -> Path:
        """`config/manifest.json` on the host."""
        return self.root / "config" / "manifest.json"

    @property
    def logs(self) -> Path:
        """The run's own log directory (captured job output of every attempt)."""
        return self.root / "logs"

    def attempt_name(self, attempt: int) -> str:
        """Return `<step>-attempt-<N>` of an attempt (`retry_count` 0 is attempt 1).

        Files count attempts from 1, as every message does (run directories of builds
        before 2026-12-07 named the first attempt 0).
        """
        return f"{self.step}-attempt-{attempt + 1}"

    def attempt_log(self, attempt: int) -> Path:
        """Return the file of one attempt's captured stdout and stderr (0 = the first)."""
        return self.logs / f"{self.attempt_name(attempt)}.log"

    def create(self) -> None:
        """Create the contract's directories if missing (the software makes its classes).

        A new run's root is created first and its subdirectories then without existence
        checks (a few system calls per run instead of twenty); in an existing root (a
        retry, a resumed run) each directory is made if missing and must be a real
        directory: one an earlier attempt's job replaced by a link raises
        `UnsafeEntryError` naming it (nothing is followed).
        """
        subs = ("input", "workspace", "output", "config", "logs")
        try:
            self.root.mkdir(parents=True)
        except FileExistsError:
            for sub in (*subs, self.output_rel):
                with open_dir(self.root, sub, create=True):
                    pass
            return
        for sub in subs:
            os.mkdir(self.root / sub)
        if not self.is_final:
            os.mkdir(self.output)
