"""Result collection (docs/concepts.md section 4): classify, checksum and register a run's outputs.

`scan_outputs` walks `$WORKFLOW_OUTPUT_DIR` and reports every contract violation at
once, each naming its file and the rule it broke: files outside the declared
sub-directories (top-level files are allowed only as intermediates of a step with
downstream steps); anything that is not a regular file (a named pipe, a socket, a device)
or is a hard link to a file the run did not write (an input); symlinks that leave the
directory, dangle or loop; names that are not UTF-8; malformed or orphaned
`<file>.meta.json` sidecars, including `NaN`/`Infinity` and the NUL character, which
the ops DB cannot store. Files are opened without blocking and hashed only when they are
regular. `register_products` inserts the products and their lineage set-based, in the
caller's transaction, so a run becomes COMPLETED together with its products or not at
all; `verify_unchanged` re-hashes every product at the end, so that a file changed
while it was collected fails the run instead of being registered under a stale checksum.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Insert, Table, insert, text

from ccat_ops_db import models as m
from ccat_wm.db import Db, connection_of
from ccat_wm.errors import CcatWmError
from ccat_wm.execution.checksums import NotRegularFileError, sha256_file
from ccat_wm.execution.layout import OUTPUT_CLASSES, RunLayout

SIDECAR = ".meta.json"
T = m.DataProductType
CLASSES: dict[str, m.DataProductType] = {
    "science": T.SCIENCE,
    "qa": T.QA_METRIC,
    "plots": T.PLOT,
    "statistics": T.STATISTICS,
    "logs": T.LOG,
}
HASH_WORKERS = max(1, min(4, os.cpu_count() or 1))
"""Files hashed in parallel (hashlib releases the GIL while hashing)."""
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


@dataclass(frozen=True, slots=True)
class ProductRecord:
    """A product ready to register: the file, its class, size, checksum and metadata."""

    path: Path
    data_product_type: m.DataProductType
    size: int
    checksum: str
    metadata: dict[str, Any]


def scan_outputs(layout: RunLayout) -> list[OutputFile]:
    """Classify every file under the run's output directory; raise on any violation."""
    root = layout.output
    problems: list[str] = []
    files: list[tuple[Path, m.DataProductType]] = []
    sidecars: dict[Path, Path] = {}
    real_root = root.resolve()
    for entry in sorted(root.iterdir()) if root.exists() else []:
        rel = entry.relative_to(root)
        problem = _file_problem(entry, real_root)
        if problem is not None:
            problems.append(problem)
        elif entry.is_dir() and not entry.is_symlink() and entry.name in CLASSES:
            kind = CLASSES[entry.name]
            if kind is T.SCIENCE and not layout.is_final:
                kind = T.INTERMEDIATE
            _walk(entry, kind, real_root, files=files, sidecars=sidecars, problems=problems)
        elif entry.is_file() and not layout.is_final:
            _add(entry, T.INTERMEDIATE, files, sidecars)
        else:
            what = "directory" if entry.is_dir() else "file"
            allowed = ", ".join(f"{c}/" for c in OUTPUT_CLASSES)
            problems.append(
                f"{shown(entry)}: {what} {shown(rel)!r} is outside the declared output directories "
                f"({allowed}{'' if layout.is_final else ' or top-level intermediates'})"
            )
    outputs = _attach_sidecars(files, sidecars, problems)
    if problems:
        raise ContractViolationError(problems)
    return outputs


def _attach_sidecars(
    files: list[tuple[Path, m.DataProductType]], sidecars: dict[Path, Path], problems: list[str]
) -> list[OutputFile]:
    """Pair files with their sidecars; malformed and orphaned sidecars are problems."""
    outputs = []
    known = {path for path, _ in files}
    for sidecar, target in sidecars.items():
        if target not in known:
            problems.append(f"{shown(sidecar)}: sidecar of {target.name!r}, which does not exist")
    for path, kind in files:
        metadata: dict[str, Any] = {}
        sidecar = path.with_name(path.name + SIDECAR)
        if sidecar in sidecars:
            parsed, problem = read_sidecar(sidecar)
            if problem is not None:
                problems.append(f"{shown(sidecar)}: malformed sidecar, {problem}")
                continue
            metadata = parsed
        outputs.append(OutputFile(path, kind, metadata))
    return outputs


