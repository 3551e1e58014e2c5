"""The files one SLURM submission writes: the fixed batch script and each task's values.

Every job runs the same `launch.sh`, which reads the run's command, environment, working
directory and log path from files of NUL-separated values (bash `mapfile`): data never
becomes shell code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infra.backends.base import BackendError, JobSpec

LAUNCH_SCRIPT = """#!/bin/bash
# Written by ccat-wm (SLURM backend). Runs the command stored for this job or array task.
# $1 is the submission's directory; the task's files hold NUL-separated values (data,
# never shell code): meta = working directory and log file, env = NAME=VALUE, argv.
task="$1/${SLURM_ARRAY_TASK_ID:-0}"
mapfile -d '' -t meta <"$task/meta" || exit 125
mapfile -d '' -t envs <"$task/env" || exit 125
mapfile -d '' -t argv <"$task/argv" || exit 125
cd -- "${meta[0]}" || exit 125
# The log is in a directory earlier jobs could write: never append through a link.
if [[ -L ${meta[1]} || ( -e ${meta[1]} && ! -f ${meta[1]} ) ]]; then
    echo "ccat-wm: the log ${meta[1]} is not a regular file; not used" >&2; exit 125
fi
exec >>"${meta[1]}" 2>&1
for kv in "${envs[@]}"; do export -- "$kv"; done
exec -- "${argv[@]}"
"""


def write_task(task_dir: Path, spec: JobSpec) -> None:
    """Write one run's command, environment, working directory and log path as NUL lists."""
    for value in (*spec.argv, *spec.env, *spec.env.values(), str(spec.cwd), str(spec.log_path)):
        if "\0" in value:
            raise BackendError(f"job {spec.name}: a NUL character in {value!r} cannot be passed")
    task_dir.mkdir(parents=True, exist_ok=True)
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    (task_dir / "argv").write_bytes(_nul_list(spec.argv))
    (task_dir / "env").write_bytes(_nul_list(f"{k}={v}" for k, v in spec.env.items()))
    (task_dir / "meta").write_bytes(_nul_list([str(spec.cwd), str(spec.log_path)]))


def file_name(job_name: str) -> str:
    """Return a job name usable as a file name."""
    return job_name.replace("/", "_")


def _nul_list(values: Any) -> bytes:
    return b"".join(str(v).encode() + b"\0" for v in values)


def escape_pattern(path: Path) -> str:
    """Escape `%` for sbatch's filename patterns."""
    return str(path).replace("%", "%%")
