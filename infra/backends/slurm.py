"""The SLURM backend: one batch job (or one task of a job array) per run.

Submission. Every job runs the same fixed batch script, `launch.sh` under the
location's job-state directory, which reads the run's command, environment, working
directory and log path from files of NUL-separated values (bash `mapfile`), exports
the environment and `exec`s the command: data never becomes shell code, and `sbatch`
gets an argument list. Runs whose submissions arrive within `array_window_s` of each
other with the same resources go out as ONE job array (`--array=0-N`, at most
`max_array_size` tasks), so a step fanned out over thousands of sub-groups costs a few
`sbatch` calls, not thousands; a lone run is a plain job named after it. Job ids are
SLURM's: `1234` for a job, `1234_7` for an array task.

Status. All jobs this process watches share one cache, refreshed at most once per
`poll_interval_s` by ONE `squeue --me` (queued and running jobs) and, for watched jobs
that squeue no longer lists, ONE `sacct` call, never one per job. Metrics come from
accounting: wall time (`ElapsedRaw`), CPU-hours (`TotalCPU`) and peak memory (`MaxRSS`
of the `.batch` step). OUT_OF_MEMORY, TIMEOUT, NODE_FAIL, PREEMPTED (and BOOT_FAIL,
DEADLINE) are failures with that name as the reason, so the run can be retried. A
cluster without cgroups (as in CI) kills a job over its memory through accounting
polling and records it as killed by signal 9; a job killed by signal 9 whose `MaxRSS`
exceeds its requested memory is reported as OUT_OF_MEMORY too.
"""

from __future__ import annotations

import math
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path

from infra.backends.base import (
    BackendError,
    JobInfo,
    JobSpec,
    ResourceLimits,
    Resources,
    by_threshold,
)
from infra.backends.polling import PolledBackend
from infra.backends.slurm_files import LAUNCH_SCRIPT, escape_pattern, file_name, write_task
from infra.backends.slurm_output import (
    DEAD_NODE_STATES,
    SACCT_FIELDS,
    megabytes_to_gb,
    parse_sacct,
    parse_squeue,
    partition_hours,
    partition_number,
    partition_of,
    scontrol_fields,
    smaller,
    waits_for_nodes,
)
from infra.backends.slurm_settings import MAX_NICE, SlurmSettings

LIMITS_TTL_S = 60.0
"""How long the partition's limits read by `limits()` are reused."""
ACCOUNTING_GRACE_S = 15.0
"""How long a finished job's state waits for its `.batch` step to reach accounting (a job
that never started a batch step, e.g. cancelled while queued, is final after this)."""


@dataclass(slots=True)
class _Pending:
    spec: JobSpec
    done: Future[str] = field(default_factory=Future)


@dataclass(slots=True)
class _Batch:
    options: tuple[str, ...]
    items: list[_Pending] = field(default_factory=list)
    full: threading.Event = field(default_factory=threading.Event)