def shown(path: Path | str) -> str:
    r"""Return a path as text that can be printed and stored (bytes not UTF-8 as \x..)."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number the ops DB can store; expected finite numbers")


def read_sidecar(sidecar: Path) -> tuple[dict[str, Any], str | None]:
    """Parse a sidecar; return its metadata, or the rule it breaks (None: it is fine).

    The ops DB stores metadata as JSONB, which has no NaN or Infinity and no NUL
    character: such sidecars are rejected here, naming the file, not by the database.
    """
    try:
        parsed = _parse_sidecar(sidecar)
    except _SidecarError as exc:
        return {}, str(exc)
    if not isinstance(parsed, dict):
        return {}, f"expected a JSON object, got {type(parsed).__name__}"
    if _holds_nul(parsed):
        return {}, "holds the NUL character (\\u0000), which the ops DB cannot store"
    return parsed, None


class _SidecarError(Exception):
    """Why a sidecar cannot be read as JSON."""


def _parse_sidecar(sidecar: Path) -> Any:
    try:
        with _open_regular(sidecar) as handle:
            return json.loads(handle.read().decode("utf-8"), parse_constant=_reject_constant)
    except NotRegularFileError as exc:
        raise _SidecarError(str(exc).split(": ", 1)[-1]) from None
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


def _open_regular(path: Path) -> Any:
    """Open a file for reading without blocking; raise unless it is a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{shown(path)}: {_kind(mode)}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _kind(mode: int) -> str:
    """Name the kind of a non-regular file."""
    kinds = (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")


def _file_problem(path: Path, real_root: Path) -> str | None:
    """Return the contract rule one directory entry breaks (None: it may be collected).

    Directories are walked, not judged here; everything else must be a regular file
    with a UTF-8 name, written by the run (one link), or a symlink to such a file
    inside the output directory.
    """
    name = shown(path)
    try:
        os.fsencode(path).decode("utf-8")
        info = path.lstat()
    except UnicodeDecodeError:
        return f"{name}: file name is not UTF-8; product names must be UTF-8 text"
    except OSError as exc:
        return f"{name}: cannot be read ({exc.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return _symlink_problem(path, real_root)
    if stat.S_ISDIR(info.st_mode):
        return None
    return _regular_problem(name, info)


def _regular_problem(name: str, info: os.stat_result) -> str | None:
    """Return why a non-directory entry is not a product file the run wrote (None: it is)."""
    if not stat.S_ISREG(info.st_mode):
        return f"{name}: {_kind(info.st_mode)}, not a regular file; products must be files"
    if info.st_nlink > 1:
        return (
            f"{name}: a hard link shared with {info.st_nlink - 1} other file(s) (an input?); "
            "a product must be a file the run wrote, not a link to another location's file"
        )
    return None


def _symlink_problem(path: Path, real_root: Path) -> str | None:
    """Return why a symlink cannot be collected (None: it names a file or directory inside)."""
    name = shown(path)
    try:
        target = path.resolve(strict=True)
        mode = target.stat().st_mode
    except RuntimeError:
        return f"{name}: symlink loop; a product must be a file"
    except FileNotFoundError:
        return f"{name}: dangling symlink to {shown(os.readlink(path))!r}"
    except OSError as exc:
        return f"{name}: symlink cannot be followed ({exc.strerror})"
    if target != real_root and real_root not in target.parents:
        return f"{name}: symlink leaves the output directory {shown(real_root)}"
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return f"{name}: symlink to {_kind(mode)}, not a regular file; products must be files"
    return None


def _walk(
    directory: Path,
    kind: m.DataProductType,
    real_root: Path,
    *,
    files: list[tuple[Path, m.DataProductType]],
    sidecars: dict[Path, Path],
    problems: list[str],
) -> None:
    for dirpath, dirnames, filenames in os.walk(directory):
        base = Path(dirpath)
        for name in sorted(dirnames):
            problem = _file_problem(base / name, real_root)
            if problem is not None:
                problems.append(problem)
        for name in sorted(filenames):
            path = base / name
            problem = _file_problem(path, real_root)
            if problem is not None:
                problems.append(problem)
            else:  # os.walk lists a symlink to a directory among the directories
                _add(path, kind, files, sidecars)


def _add(
    path: Path,
    kind: m.DataProductType,
    files: list[tuple[Path, m.DataProductType]],
    sidecars: dict[Path, Path],
) -> None:
    if path.name.endswith(SIDECAR) and len(path.name) > len(SIDECAR):
        sidecars[path] = path.with_name(path.name.removesuffix(SIDECAR))
    else:
        files.append((path, kind))


def checksum_outputs(outputs: Iterable[OutputFile]) -> list[ProductRecord]:
    """Size and SHA-256 of every output, hashed in parallel threads.

    Raises ContractViolationError naming every file that is gone or no longer a regular
    file (replaced since the scan).
    """
    items = list(outputs)
    hashed = _hash_all([o.path for o in items])
    problems = [problem for _, problem in hashed if problem is not None]
    if problems:
        raise ContractViolationError(problems)
    return [
        ProductRecord(o.path, o.data_product_type, size, digest, o.metadata)
        for o, ((size, digest), _) in zip(items, hashed, strict=True)
    ]


def verify_unchanged(records: Sequence[ProductRecord]) -> None:
    """Re-hash every product; raise ContractViolationError naming each one that changed.

    Run at the end of collection: a process the job left behind (or anything else)
    that wrote to a product meanwhile would otherwise leave a registered checksum that
    does not match the file.
    """
    hashed = _hash_all([r.path for r in records])
    problems = []
    for record, (found, problem) in zip(records, hashed, strict=True):
        if problem is not None:
            problems.append(problem)
        elif found != (record.size, record.checksum):
            problems.append(
                f"{shown(record.path)}: changed while it was collected (size {record.size} -> "
                f"{found[0]}, checksum {record.checksum[:12]}... -> {found[1][:12]}...); "
                "something the job started still wrote to it"
            )
    if problems:
        raise ContractViolationError(problems)


def _hash_one(path: Path) -> tuple[tuple[int, str], str | None]:
    """(size, SHA-256) of a regular file, or the problem that prevents it."""
    try:
        with _open_regular(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            return (size, sha256_file(handle)), None
    except NotRegularFileError as exc:
        return (0, ""), str(exc)
    except OSError as exc:
        return (0, ""), f"{shown(path)}: cannot be read ({exc.strerror})"


def _hash_all(paths: Sequence[Path]) -> list[tuple[tuple[int, str], str | None]]:
    if len(paths) < 2 * HASH_WORKERS:  # a pool costs more than it saves here
        return [_hash_one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=HASH_WORKERS) as pool:
        return list(pool.map(_hash_one, paths))


def preserve_failed_logs(layout: RunLayout, attempt: int) -> list[OutputFile]:
    """Move a failed attempt's `logs/` outputs to the run's log directory; return them."""
    source = layout.output / "logs"
    if not source.is_dir():
        return []
    target = layout.logs / f"{layout.step}-attempt-{attempt}"
    moved = []
    for path in sorted(p for p in source.rglob("*") if p.is_file() and not p.is_symlink()):
        if path.name.endswith(SIDECAR) or _file_problem(path, source.resolve()) is not None:
            continue  # what cannot be a product stays where it is, on disk
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, destination)
        moved.append(OutputFile(destination, T.LOG))
    return moved


def reset_output(layout: RunLayout) -> None:
    """Create the run's directories with an empty output directory (nothing in it is registered)."""
    if layout.output.exists():
        shutil.rmtree(layout.output)
    layout.create()


def register_products(session: Db, run_id: int, records: Sequence[ProductRecord]) -> int:
    """Insert the products of run `run_id` and their lineage; return how many. No commit.

    Both statements are built once (they run for every run): one multi-row INSERT of the
    products, then one INSERT .. SELECT linking every product of the run that is not
    linked yet to the run's raw packages and to those of its upstream products.
    """
    if not records:
        return 0
    connection = connection_of(session)
    connection.execute(
        _product_insert(),
        [
            {
                "executed_reduction_step_id": run_id,
                "data_product_type": r.data_product_type,
                "file_path": str(r.path),
                "file_size": r.size,
                "checksum": r.checksum,
                "metadata": r.metadata,
            }
            for r in records
        ],
    )
    connection.execute(_LINEAGE_INSERT, {"run_id": run_id})
    return len(records)


@lru_cache(maxsize=1)
def _product_insert() -> Insert:
    """INSERT of product rows (Core, on the table: no ORM bookkeeping per row)."""
    return insert(cast(Table, m.DataProduct.__table__))


_LINEAGE_INSERT = text(
    """
    INSERT INTO data_product_lineage (data_product_id, raw_data_package_id)
    SELECT p.id, src.pkg
      FROM data_product p
      JOIN (SELECT i.raw_data_package_id AS pkg
              FROM executed_reduction_step_input i
             WHERE i.executed_reduction_step_id = :run_id AND i.raw_data_package_id IS NOT NULL
            UNION
            SELECT l.raw_data_package_id
              FROM executed_reduction_step_input i
              JOIN data_product_lineage l ON l.data_product_id = i.data_product_id
             WHERE i.executed_reduction_step_id = :run_id) src ON true
     WHERE p.executed_reduction_step_id = :run_id
    ON CONFLICT DO NOTHING
    """
)
"""Link every product of a run to the raw packages it derives from (transitively)."""
