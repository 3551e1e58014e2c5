"""Container runtimes: how a run's command is wrapped for the container contract.

`apptainer` runs the image (a SIF cached by digest) with the contract's directories
bound under `/workflow`; `host` runs the same command directly, with the contract's
paths pointing at the host directories (development and tests). On a Kubernetes
location the cluster itself runs the image: `pod_container` gives the command, the
environment and the mounts of the pod's container, with the same `/workflow` view.
All return an argument list and an environment, never a shell string. The contract's
variables reach an Apptainer container through `APPTAINERENV_<NAME>`, which Apptainer
passes in even with `--cleanenv` and never parses, so config values cannot be
reinterpreted on the way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

CONTAINER_ROOT = Path("/workflow")
"""Where the contract's directories appear inside a container."""
CONTRACT_DIRS: tuple[tuple[str, bool], ...] = (
    ("input", True),
    ("workspace", False),
    ("output", False),
    ("config", True),
    ("logs", False),
)
"""The contract's top-level directories and whether the software may only read them."""
BASE_ENV_NAMES = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
"""Variables of the submitting process a host-runtime job inherits; nothing else leaks in."""


class RuntimeConfigError(ValueError):
    """A runtime cannot wrap a job as configured (e.g. no image digest or tag)."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A container image: its repository, and the digest that pins it (tag as fallback)."""

    repository: str
    """e.g. `ghcr.io/ccatobs/chai-calibration`."""
    digest: str | None = None
    """`sha256:<hex>`."""
    tag: str | None = None

    @property
    def reference(self) -> str:
        """The pull reference, by digest whenever one is known."""
        repo = self.repository.removeprefix("docker://")
        if self.digest:
            return f"docker://{repo}@{self.digest}"
        if self.tag:
            return f"docker://{repo}:{self.tag}"
        raise RuntimeConfigError(f"image {self.repository!r} has neither a digest nor a tag")

    @property
    def oci_reference(self) -> str:
        """The reference a container engine pulls (`repo@sha256:...`, tag as fallback)."""
        return self.reference.removeprefix("docker://")

    def sif_name(self) -> str:
        """File name of the cached SIF: repository name and digest (or tag)."""
        name = self.repository.rstrip("/").rsplit("/", 1)[-1]
        pin = (self.digest or f"tag-{self.tag}").replace(":", "-")
        return f"{name}_{pin}.sif"


@dataclass(frozen=True, slots=True)
class ContainerJob:
    """A run's command and where its contract directories are on the host."""

    command: tuple[str, ...]
    """The rendered command template."""
    host_root: Path
    """The run's workflow directory on the host (holds input/, workspace/, ...)."""
    output_dir: str
    """Relative to the root: `workspace/<step>` or `output`."""
    env: Mapping[str, str] = field(default_factory=dict)
    """The step config's environment variables."""
    image: ImageRef | None = None
    gpu: int = 0


def contract_env(root: Path, output_dir: str) -> dict[str, str]:
    """Return the contract's variables for a workflow directory at `root`."""
    return {
        "WORKFLOW_DIR": str(root),
        "WORKFLOW_OUTPUT_DIR": str(root / output_dir),
        "WORKFLOW_MANIFEST": str(root / "config" / "manifest.json"),
    }


def host_command(job: ContainerJob) -> tuple[list[str], dict[str, str]]:
    """Argument list and environment that run the command directly on the host."""
    env = {k: os.environ[k] for k in BASE_ENV_NAMES if k in os.environ}
    env.update(job.env)
    env.update(contract_env(job.host_root, job.output_dir))
    return list(job.command), env


def sif_path(image: ImageRef, cache_dir: Path) -> Path:
    """Where the image's SIF lives in the cache."""
    return cache_dir / image.sif_name()


def apptainer_pull_command(image: ImageRef, cache_dir: Path) -> list[str]:
    """Argument list that fetches the image, pinned by digest, into the SIF cache."""
    return ["apptainer", "pull", str(sif_path(image, cache_dir)), image.reference]


def apptainer_command(job: ContainerJob, cache_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Argument list and environment of `apptainer exec` under the container contract."""
    if job.image is None:
        raise RuntimeConfigError("the apptainer runtime needs an image")
    argv = ["apptainer", "exec", "--cleanenv", "--no-home", "--pwd", str(CONTAINER_ROOT)]
    for name, read_only in CONTRACT_DIRS:
        bind = f"{job.host_root / name}:{CONTAINER_ROOT / name}"
        argv += ["--bind", f"{bind}:ro" if read_only else bind]
    if job.gpu > 0:
        argv.append("--nv")
    argv.append(str(sif_path(job.image, cache_dir)))
    argv += job.command
    env = {k: os.environ[k] for k in BASE_ENV_NAMES if k in os.environ}
    inner = dict(job.env) | contract_env(CONTAINER_ROOT, job.output_dir)
    env.update({f"APPTAINERENV_{k}": v for k, v in inner.items()})
    return argv, env


@dataclass(frozen=True, slots=True)
class Mount:
    """A host directory that appears at `container_path` inside the container."""

    host_path: Path
    container_path: str
    read_only: bool


def contract_mounts(job: ContainerJob) -> tuple[Mount, ...]:
    """Return a run's contract directories as container mounts (input, config read-only)."""
    return tuple(
        Mount(job.host_root / name, str(CONTAINER_ROOT / name), read_only)
        for name, read_only in CONTRACT_DIRS
    )


def pod_container(job: ContainerJob) -> tuple[list[str], dict[str, str]]:
    """Command and environment of the container when the cluster runs the image itself."""
    if job.image is None:
        raise RuntimeConfigError("a container job needs an image")
    return list(job.command), dict(job.env) | contract_env(CONTAINER_ROOT, job.output_dir)
