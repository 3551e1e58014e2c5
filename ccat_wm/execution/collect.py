"""Result collection (docs/concepts.md section 4): classify, checksum and register a run's outputs.

`scan_outputs` walks `$WORKFLOW_OUTPUT_DIR` and reports every contract violation at
once, each naming its file: files outside the declared sub-directories (top-level files
are allowed only as intermediates of a step with downstream steps), symlinks that leave
the directory, malformed or orphaned `<file>.meta.json` sidecars. `register_products`
inserts the products and their lineage set-based, in the caller's transaction, so a run
becomes COMPLETED together with its products or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
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
from ccat_wm.execution.checksums import sha256_file
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
        if _leaves(entry, real_root):
            problems.append(f"{entry}: symlink leaves the output directory {root}")
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
                f"{entry}: {what} {str(rel)!r} is outside the declared output directories "
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
            problems.append(f"{sidecar}: sidecar of {target.name!r}, which does not exist")
    for path, kind in files:
        metadata: dict[str, Any] = {}
        sidecar = path.with_name(path.name + SIDECAR)
        if sidecar in sidecars:
            try:
                parsed = json.loads(sidecar.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                problems.append(f"{sidecar}: malformed sidecar, not JSON ({exc})")
                continue
            if not isinstance(parsed, dict):
                problems.append(
                    f"{sidecar}: malformed sidecar, expected a JSON object, "
                    f"got {type(parsed).__name__}"
                )
                continue
            metadata = parsed
        outputs.append(OutputFile(path, kind, metadata))
    return outputs


def _leaves(path: Path, real_root: Path) -> bool:
    if not path.is_symlink():
        return False
    target = path.resolve()
    return target != real_root and real_root not in target.parents


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
            if _leaves(base / name, real_root):
                problems.append(f"{base / name}: symlink leaves the output directory")
        for name in sorted(filenames):
            path = base / name
            if _leaves(path, real_root):
                problems.append(f"{path}: symlink leaves the output directory")
            else:
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
    """Size and SHA-256 of every output, hashed in parallel threads."""
    items = list(outputs)
    if len(items) < 2 * HASH_WORKERS:  # a pool costs more than it saves here
        digests = [sha256_file(o.path) for o in items]
    else:
        with ThreadPoolExecutor(max_workers=HASH_WORKERS) as pool:
            digests = list(pool.map(lambda o: sha256_file(o.path), items))
    return [
        ProductRecord(o.path, o.data_product_type, o.path.stat().st_size, digest, o.metadata)
        for o, digest in zip(items, digests, strict=True)
    ]


def preserve_failed_logs(layout: RunLayout, attempt: int) -> list[OutputFile]:
    """Move a failed attempt's `logs/` outputs to the run's log directory; return them."""
    source = layout.output / "logs"
    if not source.is_dir():
        return []
    target = layout.logs / f"{layout.step}-attempt-{attempt}"
    moved = []
    for path in sorted(p for p in source.rglob("*") if p.is_file() and not p.is_symlink()):
        if path.name.endswith(SIDECAR):
            continue
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
