"""The manifest and the job of one run (docs/concepts.md section 4): what the software is told.

The command template is rendered argument by argument: `{name}` placeholders are
replaced by the config parameter's value and nothing else is interpreted, so a value
such as `$(touch /tmp/pwned)` or `; rm -rf` reaches the program as one literal
argument. The runtime wraps the rendered command (apptainer, podman or host), the result
is an argument list, and the run's `execution_command` stores it with the environment
the software gets (`NAME=value ... argv`, secret values withheld).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import string
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from ccat_ops_db import models as m
from ccat_wm.errors import ConfigurationError
from ccat_wm.execution.context import RunContext
from ccat_wm.execution.layout import RunLayout
from ccat_wm.execution.secrets import WITHHELD, mask_passwords, split_secrets
from ccat_wm.execution.sizing import configured_resources
from ccat_wm.execution.staging import StagedInput
from ccat_wm.settings import Settings
from infra.backends import JobSpec, Resources
from infra.runtimes import (
    CONTAINER_ROOT,
    ContainerJob,
    ImageRef,
    Mount,
    PodmanOptions,
    RuntimeConfigError,
    apptainer_command,
    contract_mounts,
    host_command,
    pod_container,
    podman_command,
    sif_path,
)

SIF_CACHE = ".sif-cache"


def render_command(template: Sequence[str], parameters: Mapping[str, Any]) -> list[str]:
    """Replace `{name}` placeholders in each argument by the parameter's value."""
    argv = []
    for index, arg in enumerate(template):
        parts = []
        for literal, field, spec, conversion in string.Formatter().parse(arg):
            parts.append(literal)
            if field is None:
                continue
            if field not in parameters:
                raise ConfigurationError(
                    f"command[{index}] {arg!r} uses {{{field}}}, which is not a config "
                    f"parameter; known parameters: {', '.join(sorted(parameters)) or 'none'}"
                )
            value = parameters[field]
            value = repr(value) if conversion == "r" else value
            parts.append(format(value, spec or ""))
        argv.append("".join(parts))
    return argv


def seen_path(path: Path, layout: RunLayout, runtime: m.Runtime) -> str:
    """Return a host path under the run's root as the software sees it (container or host)."""
    if runtime is not m.Runtime.HOST:
        return str(CONTAINER_ROOT / path.relative_to(layout.root))
    return str(path)


def build_manifest(ctx: RunContext, staged: Sequence[StagedInput]) -> dict[str, Any]:
    """Return the run's `config/manifest.json` content."""
    layout, runtime = ctx.layout, ctx.location.runtime
    inputs = []
    for item in staged:
        entry: dict[str, Any] = {
            "path": seen_path(item.host_path, layout, runtime),
            "kind": item.kind,
            "checksum": item.checksum,
            "name": item.name,
            "metadata": item.metadata,
        }
        if item.kind == "product":
            entry |= {"data_product_type": item.data_product_type, "step": item.step}
        inputs.append(entry)
    return {
        "run_id": ctx.run_id,
        "pipeline": ctx.pipeline,
        "step": ctx.step,
        "sub_group_key": ctx.sub_group_key,
        "software": {"name": ctx.software, "version": ctx.version_tag, "digest": ctx.digest},
        "parameters": ctx.parameters,
        "output_dir": seen_path(layout.output, layout, runtime),
        "inputs": inputs,
    }


def write_manifest(layout: RunLayout, manifest: Mapping[str, Any]) -> None:
    """Write the manifest atomically (indented, keys sorted, UTF-8).

    orjson rather than `json`: with indentation the standard library encodes in pure
    Python, which took over a millisecond per run for the metadata of the inputs.
    """
    tmp = layout.manifest.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    tmp.replace(layout.manifest)


def sif_cache_dir(ctx: RunContext, settings: Settings) -> Path:
    """Return the location's image cache (its setting, SIF_CACHE_DIR, or under its path)."""
    configured = ctx.location.settings.get("sif_cache_dir")
    if configured:
        return Path(configured)
    return settings.sif_cache_dir or ctx.location.path / SIF_CACHE


def image_ref(ctx: RunContext) -> ImageRef:
    """Return the image a run executes: its software version's, pinned by digest."""
    return ImageRef(
        ctx.repository,
        ctx.digest,
        ctx.version_tag,
        sif=ctx.image_kind is m.ImageKind.SIF,
        sif_path=ctx.sif_path,
    )


