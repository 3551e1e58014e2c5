"""`ccat-wm reproduce PRODUCT`: re-make a product from what its runs recorded, and compare.

Every run of the product's chain is executed again in a scratch directory, upstream
first, each with its own snapshot (software version, command template and parameters,
environment, resources, runtime) and its recorded inputs: raw data packages from
their disk copies (checked against their checksums as they are copied) and upstream
products from the re-execution (not the stored ones). The inputs reach the program in
the manifest's order, as they did the first time. Nothing is written to the ops DB
(the reads run in a READ ONLY transaction) and nothing under the processing location.

Then every file the final run recorded (its products but logs, which hold times) is
compared with the re-made one: bit-identical, or the list of differing files with both
checksums. A run whose snapshot was backfilled without its parameters, environment or
command cannot be re-made exactly and is refused, naming it; so is a Kubernetes
location (its jobs run in the cluster's volumes, not in a scratch directory here).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.errors import CcatWmError
from ccat_wm.execution.checksums import sha256_file
from ccat_wm.execution.collect import ContractViolationError, checksum_outputs, scan_outputs
from ccat_wm.execution.context import RunContext, load_run_context
from ccat_wm.execution.control import product_lineage
from ccat_wm.execution.job_start import backend_for
from ccat_wm.execution.launch import build_job, build_manifest, display_command, write_manifest
from ccat_wm.execution.staging import StagedInput, copy_verified, staged_product
from ccat_wm.execution.stopping import StopRequestedError, stop_requested
from ccat_wm.settings import Settings
from infra.backends import BackendError, JobInfo, JobState

NEEDED = ("parameters", "environment", "command_template")
"""Snapshot columns without which a run cannot be re-made exactly."""
STOP_WAIT_S = 5.0
"""How long a stopped reproduce waits for its cancelled job's end to be recorded."""
POLL_MAX_S = 1.0


class ReproduceError(CcatWmError):
    """The product's runs cannot be re-made (a missing snapshot, input or backend)."""


@dataclass(frozen=True, slots=True)
class RemadeRun:
    """One run of the chain as it was executed again."""

    run_id: int
    step: str
    sub_group_key: str
    command: str
    backend: str
    job_id: str | None
    state: str
    exit_code: int | None
    seconds: float
    log: str
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class FileComparison:
    """A file the final run recorded, against the re-made one."""

    path: str
    """The recorded product's path."""
    remade_path: str | None
    recorded_sha256: str
    remade_sha256: str | None
    """None: the re-execution did not make it."""

    @property
    def identical(self) -> bool:
        """Bit-identical (same SHA-256)."""
        return self.recorded_sha256 == self.remade_sha256


