"""Result collection (docs/concepts.md section 4): checksum and register a run's outputs.

`scan_outputs` (`ccat_wm.execution.scan`) classifies what the job left and names every
contract violation. `checksum_outputs` hashes the files, reopening each from the run's
root without following a link; `register_products` inserts the products and their
lineage set-based, in the caller's transaction, so a run becomes COMPLETED together with
its products or not at all; `verify_unchanged` re-hashes every product at the end, so
that a file changed while it was collected fails the run instead of being registered
under a stale checksum. `preserve_failed_logs` moves a failed attempt's `logs/` outputs
into the run's log directory with directory descriptors (`runtree.move_into`): a link
the job planted at the target fails the run naming it, and nothing lands outside the
run's tree.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Insert, Table, insert, text

from ccat_ops_db import models as m
from ccat_wm.db import Db, connection_of
from ccat_wm.execution.checksums import sha256_file
from ccat_wm.execution.layout import RunLayout
from ccat_wm.execution.runtree import (
    DIR_FLAGS,
    UnsafeEntryError,
    move_into,
    open_dir,
    open_regular,
    open_regular_path,
    shown,
)
from ccat_wm.execution.scan import (
    SIDECAR,
    ContractViolationError,
    OutputFile,
    scan_outputs,
)

__all__ = [
    "ContractViolationError",
    "OutputFile",
    "ProductRecord",
    "checksum_outputs",
    "preserve_failed_logs",
    "register_products",
    "reset_output",
    "scan_outputs",
    "verify_unchanged",
]
T = m.DataProductType
HASH_WORKERS = max(1, min(4, os.cpu_count() or 1))
"""Files hashed in parallel (hashlib releases the GIL while hashing)."""


@dataclass(frozen=True, slots=True)
class ProductRecord:
    """A product ready to register: the file, its class, size, checksum and metadata."""

    path: Path
    data_product_type: m.DataProductType
    size: int
    checksum: str
    metadata: dict[str, Any]
    root: Path | None = None
    """The run's root the file is reopened from (following no link); None: the path alone."""


def checksum_outputs(outputs: Iterable[OutputFile]) -> list[ProductRecord]:
    """Size and SHA-256 of every output, hashed in parallel threads.

    Raises ContractViolationError naming every file that is gone or no longer a regular
    file (replaced since the scan).
    """
    items = list(outputs)
    hashed = _hash_all([(o.root, o.path) for o in items])
    problems = [problem for _, problem in hashed if problem is not None]
    if problems:
        raise ContractViolationError(problems)
    return [
        ProductRecord(o.path, o.data_product_type, size, digest, o.metadata, o.root)
        for o, ((size, digest), _) in zip(items, hashed, strict=True)
    ]


def verify_unchanged(records: Sequence[ProductRecord]) -> None:
    """Re-hash every product; raise ContractViolationError naming each one that changed.

    Run at the end of collection: a process the job left behind (or anything else)
    that wrote to a product meanwhile would otherwise leave a registered checksum that
    does not match the file.
    """
    hashed = _hash_all([(r.root, r.path) for r in records])
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


def _hash_one(item: tuple[Path | None, Path]) -> tuple[tuple[int, str], str | None]:
    """(size, SHA-256) of a regular file, or the problem that prevents it."""
    root, path = item
    try:
        with open_regular(root, path) if root is not None else open_regular_path(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            return (size, sha256_file(handle)), None  # type: ignore[arg-type]
    except UnsafeEntryError as exc:
        return (0, ""), str(exc)
    except OSError as exc:
        return (0, ""), f"{shown(path)}: cannot be read ({exc.strerror})"


def _hash_all(
    items: Sequence[tuple[Path | None, Path]],
) -> list[tuple[tuple[int, str], str | None]]:
    if len(items) < 2 * HASH_WORKERS:  # a pool costs more than it saves here
        return [_hash_one(i) for i in items]
    with ThreadPoolExecutor(max_workers=HASH_WORKERS) as pool:
        return list(pool.map(_hash_one, items))


def preserve_failed_logs(layout: RunLayout, attempt: int) -> tuple[list[OutputFile], list[str]]:
    """Move a failed attempt's `logs/` outputs to the run's log directory.

    Returns the moved files and what could not be preserved, each naming its entry: the
    target `logs/<step>-attempt-N/` (or a directory below it) that the job replaced by a
    link or a file, a source entry that is not a regular file (left where it is, unread).
    """
    target = Path("logs") / layout.attempt_name(attempt)
    source_rel = Path(layout.output_rel) / "logs"
    moved: list[OutputFile] = []
    problems: list[str] = []
    try:
        with open_dir(layout.root, source_rel) as source:
            _move_tree(layout.root, source, target, moved=moved, problems=problems)
    except UnsafeEntryError as exc:
        if exc.what != "is missing":
            problems.append(f"the failed attempt's logs were not preserved: {exc}")
    return moved, problems


def _move_tree(
    root: Path, source: int, target: Path, *, moved: list[OutputFile], problems: list[str]
) -> None:
    with os.scandir(source) as it:
        entries = sorted((e.name, e.stat(follow_symlinks=False)) for e in it)
    for name, info in entries:
        if stat.S_ISDIR(info.st_mode):
            fd = os.open(name, DIR_FLAGS, dir_fd=source)
            try:
                _move_tree(root, fd, target / name, moved=moved, problems=problems)
            finally:
                os.close(fd)
        elif not stat.S_ISREG(info.st_mode) or info.st_nlink > 1 or name.endswith(SIDECAR):
            continue  # what cannot be a product stays where it is, unread
        else:
            try:
                move_into(root, source, name, target / name)
            except UnsafeEntryError as exc:
                problems.append(f"the failed attempt's logs were not preserved: {exc}")
                return
            moved.append(OutputFile(root / target / name, T.LOG, root=root))


def reset_output(layout: RunLayout) -> None:
    """Create the run's directories with an empty output directory (nothing in it is registered).

    Whatever the job left at the output directory's place is removed without following
    it: a link is unlinked (not what it names), a directory removed with descriptors.
    """
    rel = Path(layout.output_rel)
    try:
        with open_dir(layout.root, rel.parent) as parent:
            try:
                mode = os.stat(rel.name, dir_fd=parent, follow_symlinks=False).st_mode
            except FileNotFoundError:
                mode = None
            if mode is not None and stat.S_ISDIR(mode):
                shutil.rmtree(rel.name, dir_fd=parent)
            elif mode is not None:
                os.unlink(rel.name, dir_fd=parent)
    except UnsafeEntryError as exc:
        if exc.what != "is missing":
            raise
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
