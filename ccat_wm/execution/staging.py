"""Staging: make every input of a run readable at its processing location (docs/concepts.md 2, 4).

Raw data packages are staged once per processing location into its `.staging/` cache:
from a disk copy (hard link when on the same filesystem, else a copy), checksum
verified, and recorded as a RawDataPackageCopy of the location. A package with no disk
copy gets a StagingJob row that an external transfer system serves; the run waits for
it up to a timeout. Each run then sees its inputs in its own `input/` (raw data) and
`workspace/<upstream step>/run-<id>/` (upstream products), so the paths in its
manifest are stable and the directories can be bound into a container.

No run can change an archive file or another run's product through its inputs:

- Raw inputs: under a container runtime `input/` is bound read-only, so they are hard
  links (no copy) to the staged package. Under the host runtime nothing stops a program
  from opening its input for writing (or, as the file's owner, from chmod-ing it
  first), so each is the run's own read-only copy.
- Upstream products are always the run's own read-only copies: they sit in
  `workspace/`, which the software may write under every runtime.

What a buggy program does to a copy harms only that copy. Every copy is hashed as it
is made and refused when it differs from the checksum the ops DB recorded (the run
fails before it starts, naming the file). Staged packages were checked when staged.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import BindParameter, Connection, bindparam, select
from sqlalchemy import insert as core_insert
from sqlalchemy.dialects.postgresql import Insert, insert

from ccat_ops_db import models as m
from ccat_wm.errors import CcatWmError
from ccat_wm.execution.checksums import sha256_file
from ccat_wm.execution.context import ProductInput, RawInput, RunContext
from ccat_wm.execution.layout import RunLayout
from ccat_wm.execution.runtree import UnsafeEntryError, open_dir, open_regular_path

DEFAULT_STAGING_TIMEOUT_S = 3600.0
"""How long a run waits for an external StagingJob unless the location sets one."""
STAGING_CACHE = ".staging"
COPY_CHUNK = 1 << 20


class StagingError(CcatWmError):
    """An input could not be made available at the processing location."""


@dataclass(frozen=True, slots=True)
class StagedInput:
    """An input as the run sees it on the host."""

    host_path: Path
    kind: str
    """`raw` or `product`."""
    name: str
    checksum: str
    data_product_type: str | None = None
    step: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


Transactions = Callable[[], AbstractContextManager[Connection]]
"""Opens a short transaction on the ops DB (e.g. `engine.begin`); staging commits each
record at once, so that an external transfer system sees its StagingJob."""


CopyRecord = dict[str, Any]
"""A staged package's copy at a location, as `record_copies` writes it."""


def stage_inputs(
    transaction: Transactions,
    ctx: RunContext,
    *,
    poll_s: float = 1.0,
    copies: list[CopyRecord] | None = None,
) -> list[StagedInput]:
    """Stage every raw input and give the run its inputs (see the module docstring).

    `copies`: the packages staged into the location's cache are added to it, for the
    caller to record with its next commit (`record_copies`), instead of one commit
    each. Losing them costs nothing but staging again: the next attempt finds the
    staged file, links it and checks its checksum.
    """
    layout = ctx.layout
    private = ctx.location.runtime is m.Runtime.HOST
    staged = []
    for raw in ctx.raw_inputs:
        source = raw.location_copy
        if source is None or not source.exists():
            source = _stage_package(transaction, ctx, raw, poll_s=poll_s, copies=copies)
        try:
            target = _give_run(source, layout, raw, private=private)
        except (FileNotFoundError, StagingError):
            if source.exists():
                raise
            # `ccat-wm gc` removed the staged copy since it was looked up: stage it again.
            source = _stage_package(transaction, ctx, raw, poll_s=poll_s, copies=copies)
            target = _give_run(source, layout, raw, private=private)
        staged.append(StagedInput(target, "raw", raw.name, raw.checksum, metadata=raw.metadata))
    for product in ctx.product_inputs:
        item = staged_product(layout.root, product)
        what = f"product of run {product.run_id} ({product.step})"
        copy_verified(product.path, item.host_path, product.checksum, what, root=layout.root)
        staged.append(item)
    return staged


def _give_run(source: Path, layout: RunLayout, raw: RawInput, *, private: bool) -> Path:
    """Put a staged package into a run's `input/`: a private copy, or a hard link."""
    target = layout.input / source.name
    if private:
        what = f"raw data package {raw.name!r}"
        copy_verified(source, target, raw.checksum, what, root=layout.root)
    else:
        _link_or_copy(source, target)
    return target


def staged_product(root: Path, product: ProductInput) -> StagedInput:
    """Return an upstream product as a run at `root` sees it (`workspace/<step>/run-<id>/`)."""
    target = root / "workspace" / product.step / f"run-{product.run_id}"
    return StagedInput(
        target / _relative_to_run(product), "product", product.path.name, product.checksum,
        product.data_product_type, product.step, product.metadata,
    )  # fmt: skip


def _mismatch(source: Path, expected: str, actual: str, what: str) -> StagingError:
    return StagingError(
        f"input {source} ({what}) has sha256 {actual}, but the ops DB recorded {expected}: "
        "it changed after it was recorded; `ccat-wm verify` lists every changed file"
    )