class SlurmBackend(PolledBackend):
    """Submits runs to SLURM with sbatch; see the module docstring."""

    name = "slurm"
    submits_in_bulk = True

    def __init__(self, state_dir: Path, settings: SlurmSettings) -> None:
        """Keep submission files under `state_dir/slurm` (must be visible to the nodes)."""
        super().__init__(settings.poll_interval_s)
        self.root = state_dir / "slurm"
        self.settings = settings
        self._open: dict[tuple[str, ...], _Batch] = {}
        self._incomplete: dict[str, float] = {}
        self._limits: tuple[float, ResourceLimits] | None = None
        self._limits_lock = threading.Lock()
        self.calls: dict[str, int] = {"sbatch": 0, "squeue": 0, "sacct": 0, "scancel": 0}
        """Invocations of each SLURM command by this backend (for benchmarks and tests)."""

    # -- submission ---------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        """Submit the job, in a job array with others arriving within the window."""
        item = _Pending(spec)
        options = self.resource_options(spec.resources, spec.priority)
        with self._lock:
            batch = self._open.get(options)
            leader = batch is None
            if batch is None:
                batch = self._open[options] = _Batch(options)
            batch.items.append(item)
            if len(batch.items) >= self.settings.max_array_size:
                del self._open[options]
                batch.full.set()
        if leader:
            batch.full.wait(self.settings.array_window_s)
            with self._lock:
                if self._open.get(options) is batch:
                    del self._open[options]
            self._submit_batch(batch)
        return item.done.result()

    def submit_many(self, specs: Sequence[JobSpec]) -> list[str | BackendError]:
        """Submit the jobs as job arrays (one per set of options, `max_array_size` tasks each).

        No window to wait for: every job is already here. An array that `sbatch` refuses
        fails its jobs only.
        """
        groups: dict[tuple[str, ...], list[_Pending]] = {}
        pending = [_Pending(spec) for spec in specs]
        for item in pending:
            options = self.resource_options(item.spec.resources, item.spec.priority)
            groups.setdefault(options, []).append(item)
        size = self.settings.max_array_size
        for options, items in groups.items():
            for start in range(0, len(items), size):
                self._submit_batch(_Batch(options, items[start : start + size]))
        results: list[str | BackendError] = []
        for item in pending:
            error = item.done.exception()
            results.append(error if isinstance(error, BackendError) else item.done.result())
        return results

    def resource_options(self, resources: Resources, priority: int = 0) -> tuple[str, ...]:
        """Translate resources, priority, and the location's partition and account to options."""
        minutes = max(1, math.ceil(resources.time_hours * 60))
        options = [
            f"--cpus-per-task={max(1, resources.cpu)}",
            f"--mem={max(1, math.ceil(resources.memory_gb * 1024))}M",
            f"--time={minutes}",
        ]
        if resources.gpu:
            options.append(f"--gres=gpu:{resources.gpu}")
        if self.settings.partition:
            options.append(f"--partition={self.settings.partition}")
        if self.settings.account:
            options.append(f"--account={self.settings.account}")
        options.extend(self.priority_options(priority))
        options.extend(self.settings.extra_args)
        return tuple(options)

    def priority_options(self, priority: int) -> list[str]:
        """Map a pipeline's priority to SLURM's (setting `slurm_priority`).

        `nice`: `--nice=<slurm_nice_base - priority>`, clamped to 0..MAX_NICE: a higher
        priority gets a smaller nice and so a higher job priority, and no value needs an
        operator's privilege (negative nice). `qos`: the QOS of the highest threshold of
        `slurm_qos_by_priority` at or below the priority (none below the lowest).
        """
        mode = self.settings.priority_mode
        if mode == "nice":
            return [f"--nice={min(MAX_NICE, max(0, self.settings.nice_base - priority))}"]
        if mode == "qos":
            qos = by_threshold(self.settings.qos_by_priority, priority)
            return [f"--qos={qos}"] if qos else []
        return []

    def limits(self) -> ResourceLimits:
        """Read the partition's limits and its largest node (cached for LIMITS_TTL_S).

        One reader at a time: the runs of a wave starting together read them once.
        """
        with self._limits_lock:
            cached = self._limits
            if cached is not None and time.monotonic() - cached[0] < LIMITS_TTL_S:
                return cached[1]
            limits = self._read_limits()
            self._limits = (time.monotonic(), limits)
            return limits

    def _read_limits(self) -> ResourceLimits:
        lines = self._run(["scontrol", "show", "partition", "--oneliner"]).splitlines()
        partitions = [scontrol_fields(line) for line in lines if line.strip()]
        wanted = self.settings.partition
        chosen = next(
            (p for p in partitions if (p.get("PartitionName") == wanted if wanted
                                       else p.get("Default") == "YES")),
            None,
        )  # fmt: skip
        if chosen is None:
            raise BackendError(
                f"SLURM has no partition {wanted!r}" if wanted else "SLURM has no default partition"
            )
        name = chosen["PartitionName"]
        nodes = self._run(
            ["sinfo", "--noheader", "--Node", f"--partition={name}", "--format=%c|%m"]
        )
        sizes = [line.split("|") for line in nodes.split() if "|" in line]
        node_cpus = max((int(c) for c, _ in sizes if c.isdigit()), default=None)
        node_mb = max((int(mb) for _, mb in sizes if mb.isdigit()), default=None)
        return ResourceLimits(
            cpu=smaller(node_cpus, partition_number(chosen.get("MaxCPUsPerNode"))),
            memory_gb=megabytes_to_gb(
                smaller(node_mb, partition_number(chosen.get("MaxMemPerNode")))
            ),
            time_hours=partition_hours(chosen.get("MaxTime", "UNLIMITED")),
            source=f"SLURM partition {name}",
        )

    def sbatch_command(
        self, batch_dir: Path, names: Sequence[str], options: Sequence[str]
    ) -> list[str]:
        """Return the sbatch argument list of one submission of `len(names)` runs."""
        argv = ["sbatch", "--parsable", "--export=NONE", f"--chdir={batch_dir}"]
        out = escape_pattern(batch_dir)
        if len(names) == 1:
            argv += [f"--job-name={names[0]}", f"--output={out}/0/slurm.out"]
        else:
            argv += [
                f"--job-name={names[0]}+{len(names) - 1}",
                f"--array=0-{len(names) - 1}",
                f"--output={out}/%a/slurm.out",
            ]
        return [*argv, *options, str(self._launcher()), str(batch_dir)]

    def _submit_batch(self, batch: _Batch) -> None:
        batch_dir = self.root / uuid.uuid4().hex[:16]
        names = [i.spec.name for i in batch.items]
        try:
            for index, item in enumerate(batch.items):
                write_task(batch_dir / str(index), item.spec)
            argv = self.sbatch_command(batch_dir, names, batch.options)
            job_name = argv[4].removeprefix("--job-name=")
            (batch_dir / "submission").write_text(f"{job_name}\n{len(names)}\n")
            markers = self.root / "names"
            markers.mkdir(parents=True, exist_ok=True)
            for index, name in enumerate(names):  # found again by `find` after a crash
                (markers / file_name(name)).write_text(f"{batch_dir}\n{index}\n")
            output = self._run(argv).strip()
            job_id = output.split(";")[0]  # --parsable: "id" or "id;cluster"
            if not job_id.isdigit():
                raise BackendError(f"sbatch printed {output!r}; expected a job id")
            ids = [job_id] if len(batch.items) == 1 else [
                f"{job_id}_{i}" for i in range(len(batch.items))
            ]  # fmt: skip
            (batch_dir / "job_id").write_text(job_id)
            by_id = self.root / "by-id"
            by_id.mkdir(parents=True, exist_ok=True)
            for index, (job, item) in enumerate(zip(ids, batch.items, strict=True)):
                (by_id / job).write_text(str(batch_dir / str(index)))
                with self._lock:
                    self._watched[job] = None
                item.done.set_result(job)
        except Exception as exc:
            error = exc if isinstance(exc, BackendError) else BackendError(f"sbatch failed: {exc}")
            _fail_waiting(batch.items, error)
        except BaseException as exc:  # Ctrl-C, exit: the waiting submitters see it as it is
            _fail_waiting(batch.items, exc)
            raise

    def _launcher(self) -> Path:
        path = self.root / "launch.sh"
        if not path.exists() or path.read_text() != LAUNCH_SCRIPT:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".launch.sh.{os.getpid()}")
            tmp.write_text(LAUNCH_SCRIPT)
            tmp.chmod(0o755)
            tmp.replace(path)
        return path

    def find(self, name: str) -> str | None:
        """Return the job (or array task) submitted under `name`, even if its id was lost."""
        try:
            batch_dir, index = (self.root / "names" / file_name(name)).read_text().split()
            job_name, count = (Path(batch_dir) / "submission").read_text().split("\n")[:2]
        except (OSError, ValueError):
            return None
        try:
            base = (Path(batch_dir) / "job_id").read_text().strip()
        except OSError:  # died between sbatch and writing its answer: ask accounting
            listed = self._run(
                ["sacct", "--noheader", "--parsable2", "--allocations", f"--name={job_name}",
                 "--starttime=now-7days", "--format=JobID"]
            ).split()  # fmt: skip
            if not listed:
                return None
            base = listed[-1].split("_")[0]
        return base if int(count) == 1 else f"{base}_{index}"

    # -- status ---------------------------------------------------------------------------

    def _unknown(self, job_id: str) -> str:
        return f"SLURM does not list job {job_id}"

    def _refresh(self) -> None:
        open_ids = self._open_ids()
        if not open_ids:
            self._refreshed = time.monotonic()
            return
        queued = parse_squeue(
            self._run(["squeue", "--me", "--noheader", "--array", "--format=%i|%T|%r|%P"])
        )
        if any(waits_for_nodes(info) for info in queued.values()):
            queued = self._mark_dead_partitions(queued)
        gone = [j for j in open_ids if j not in queued]
        finished = {}
        if gone:
            sacct = ["sacct", "--noheader", "--parsable2", f"--format={SACCT_FIELDS}"]
            finished = parse_sacct(self._run([*sacct, f"--jobs={','.join(gone)}"]))
        now = time.monotonic()
        with self._lock:
            for job_id in open_ids:
                info = queued.get(job_id)
                if info is None and job_id in finished:
                    info, complete = finished[job_id]
                    first_seen = self._incomplete.setdefault(job_id, now)
                    if (
                        info.state.finished
                        and not complete
                        and now - first_seen < ACCOUNTING_GRACE_S
                    ):
                        continue  # its .batch step (MaxRSS) is not in accounting yet
                    self._incomplete.pop(job_id, None)
                if info is not None:
                    self._watched[job_id] = info
            self._refreshed = time.monotonic()

    def _mark_dead_partitions(self, queued: dict[str, JobInfo]) -> dict[str, JobInfo]:
        """Mark jobs waiting for nodes stuck when every node of their partition is dead."""
        listing = self._run(["sinfo", "--noheader", "--Node", "--format=%P|%T"])
        alive: dict[str, bool] = {}
        for line in listing.split():
            partition, _, state = line.partition("|")
            partition = partition.rstrip("*")
            dead = state.lower().startswith(DEAD_NODE_STATES)
            alive[partition] = alive.get(partition, False) or not dead
        out = {}
        for job_id, info in queued.items():
            where = partition_of(info)
            dead = waits_for_nodes(info) and where in alive and not alive[where]
            why = f"{info.reason} (every node of partition {where} is down or drained)"
            out[job_id] = replace(info, stuck=True, reason=why) if dead else info
        return out

    # -- cancel and logs ----------------------------------------------------------------------

    def cancel(self, job_id: str) -> None:
        """`scancel` the job (a finished job is left alone by SLURM)."""
        self._run(["scancel", job_id])
        with self._lock:
            if job_id in self._watched:
                self._watched[job_id] = None  # read its end state at the next refresh
        self._refreshed = 0.0

    def logs(self, job_id: str) -> str:
        """Return the run's log file, then SLURM's own messages about the job."""
        try:
            task = Path((self.root / "by-id" / job_id).read_text())
        except OSError:
            raise BackendError(f"no SLURM job {job_id} submitted from {self.root}") from None
        parts = []
        meta = (task / "meta").read_bytes().split(b"\0")
        for path in (Path(meta[1].decode()), task / "slurm.out"):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def _run(self, argv: list[str]) -> str:
        command = argv[0]
        self.calls[command] = self.calls.get(command, 0) + 1
        try:
            result = subprocess.run(  # noqa: S603 - an argument list, no shell
                argv, capture_output=True, text=True, check=False, timeout=120
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackendError(f"`{command}` could not run: {exc}") from exc
        if result.returncode != 0:
            raise BackendError(
                f"`{command}` failed (exit {result.returncode}): {result.stderr.strip()[-500:]}"
            )
        return result.stdout


def _fail_waiting(items: Sequence[_Pending], error: BaseException) -> None:
    """Hand `error` to every submitter of a batch still waiting for its job id."""
    for item in items:
        if not item.done.done():
            item.done.set_exception(error)
