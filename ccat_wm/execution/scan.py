"""Classify what a job left in `$WORKFLOW_OUTPUT_DIR` (docs/concepts.md section 4).

`scan_outputs` walks the output directory and reports every contract violation at
once, each naming its file and the rule it broke: files outside the declared
sub-directories (top-level files are allowed only as intermediates of a step with
downstream steps); anything that is not a regular file (a named pipe, a socket, a
device) or is a hard link to a file the run did not write (an input); names that are
not UTF-8; malformed or orphaned `<file>.meta.json` sidecars, including `NaN`/`Infinity`
and the NUL character, which the ops DB cannot store.

The walk starts at the run's root and never follows a link (`ccat_wm.execution.runtree`):
an output directory the job replaced by a symlink fails the run naming it. A symlink
among the outputs is judged by its text alone, never followed: one that names a
product file or directory of the same output directory is an alias and stays on disk
(the file it names is registered, the alias is not); one that leaves the output
directory, dangles, or names another link fails the run.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccat_ops_db import models as m
from ccat_wm.errors import CcatWmError
from ccat_wm.execution.layout import OUTPUT_CLASSES, RunLayout
from ccat_wm.execution.runtree import (
    DIR_FLAGS,
    UnsafeEntryError,
    kind_of,
    open_dir,
    open_regular,
    shown,
)

SIDECAR = ".meta.json"
T = m.DataProductType
CLASSES: dict[str, m.DataProductType] = {
    "science": T.SCIENCE,
    "qa": T.QA_METRIC,
    "plots": T.PLOT,
    "statistics": T.STATISTICS,
    "logs": T.LOG,
}
assert set(CLASSES) == set(OUTPUT_CLASSES)


class ContractViolationError(CcatWmError):
    """A run's outputs break the container contract; lists every offending file."""

    def __init__(self, problems: Sequence[str]) -> None:
        """Keep every problem; the message names each file."""
        self.problems = list(problems)
        super().__init__("contract violation: " + "; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One product file found in a run's output directory."""

    path: Path
    data_product_type: m.DataProductType
    metadata: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None
    """The run's root it was found under: it is reopened from there, following no link."""


@dataclass(slots=True)
class _Scan:
    """What a walk found: files by class, sidecars, links to judge, directories, problems."""

    root: Path
    output: Path
    is_final: bool
    files: list[tuple[Path, m.DataProductType]] = field(default_factory=list)
    sidecars: dict[Path, Path] = field(default_factory=dict)
    links: list[tuple[Path, str]] = field(default_factory=list)
    directories: set[Path] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def scan_outputs(layout: RunLayout) -> list[OutputFile]:
    """Classify every file under the run's output directory; raise on any violation."""
    scan = _Scan(layout.root, layout.output, layout.is_final)
    try:
        with open_dir(layout.root, layout.output_rel) as top:
            _scan_top(scan, top)
    except UnsafeEntryError as exc:
        if exc.what != "is missing":
            raise ContractViolationError([f"the output directory {exc}"]) from None
    _judge_links(scan)
    outputs = _attach_sidecars(scan)
    if scan.problems:
        raise ContractViolationError(scan.problems)
    return outputs


def _entries(dir_fd: int) -> list[tuple[str, os.stat_result]]:
    """Name and `lstat` of each entry of a directory, sorted by name."""
    with os.scandir(dir_fd) as it:
        return sorted((e.name, e.stat(follow_symlinks=False)) for e in it)


def _scan_top(scan: _Scan, top: int) -> None:
    allowed = ", ".join(f"{c}/" for c in OUTPUT_CLASSES)
    for name, info in _entries(top):
        path = scan.output / name
        if not _utf8(scan, path):
            continue
        if stat.S_ISDIR(info.st_mode) and name in CLASSES:
            kind = CLASSES[name]
            if kind is T.SCIENCE and not scan.is_final:
                kind = T.INTERMEDIATE
            _walk(scan, top, name, path=path, info=info, kind=kind)
        elif stat.S_ISLNK(info.st_mode):
            scan.links.append((path, os.readlink(name, dir_fd=top)))
        elif stat.S_ISREG(info.st_mode) and not scan.is_final:
            _add_file(scan, path, info, T.INTERMEDIATE)
        else:
            what = "directory" if stat.S_ISDIR(info.st_mode) else "file"
            scan.problems.append(
                f"{shown(path)}: {what} {shown(name)!r} is outside the declared output "
                f"directories ({allowed}{'' if scan.is_final else ' or top-level intermediates'})"
            )


def _walk(
    scan: _Scan, parent: int, name: str, *, path: Path, info: os.stat_result,
    kind: m.DataProductType,
) -> None:  # fmt: skip
    """Walk one directory (opened below `parent` without following a link)."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        scan.problems.append(f"{shown(path)}: cannot be opened ({exc.strerror})")
        return
    try:
        if (os.fstat(fd).st_dev, os.fstat(fd).st_ino) != (info.st_dev, info.st_ino):
            scan.problems.append(f"{shown(path)}: was replaced while it was collected")
            return
        scan.directories.add(path)
        for child, child_info in _entries(fd):
            child_path = path / child
            if not _utf8(scan, child_path):
                continue
            mode = child_info.st_mode
            if stat.S_ISDIR(mode):
                _walk(scan, fd, child, path=child_path, info=child_info, kind=kind)
            elif stat.S_ISLNK(mode):
                scan.links.append((child_path, os.readlink(child, dir_fd=fd)))
            else:
                _add_file(scan, child_path, child_info, kind)
    finally:
        os.close(fd)


def _utf8(scan: _Scan, path: Path) -> bool:
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        scan.problems.append(
            f"{shown(path)}: file name is not UTF-8; product names must be UTF-8 text"
        )
        return False
    return True


def _add_file(scan: _Scan, path: Path, info: os.stat_result, kind: m.DataProductType) -> None:
    """Keep a regular file the run wrote (or its sidecar); anything else is a problem."""
    name = shown(path)
    if not stat.S_ISREG(info.st_mode):
        scan.problems.append(
            f"{name}: {kind_of(info.st_mode)}, not a regular file; products must be files"
        )
    elif info.st_nlink > 1:
        scan.problems.append(
            f"{name}: a hard link shared with {info.st_nlink - 1} other file(s) (an input?); "
            "a product must be a file the run wrote, not a link to another location's file"
        )
    elif path.name.endswith(SIDECAR) and len(path.name) > len(SIDECAR):
        scan.sidecars[path] = path.with_name(path.name.removesuffix(SIDECAR))
    else:
        scan.files.append((path, kind))


def _judge_links(scan: _Scan) -> None:
    """Accept links that name a product file or directory of the output; name the others.

    The target is read as text and normalised lexically: nothing is followed.
    """
    files = {path for path, _ in scan.files}
    links = {path for path, _ in scan.links}
    for link, target in scan.links:
        name = shown(link)
        aimed = Path(os.path.normpath(link.parent / target))
        if aimed == link:
            scan.problems.append(f"{name}: symlink loop; a product must be a file")
        elif aimed != scan.output and scan.output not in aimed.parents:
            scan.problems.append(
                f"{name}: symlink leaves the output directory {shown(scan.output)} "
                f"(to {shown(target)!r}); it is not followed"
            )
        elif aimed in links:
            scan.problems.append(f"{name}: symlink to another symlink; a product must be a file")
        elif aimed not in files and aimed not in scan.directories and aimed != scan.output:
            scan.problems.append(
                f"{name}: dangling symlink to {shown(target)!r} (no product file of the run there)"
            )


def _attach_sidecars(scan: _Scan) -> list[OutputFile]:
    """Pair files with their sidecars; malformed and orphaned sidecars are problems."""
    outputs = []
    known = {path for path, _ in scan.files}
    for sidecar, target in scan.sidecars.items():
        if target not in known:
            scan.problems.append(
                f"{shown(sidecar)}: sidecar of {target.name!r}, which does not exist"
            )
    for path, kind in scan.files:
        metadata: dict[str, Any] = {}
        sidecar = path.with_name(path.name + SIDECAR)
        if sidecar in scan.sidecars:
            parsed, problem = read_sidecar(sidecar, scan.root)
            if problem is not None:
                scan.problems.append(f"{shown(sidecar)}: malformed sidecar, {problem}")
                continue
            metadata = parsed
        outputs.append(OutputFile(path, kind, metadata, scan.root))
    return outputs


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number the ops DB can store; expected finite numbers")


def read_sidecar(sidecar: Path, root: Path) -> tuple[dict[str, Any], str | None]:
    """Parse a sidecar below run root `root`; return its metadata, or the rule it breaks.

    The ops DB stores metadata as JSONB, which has no NaN or Infinity and no NUL
    character: such sidecars are rejected here, naming the file, not by the database.
    """
    try:
        parsed = _parse_sidecar(sidecar, root)
    except _SidecarError as exc:
        return {}, str(exc)
    if not isinstance(parsed, dict):
        return {}, f"expected a JSON object, got {type(parsed).__name__}"
    if _holds_nul(parsed):
        return {}, "holds the NUL character (\\u0000), which the ops DB cannot store"
    return parsed, None


class _SidecarError(Exception):
    """Why a sidecar cannot be read as JSON."""


def _parse_sidecar(sidecar: Path, root: Path) -> Any:
    try:
        with open_regular(root, sidecar) as handle:
            return json.loads(handle.read().decode("utf-8"), parse_constant=_reject_constant)
    except UnsafeEntryError as exc:
        raise _SidecarError(exc.what) from None
    except UnicodeDecodeError as exc:
        raise _SidecarError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:
        raise _SidecarError(f"not JSON ({exc})") from None
    except RecursionError:
        raise _SidecarError("nested too deeply to be read") from None
    except OSError as exc:
        raise _SidecarError(f"cannot be read ({exc.strerror})") from None


def _holds_nul(value: Any) -> bool:
    """Whether a parsed JSON value has the NUL character in any key or string."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False