def build_job(
    ctx: RunContext, settings: Settings, attempt: int, request: Resources | None = None
) -> JobSpec:
    """Return the backend job of one attempt: wrapped command, environment and log file.

    `request`: what the attempt asks for (`sizing.attempt_request`); default the step's
    configured resources.
    """
    layout = ctx.layout
    ref = image_ref(ctx)
    req = request or configured_resources(ctx.resources)
    job = ContainerJob(
        command=tuple(render_command(ctx.command_template, ctx.parameters)),
        host_root=layout.root,
        output_dir=layout.output_rel,
        env=ctx.environment,
        image=ref,
        gpu=req.gpu,
        cpu=req.cpu,
        memory_gb=req.memory_gb,
        name=job_name(ctx, attempt),
    )
    wrapped = _wrap(ctx, settings, job, ref)
    return JobSpec(
        name=job_name(ctx, attempt),
        argv=tuple(wrapped.argv),
        env=wrapped.env,
        cwd=layout.root,
        log_path=layout.attempt_log(attempt),
        resources=req,
        image=wrapped.image,
        mounts=wrapped.mounts,
        shown_env=tuple(dict.fromkeys(wrapped.shown)),
        priority=ctx.priority,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Wrapped:
    """A job's command wrapped for the location's runtime."""

    argv: list[str]
    env: dict[str, str]
    shown: list[str]
    """The environment variables the recorded command shows (not their values)."""
    image: str | None = None
    """The image the backend runs itself (Kubernetes); None when the command runs it."""
    mounts: tuple[Mount, ...] = ()


def _wrap(ctx: RunContext, settings: Settings, job: ContainerJob, ref: ImageRef) -> _Wrapped:
    """Wrap the job's command for the location's backend and container runtime."""
    runtime = ctx.location.runtime
    try:
        if ctx.location.backend is m.Backend.KUBERNETES:
            # The cluster runs the image itself, with the same /workflow view as Apptainer.
            argv, env = pod_container(job)
            return _Wrapped(argv, env, list(env), ref.oci_reference, contract_mounts(job))
        if runtime is m.Runtime.APPTAINER:
            argv, env = apptainer_command(job, sif_path(ref, sif_cache_dir(ctx, settings)))
            return _Wrapped(argv, env, [k for k in env if k.startswith("APPTAINERENV_")])
        if runtime is m.Runtime.PODMAN:
            options = PodmanOptions.from_settings(ctx.location.settings)
            if ctx.location.backend is m.Backend.SLURM and os.geteuid() == 0:
                options = dataclasses.replace(options, pid_namespace=True)
            argv, env = podman_command(job, options)
            return _Wrapped(argv, env, [k for k in env if f"--env={k}" in argv])
        if runtime is m.Runtime.HOST:
            argv, env = host_command(job)
            # Programs installed next to this interpreter (the examples) are found first.
            env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
            shown = [*ctx.environment, "WORKFLOW_DIR", "WORKFLOW_OUTPUT_DIR", "WORKFLOW_MANIFEST"]
            return _Wrapped(argv, env, shown)
    except RuntimeConfigError as exc:
        raise ConfigurationError(f"location {ctx.location.name!r}: {exc}") from None
    raise ConfigurationError(
        f"location {ctx.location.name!r} has runtime {runtime.value!r}; "
        "expected apptainer, podman or host"
    )


def job_name(ctx: RunContext, attempt: int) -> str:
    """Name of an attempt's backend job: run id, attempt and step (found again after a crash)."""
    return f"ccat-run-{ctx.run_id}-a{attempt}-{ctx.step}"


def display_command(spec: JobSpec, secret_env: Sequence[str] = ()) -> str:
    """Return the command as stored in `execution_command` (for reading, never running).

    The environment the software gets comes first, as `NAME=value` (a secret's value as
    `<withheld>`, a password inside a URL or DSN value too; see `execution.secrets`),
    then the argument list (passwords in URLs masked); a job whose image the backend
    runs itself (Kubernetes) reads `NAME=value ... <image> <command>`.
    """
    shown = {k: spec.env[k] for k in spec.shown_env if k in spec.env}
    public, _ = split_secrets(shown, secret_env)
    assignments = [f"{k}={public[k]}" for k in shown if k in public]
    assignments += [f"{k}={WITHHELD}" for k in shown if k not in public]
    image = [spec.image] if spec.image else []
    return shlex.join([*assignments, *image, *(mask_passwords(a) for a in spec.argv)])