@dataclass(slots=True)
class ReproduceReport:
    """What `reproduce` ran and what it found."""

    product_id: int
    product_path: str
    directory: str
    kept: bool
    runs: list[RemadeRun] = field(default_factory=list)
    files: list[FileComparison] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """Every run re-made and every recorded file bit-identical."""
        return (
            bool(self.files)
            and all(r.state == JobState.COMPLETED.value and not r.problem for r in self.runs)
            and all(f.identical for f in self.files)
        )

    @property
    def differing(self) -> list[FileComparison]:
        """The recorded files that were not re-made bit-identical."""
        return [f for f in self.files if not f.identical]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with `identical` and `differing`."""
        files = [asdict(f) | {"identical": f.identical} for f in self.files]
        return {
            **asdict(self), "files": files, "identical": self.identical,
            "differing": [f["path"] for f in files if not f["identical"]],
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Chain:
    contexts: list[RunContext]
    """Upstream first."""
    final_products: list[tuple[str, str]]
    """(path, sha256) of every product of the final run but its logs."""
    product_id: int
    product_path: str


def _load_chain(session: Session, product: str) -> _Chain:
    session.execute(text("SET TRANSACTION READ ONLY"))
    lineage = product_lineage(session, product)
    ids = [run.run_id for run in reversed(lineage.runs)]  # upstream steps first
    snaps = dict(
        session.execute(
            select(m.RunSnapshot.executed_reduction_step_id, m.RunSnapshot.unknown).where(
                m.RunSnapshot.executed_reduction_step_id.in_(ids)
            )
        ).all()
    )
    for run in lineage.runs:
        if run.run_id not in snaps:
            raise ReproduceError(f"run {run.run_id} ({run.step}) has no snapshot: it never started")
        missing = [c for c in snaps[run.run_id] if c in NEEDED]
        if missing:
            raise ReproduceError(
                f"run {run.run_id} ({run.step}) was recorded before runs kept snapshots and its "
                f"{', '.join(missing)} are unknown: it cannot be re-made exactly"
            )
    contexts = [load_run_context(session, run_id) for run_id in ids]
    for ctx in contexts:
        if ctx.location.backend is m.Backend.KUBERNETES:
            raise ReproduceError(
                f"run {ctx.run_id} ran on Kubernetes location {ctx.location.name!r}; reproduce "
                "re-executes on local and SLURM locations only"
            )
    final = lineage.runs[0].run_id
    products = session.execute(
        select(m.DataProduct.file_path, m.DataProduct.checksum)
        .where(
            m.DataProduct.executed_reduction_step_id == final,
            m.DataProduct.data_product_type != m.DataProductType.LOG,
        )
        .order_by(m.DataProduct.file_path)
    ).all()
    session.rollback()
    return _Chain(contexts, [(p, c) for p, c in products], lineage.product_id, lineage.file_path)


def _in_scratch(ctx: RunContext, scratch: Path) -> RunContext:
    return dataclasses.replace(ctx, location=dataclasses.replace(ctx.location, path=scratch))


def _stage(
    ctx: RunContext, remade: RunContext, made: dict[int, dict[Path, Path]]
) -> list[StagedInput]:
    """Give the re-made run its inputs: raw data from disk copies, products as re-made."""
    layout, staged = remade.layout, []
    for raw in ctx.raw_inputs:
        candidates = [p for p in (raw.location_copy, *raw.disk_copies) if p is not None]
        source = next((p for p in candidates if p.exists()), None)
        if source is None:
            raise ReproduceError(
                f"run {ctx.run_id}: no disk copy of raw data package {raw.name!r} exists "
                f"(looked at {', '.join(map(str, candidates)) or 'none recorded'})"
            )
        target = layout.input / source.name
        what = f"raw data package {raw.name!r}"
        copy_verified(source, target, raw.checksum, what, root=layout.root)
        staged.append(StagedInput(target, "raw", raw.name, raw.checksum, metadata=raw.metadata))
    for product in ctx.product_inputs:
        source = made.get(product.run_id, {}).get(product.path)
        if source is None or not source.exists():
            raise ReproduceError(
                f"run {ctx.run_id}: the re-execution of run {product.run_id} did not make "
                f"{product.path.name}, an input of this run"
            )
        item = staged_product(layout.root, product)  # as the run first saw it
        item.host_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, item.host_path)
        os.chmod(item.host_path, 0o444)
        staged.append(item)
    return staged


def _execute(remade: RunContext, settings: Settings) -> tuple[JobInfo, str, str]:
    spec = build_job(remade, settings, 0)
    spec = dataclasses.replace(spec, name=f"ccat-reproduce-{remade.run_id}-{remade.step}")
    backend = backend_for(remade, settings)
    if stop_requested():
        raise StopRequestedError("reproduce stopped before its next job")
    job_id = backend.submit(spec)
    interval = 0.01
    while not (info := backend.status(job_id)).state.finished:
        if stop_requested():  # nothing to adopt: scratch runs are not in the ops DB
            backend.cancel(job_id)
            deadline = time.monotonic() + STOP_WAIT_S  # its end recorded before the scratch goes
            while not backend.status(job_id).state.finished and time.monotonic() < deadline:
                backend.wait(job_id, 0.1)
            backend.forget(job_id)
            raise StopRequestedError(f"reproduce stopped: its job {job_id} was cancelled")
        backend.wait(job_id, interval)
        interval = min(interval * 2, POLL_MAX_S)
    backend.forget(job_id)
    return info, display_command(spec, remade.secret_env), job_id


def keep_problem(session: Session, keep: Path) -> str | None:
    """Say why `keep` cannot hold a re-execution (None: it can).

    A kept scratch directory must be outside every location (the archive, every run
    tree, every staging cache): reproduce writes runs there that the ops DB does not
    know, which `gc` could remove and a person could take for registered products.
    Real paths are compared, so a symlinked spelling of a location is found too.
    """
    real = Path(os.path.realpath(keep))
    rows = session.execute(select(m.DataLocation.name, m.DataLocation.path)).all()
    for name, path in sorted(rows):
        place = Path(os.path.realpath(path))
        if real == place or place in real.parents:
            return (
                f"{keep} is inside location {name!r} ({path}); give a directory outside "
                "every location: reproduce never writes into the archive or a run tree"
            )
    return None


def _remake(
    ctx: RunContext, scratch: Path, settings: Settings, made: dict[int, dict[Path, Path]]
) -> tuple[RemadeRun, dict[Path, Path]]:
    """Re-execute one run under `scratch` with the files re-made upstream (`made`).

    Returns how it went and its outputs: recorded product path -> the re-made file.
    """
    remade = _in_scratch(ctx, scratch)
    remade.layout.create()
    backend = ctx.location.backend.value
    started = time.perf_counter()
    try:
        write_manifest(remade.layout, build_manifest(remade, _stage(ctx, remade, made)))
        info, command, job_id = _execute(remade, settings)
    except StopRequestedError:
        raise
    except (CcatWmError, BackendError, OSError) as exc:
        failed = RemadeRun(
            ctx.run_id, ctx.step, ctx.sub_group_key, "", backend, None, "FAILED", None, 0.0,
            "", str(exc),
        )  # fmt: skip
        return failed, {}
    outputs: dict[Path, Path] = {}
    problem = None
    if info.state is JobState.COMPLETED:
        try:
            for record in checksum_outputs(scan_outputs(remade.layout)):
                relative = record.path.relative_to(remade.layout.output)
                outputs[ctx.layout.output / relative] = record.path
        except ContractViolationError as exc:
            problem = str(exc)
    else:
        problem = info.reason or f"exit code {info.exit_code}"
    run = RemadeRun(
        ctx.run_id, ctx.step, ctx.sub_group_key, command, backend, job_id, info.state.value,
        info.exit_code, time.perf_counter() - started,
        str(remade.layout.attempt_log(0)), problem,
    )  # fmt: skip
    return run, outputs


def reproduce_product(
    session: Session, product: str, scratch: Path, settings: Settings, *, keep: bool
) -> ReproduceReport:
    """Re-execute the runs that made `product` under `scratch` and compare (module docstring)."""
    chain = _load_chain(session, product)
    report = ReproduceReport(chain.product_id, chain.product_path, str(scratch), keep)
    made: dict[int, dict[Path, Path]] = {}
    """Run id -> recorded product path -> the re-made file."""
    for ctx in chain.contexts:
        run, made[ctx.run_id] = _remake(ctx, scratch, settings, made)
        report.runs.append(run)
        if run.problem:
            break
    final = made.get(chain.contexts[-1].run_id, {})
    for path, recorded in chain.final_products:
        remade_path = final.get(Path(path))
        remade_sha = sha256_file(remade_path) if remade_path and remade_path.exists() else None
        report.files.append(
            FileComparison(path, str(remade_path) if remade_path else None, recorded, remade_sha)
        )
    return report