def copy_verified(source: Path, target: Path, expected: str, what: str, *, root: Path) -> None:
    """Copy `source` to a read-only `target` below run root `root`, hashing as it reads.

    A changed source is refused. The source is opened without following a final link
    or blocking, and only if it is a regular file (an upstream product lives in a
    directory its job wrote); the target's directories are entered without following
    links below `root` (an earlier attempt's job could have planted one), and the copy
    is written beside it and renamed into place through the directory's descriptor.
    """
    rel = target.relative_to(root)
    root.mkdir(parents=True, exist_ok=True)  # the manager's own directory, not the job's
    try:
        src = open_regular_path(source)
    except FileNotFoundError:
        raise StagingError(f"input {source} ({what}) is missing") from None
    except UnsafeEntryError as exc:
        raise StagingError(f"input {source} ({what}) {exc.what}") from None
    digest = hashlib.sha256()
    tmp = f".{rel.name}.tmp-{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    with src, open_dir(root, rel.parent, create=True) as dir_fd:
        with os.fdopen(os.open(tmp, flags, 0o644, dir_fd=dir_fd), "wb") as dst:
            while chunk := src.read(COPY_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
            os.fchmod(dst.fileno(), 0o444)
        if digest.hexdigest() != expected:
            os.unlink(tmp, dir_fd=dir_fd)
            raise _mismatch(source, expected, digest.hexdigest(), what)
        os.rename(tmp, rel.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _relative_to_run(product: ProductInput) -> Path:
    """Return where a downstream run sees the product, below `workspace/<step>/run-<id>/`."""
    parts = product.path.parts
    marker = f"run-{product.run_id}"
    if marker in parts:
        below = parts[parts.index(marker) + 1 :]
        drop = 2 if below[:1] == ("workspace",) else 1
        return Path(*below[drop:])
    return Path(product.path.name)


def _stage_package(
    transaction: Transactions,
    ctx: RunContext,
    raw: RawInput,
    *,
    poll_s: float,
    copies: list[CopyRecord] | None,
) -> Path:
    """Bring one package into the location's staging cache and record the copy.

    With `copies`, the record is added to it for the caller's next commit instead.
    """
    cache = ctx.location.path / STAGING_CACHE
    source = next((p for p in raw.disk_copies if p.exists()), None)
    if source is not None:
        target = cache / source.name
        _link_or_copy(source, target)
    else:
        target = _wait_for_staging_job(transaction, ctx, raw, cache / raw.name, poll_s=poll_s)
    actual = sha256_file(target)
    if actual != raw.checksum:
        target.unlink(missing_ok=True)
        raise StagingError(
            f"checksum mismatch staging package {raw.name!r} from {source or target}: "
            f"expected {raw.checksum}, got {actual}; the copy was removed"
        )
    values = {
        "package_id": raw.package_id,
        "location_id": ctx.location.id,
        "path": str(target),
        "verified_at": dt.datetime.now(dt.UTC),
    }
    if copies is not None:
        copies.append(values)
        return target
    with transaction() as conn:
        record_copies(conn, [values])
    return target


def record_copies(conn: Connection, copies: list[CopyRecord]) -> None:
    """Record staged packages' copies at their location (one statement for all).

    One copy (a run of one package, the common case) is one plain execution: an
    executemany of one row costs the driver several times more.
    """
    if len(copies) == 1:
        conn.execute(_record_copy(), copies[0])
    elif copies:
        conn.execute(_record_copy(), copies)


@lru_cache(maxsize=1)
def _record_copy() -> Insert:
    """Upsert a package's copy at a location (built once: every staged package runs it)."""
    copy = m.RawDataPackageCopy
    path: BindParameter[str] = bindparam("path")
    verified_at: BindParameter[dt.datetime] = bindparam("verified_at")
    return (
        insert(copy)
        .values(
            raw_data_package_id=bindparam("package_id"),
            data_location_id=bindparam("location_id"),
            path=path,
            verified_at=verified_at,
        )
        .on_conflict_do_update(
            index_elements=[copy.raw_data_package_id, copy.data_location_id],
            set_={"path": path, "verified_at": verified_at},
        )
    )


def _wait_for_staging_job(
    transaction: Transactions, ctx: RunContext, raw: RawInput, target: Path, *, poll_s: float
) -> Path:
    """Create (or join) a StagingJob for the package and wait until it is served."""
    job = m.StagingJob
    open_states = (m.StagingStatus.PENDING, m.StagingStatus.RUNNING)
    with transaction() as conn:
        job_id = conn.scalar(
            select(job.id).where(
                job.raw_data_package_id == raw.package_id,
                job.destination_location_id == ctx.location.id,
                job.status.in_(open_states),
            )
        )
        if job_id is None:
            job_id = conn.scalar(
                core_insert(job)
                .values(
                    raw_data_package_id=raw.package_id,
                    destination_location_id=ctx.location.id,
                    executed_reduction_step_id=ctx.run_id,
                    destination_path=str(target),
                )
                .returning(job.id)
            )
    timeout = float(ctx.location.settings.get("staging_timeout_s", DEFAULT_STAGING_TIMEOUT_S))
    deadline = time.monotonic() + timeout
    while True:
        with transaction() as conn:
            status, path, error = conn.execute(
                select(job.status, job.destination_path, job.error_message).where(job.id == job_id)
            ).one()
        if status is m.StagingStatus.COMPLETED:
            return Path(path)
        if status is m.StagingStatus.FAILED:
            raise StagingError(f"staging job {job_id} for package {raw.name!r} failed: {error}")
        if time.monotonic() >= deadline:
            raise StagingError(
                f"staging job {job_id} for package {raw.name!r} did not complete within "
                f"{timeout:g} s (location {ctx.location.name!r}, setting staging_timeout_s)"
            )
        time.sleep(poll_s)


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` to `target` (copy across filesystems); replace a stale target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and os.path.samefile(source, target):
        return
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    tmp.replace(target)
