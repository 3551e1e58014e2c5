"""Reading what SLURM prints: squeue and sacct rows, partitions, memory and durations.

Plain functions over text (no process is run here), so each is tested on SLURM's own
output. A job's state comes from `squeue` while it is queued or running and from
`sacct` once it has ended; metrics are read from accounting (see `infra.backends.slurm`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from infra.backends.base import JobInfo, JobState, exit_reason

GIB = 1024**3
STUCK_REASONS = frozenset(
    {
        "PartitionConfig", "PartitionTimeLimit", "PartitionNodeLimit", "MaxMemPerLimit",
        "InvalidAccount", "InvalidQOS", "AccountNotAllowed", "QOSNotAllowed",
        "BadConstraints", "QOSMaxWallDurationPerJobLimit", "QOSMaxCpuPerJobLimit",
        "QOSMaxMemoryPerJob", "QOSMaxNodePerJobLimit", "QOSMaxGRESPerJob",
    }
)  # fmt: skip
"""Reasons a queued job waits that only a change to the cluster, its partition, account or
QOS can clear: its request exceeds a limit, or it may never run under its association."""
NODE_REASONS = ("ReqNodeNotAvail", "Nodes required for job are DOWN, DRAINED")
"""Reasons (short and long form) of a job waiting for nodes that are unavailable: stuck
when every node of its partition is down, drained or failed."""
DEAD_NODE_STATES = ("down", "drain", "fail", "maint", "future", "inval")
FAILURE_STATES = frozenset(
    {"OUT_OF_MEMORY", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
)
"""SLURM end states that are the cluster's doing: the run fails with the state as reason."""
QUEUED_STATES = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
)
RUNNING_STATES = frozenset(
    {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "SUSPENDED", "STOPPED", "RESIZING"}
)
SACCT_FIELDS = "JobID,State,ExitCode,ElapsedRaw,TotalCPU,MaxRSS,ReqMem"


def parse_squeue(output: str) -> dict[str, JobInfo]:
    """Parse `squeue --format=%i|%T|%r|%P` lines into job states (queued or running).

    A queued job's reason is kept, with its partition (`reason [partition P]`) when
    listed; a reason in STUCK_REASONS marks it stuck.
    """
    jobs = {}
    for line in output.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2:
            continue
        job_id, state = parts[0], parts[1]
        if state in QUEUED_STATES:
            reason = parts[2] if len(parts) > 2 else None
            if reason and len(parts) > 3 and parts[3]:
                reason = f"{reason} [partition {parts[3]}]"
            stuck = reason is not None and reason.split(maxsplit=1)[0].rstrip(",") in STUCK_REASONS
            jobs[job_id] = JobInfo(JobState.PENDING, reason=reason, stuck=stuck)
        elif state in RUNNING_STATES:
            jobs[job_id] = JobInfo(JobState.RUNNING)
    return jobs


def parse_sacct(output: str) -> dict[str, tuple[JobInfo, bool]]:
    """Parse `sacct --parsable2 --format=SACCT_FIELDS` into job states.

    Each state comes with whether accounting is complete: slurmdbd records the `.batch`
    step, and its MaxRSS, a moment after the job itself.
    """
    rows: dict[str, dict[str, str]] = {}
    batch_rss: dict[str, int] = {}
    batch_state: dict[str, str] = {}
    names = SACCT_FIELDS.split(",")
    for line in output.splitlines():
        values = line.split("|")
        if len(values) != len(names):
            continue
        row = dict(zip(names, values, strict=True))
        job_id, _, step = row["JobID"].partition(".")
        if step == "batch":
            if row["MaxRSS"]:
                batch_rss[job_id] = parse_memory(row["MaxRSS"])
            batch_state[job_id] = row["State"].split()[0]
        elif not step:
            rows[job_id] = row
    jobs = {}
    for job_id, row in rows.items():
        info = _job_info(row, batch_rss.get(job_id, 0), batch_state.get(job_id, ""))
        # A job killed by SIGKILL may have been over its memory: MaxRSS and ReqMem decide
        # (ReqMem reads `16?` until slurmdbd has the job's final record).
        complete = job_id in batch_state and (
            info.exit_code != -9 or (job_id in batch_rss and parse_memory(row["ReqMem"]) > 0)
        )
        jobs[job_id] = (info, complete)
    return jobs


def _job_info(row: Mapping[str, str], max_rss: int, batch_state: str) -> JobInfo:
    state = row["State"].split()[0]
    code, _, signal = row["ExitCode"].partition(":")
    exit_code = -int(signal) if signal.isdigit() and int(signal) else int(code or 0)
    metrics: dict[str, Any] = {
        "exit_code": exit_code,
        "wall_time_s": float(row["ElapsedRaw"] or 0),
        "cpu_hours": parse_duration(row["TotalCPU"]) / 3600.0,
        "peak_memory_gb": max_rss / GIB if max_rss else None,
    }
    if state in QUEUED_STATES:
        return JobInfo(JobState.PENDING)
    if state in RUNNING_STATES:
        return JobInfo(JobState.RUNNING, wall_time_s=metrics["wall_time_s"])
    requested = parse_memory(row["ReqMem"])
    if batch_state == "OUT_OF_MEMORY" or (exit_code == -9 and requested and max_rss > requested):
        state = "OUT_OF_MEMORY"
    if state == "COMPLETED" and exit_code == 0:
        return JobInfo(JobState.COMPLETED, **metrics)
    if state == "CANCELLED":
        return JobInfo(JobState.CANCELLED, **metrics, reason="cancelled in SLURM")
    if state in FAILURE_STATES:
        return JobInfo(JobState.FAILED, **metrics, reason=state)
    return JobInfo(JobState.FAILED, **metrics, reason=exit_reason(exit_code))


_MEMORY = re.compile(r"^([0-9.]+)([KMGTP]?)[nc]?$")


def parse_memory(value: str) -> int:
    """Bytes of a SLURM memory figure (`320676K`, `50M`, `1.5G`, `4000Mn`); 0 if empty."""
    match = _MEMORY.match(value.strip())
    if not match:
        return 0
    number, unit = match.groups()
    return int(float(number) * 1024 ** ("BKMGTP".index(unit) if unit else 0))


def parse_duration(value: str) -> float:
    """Seconds of a SLURM duration (`[D-][HH:]MM:SS[.mmm]`); 0 if empty."""
    value = value.strip()
    if not value:
        return 0.0
    days, _, clock = value.rpartition("-")
    parts = [float(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    hours, minutes, seconds = parts
    return (float(days) if days else 0.0) * 86400 + hours * 3600 + minutes * 60 + seconds


def scontrol_fields(line: str) -> dict[str, str]:
    """Parse `scontrol show ... --oneliner` output (`Key=Value` pairs) into a dict."""
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


def partition_number(value: str | None) -> int | None:
    """Return a partition limit's number (None: not a number, e.g. UNLIMITED)."""
    return int(value) if value and value.isdigit() else None


def smaller(a: int | None, b: int | None) -> int | None:
    """Return the smaller of two limits, either of which may be unknown (None)."""
    known = [v for v in (a, b) if v is not None]
    return min(known) if known else None


def megabytes_to_gb(megabytes: int | None) -> float | None:
    """Return GiB of a figure in MiB (None stays None)."""
    return megabytes / 1024 if megabytes is not None else None


def partition_hours(max_time: str) -> float | None:
    """Hours of a partition's MaxTime (`UNLIMITED`/`INFINITE`: None)."""
    if max_time.upper() in {"UNLIMITED", "INFINITE", "NONE", ""}:
        return None
    return parse_duration(max_time) / 3600.0


def waits_for_nodes(info: JobInfo) -> bool:
    """Say whether a queued job waits for nodes that are unavailable."""
    return info.reason is not None and info.reason.startswith(NODE_REASONS)


def partition_of(info: JobInfo) -> str | None:
    """Return the partition a queued job's reason names (`reason [partition P]`)."""
    match = re.search(r"\[partition ([^\]]+)\]$", info.reason or "")
    return match.group(1) if match else None
