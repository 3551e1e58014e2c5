"""Container runtimes: how a run's command is wrapped for the container contract.

One definition of what a container sees (`contract_mounts`: the run's directories under
`/workflow`, input and config read-only; `container_env`: the step's variables and the
contract's), rendered by each runtime:

- `apptainer`: `apptainer exec` of the image's SIF (pulled into a cache by digest, see
  `infra.sif_cache`), with `--bind` for each mount. The variables reach the container
  through `APPTAINERENV_<NAME>`, which Apptainer passes in even with `--cleanenv` and
  never parses, so config values cannot be reinterpreted on the way.
- `podman`: `podman run` of the OCI image by digest, with `--volume` for each mount,
  `--network none`, and `--env NAME` (the value comes from podman's own environment, so
  no value is parsed, and none shows in the process table).
- `host`: the same command directly, the contract's paths pointing at the host
  directories (development and tests).

On a Kubernetes location the cluster itself runs the image: `pod_container` gives the
command and environment of the pod's container, with the same mounts. All return an
argument list and an environment, never a shell string.

What an image is (`ImageRef`): an OCI image (`docker://repo@sha256:...` for Apptainer,
`repo@sha256:...` for podman and Kubernetes), or a SIF, pushed to an OCI registry with
ORAS (`oras://repo@sha256:...`) or kept as a file (its digest is the file's SHA-256).
Podman and Kubernetes run OCI images only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
BASE_ENV_NAMES = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "MPLCONFIGDIR")
"""Variables of the submitting process a job inherits (the runtime's own process, or a
host-runtime command); nothing else leaks in. `MPLCONFIGDIR` (which `ccat-wm` sets to
`$CCAT_WM_HOME/matplotlib`) keeps software that plots from writing its font cache into
the user's home directory."""
PID_NAMESPACE = ("unshare", "--pid", "--fork", "--kill-child", "--mount-proc")
"""A job's own PID namespace whose processes all end when its first one does."""
MOUNT_SEPARATORS = (":", ",")
"""Characters that split a bind specification in Apptainer's `--bind` and podman's
`--volume` grammar; a host path holding one cannot be bound."""


class RuntimeConfigError(ValueError):
    """A runtime cannot wrap a job as configured (e.g. no image digest or tag)."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A container image: what it is, where it is, and the digest that pins it."""

    repository: str
    """e.g. `ghcr.io/ccatobs/chai-calibration`, or `localhost/chai-software` (a podman
    image built on the host)."""
    digest: str | None = None
    """`sha256:<hex>`: the OCI manifest digest, or a SIF file's own SHA-256."""
    tag: str | None = None
    """Used only when there is no digest (development)."""
    sif: bool = False
    """An Apptainer SIF (pushed to a registry with ORAS, or `sif_path`), not an OCI image."""
    sif_path: str | None = None
    """A SIF file instead of a registry."""

    def _pin(self) -> str:
        """Return `repo@digest`, or `repo:tag` when there is no digest."""
        repo = self.repository.removeprefix("docker://").removeprefix("oras://")
        if self.digest:
            return f"{repo}@{self.digest}"
        if self.tag:
            return f"{repo}:{self.tag}"
        raise RuntimeConfigError(f"image {self.repository!r} has neither a digest nor a tag")

    @property
    def reference(self) -> str:
        """What Apptainer pulls: `docker://` (OCI) or `oras://` (SIF in a registry)."""
        if self.sif_path:
            return self.sif_path
        scheme = "oras" if self.sif else "docker"
        return f"{scheme}://{self._pin()}"

    @property
    def oci_reference(self) -> str:
        """What podman and Kubernetes run (`repo@sha256:...`); refused for a SIF."""
        if self.sif:
            raise RuntimeConfigError(
                f"image {self.repository or self.sif_path!r} is a SIF; podman and Kubernetes "
                "run OCI images only (publish an OCI image as a new version, or run the "
                "step at an apptainer location)"
            )
        return self._pin()

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
    cpu: int = 1
    memory_gb: float | None = None
    name: str = ""
    """The job's name (podman names the container after it)."""


@dataclass(frozen=True, slots=True)
class Mount:
    """A host directory that appears at `container_path` inside the container."""

    host_path: Path
    container_path: str
    read_only: bool


def contract_env(root: Path, output_dir: str) -> dict[str, str]:
    """Return the contract's variables for a workflow directory at `root`."""
    return {
        "WORKFLOW_DIR": str(root),
        "WORKFLOW_OUTPUT_DIR": str(root / output_dir),
        "WORKFLOW_MANIFEST": str(root / "config" / "manifest.json"),
    }


def container_env(job: ContainerJob) -> dict[str, str]:
    """Return what the software's environment is in a container: the step's and the contract's."""
    return dict(job.env) | contract_env(CONTAINER_ROOT, job.output_dir)


def contract_mounts(job: ContainerJob) -> tuple[Mount, ...]:
    """Return a run's contract directories as container mounts (input, config read-only)."""
    mounts = tuple(
        Mount(job.host_root / name, str(CONTAINER_ROOT / name), read_only)
        for name, read_only in CONTRACT_DIRS
    )
    for mount in mounts:
        bad = [c for c in MOUNT_SEPARATORS if c in str(mount.host_path)]
        if bad:
            raise RuntimeConfigError(
                f"cannot bind {mount.host_path} into a container: the path holds "
                f"{' and '.join(repr(c) for c in bad)}, which split a bind specification; "
                "expected a processing location path without ':' or ','"
            )
    return mounts


def _base_env() -> dict[str, str]:
    return {k: os.environ[k] for k in BASE_ENV_NAMES if k in os.environ}


def host_command(job: ContainerJob) -> tuple[list[str], dict[str, str]]:
    """Argument list and environment that run the command directly on the host."""
    env = _base_env()
    env.update(job.env)
    env.update(contract_env(job.host_root, job.output_dir))
    return list(job.command), env


def sif_path(image: ImageRef, cache_dir: Path) -> Path:
    """Where the image's SIF is: its own file, or its place in the cache."""
    if image.sif_path:
        return Path(image.sif_path)
    return cache_dir / image.sif_name()


def apptainer_pull_command(image: ImageRef, destination: Path) -> list[str]:
    """Argument list that fetches the image, pinned by digest, into `destination` (a SIF)."""
    return ["apptainer", "pull", "--disable-cache", str(destination), image.reference]


def apptainer_command(job: ContainerJob, image_file: Path) -> tuple[list[str], dict[str, str]]:
    """Argument list and environment of `apptainer exec` under the container contract.

    `--containall` (which implies `--contain`, `--cleanenv` and `--ipc --pid`) leaves out
    the host's home, /tmp and the rest that Apptainer binds by default; `--no-mount` also
    drops the system bind paths (`/etc/localtime`, `/etc/hosts`, `bind path` in
    apptainer.conf). `--net --network none` gives the container no network.
    """
    argv = [
        "apptainer", "exec", "--containall", "--no-home", "--no-mount", "bind-paths",
        "--net", "--network", "none", "--pwd", str(CONTAINER_ROOT),
    ]  # fmt: skip
    for mount in contract_mounts(job):
        bind = f"{mount.host_path}:{mount.container_path}"
        argv += ["--bind", f"{bind}:ro" if mount.read_only else bind]
    if job.gpu > 0:
        argv.append("--nv")
    argv.append(str(image_file))
    argv += job.command
    env = _base_env()
    env.update({f"APPTAINERENV_{k}": v for k, v in container_env(job).items()})
    return argv, env


@dataclass(frozen=True, slots=True)
class PodmanOptions:
    """Host-specific options of podman: a location's settings, with working defaults.

    The defaults suit Debian's podman 4.3 run as root (runc and cgroupfs, explicit
    ulimits; with crun, or without the ulimits, container creation failed there).
    """

    executable: str = "podman"
    oci_runtime: str | None = "runc"
    cgroup_manager: str | None = "cgroupfs"
    ulimits: Mapping[str, str] = field(
        default_factory=lambda: {"nofile": "1024:1024", "nproc": "4096:4096"}
    )
    pull: str = "missing"
    """`missing` (pull by digest unless present), `never`, `always` or `newer`."""
    gpu_device: str = "nvidia.com/gpu=all"
    """The CDI device a GPU step gets (needs the NVIDIA Container Toolkit's CDI spec)."""
    extra_args: tuple[str, ...] = ()
    """More `podman run` options, each `--name=value`."""
    pid_namespace: bool = False
    """Start podman in its own PID namespace with its own /proc (`unshare --pid --fork
    --kill-child --mount-proc`), so that `conmon` and the container stay in the job's
    process tree: the batch system accounts their memory and CPU, and a killed job takes
    them with it. Set for SLURM jobs run as root (the local backend makes its own)."""

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> PodmanOptions:
        """Options from a location's settings (`podman_*`); unset ones keep the defaults."""
        defaults = cls()
        ulimits = settings.get("podman_ulimits")
        return cls(
            executable=settings.get("podman_executable") or defaults.executable,
            oci_runtime=settings.get("podman_oci_runtime", defaults.oci_runtime),
            cgroup_manager=settings.get("podman_cgroup_manager", defaults.cgroup_manager),
            ulimits=defaults.ulimits if ulimits is None else dict(ulimits),
            pull=settings.get("podman_pull") or defaults.pull,
            gpu_device=settings.get("podman_gpu_device") or defaults.gpu_device,
            extra_args=tuple(settings.get("podman_extra_args") or ()),
        )


def podman_command(job: ContainerJob, options: PodmanOptions) -> tuple[list[str], dict[str, str]]:
    """Argument list and environment of `podman run` under the container contract.

    The container gets the image's root file system read-only (`--read-only`, with
    tmpfs on /tmp, /var/tmp and /run) and the contract's mounts, no network, no host
    environment (`--env NAME` for each variable it gets, valued from podman's own
    environment), and the step's CPUs and memory as cgroup limits. The time limit is
    the backend's (SLURM `--time`); a GPU step gets the CDI device `gpu_device`.
    """
    if job.image is None:
        raise RuntimeConfigError("the podman runtime needs an image")
    argv = [*PID_NAMESPACE] if options.pid_namespace else []
    argv.append(options.executable)
    if options.oci_runtime:
        argv += ["--runtime", options.oci_runtime]
    if options.cgroup_manager:
        argv.append(f"--cgroup-manager={options.cgroup_manager}")
    argv += ["run", "--rm", "--replace", f"--pull={options.pull}", "--network=none"]
    argv += ["--read-only", "--log-driver=none", f"--workdir={CONTAINER_ROOT}"]
    if job.name:
        argv.append(f"--name={job.name}")
    for name, value in options.ulimits.items():
        argv.append(f"--ulimit={name}={value}")
    argv.append(f"--cpus={job.cpu}")
    if job.memory_gb:
        argv.append(f"--memory={max(6, round(job.memory_gb * 1024))}m")
    if job.gpu > 0:
        argv.append(f"--device={options.gpu_device}")
    argv += options.extra_args
    for mount in contract_mounts(job):
        argv.append(
            f"--volume={mount.host_path}:{mount.container_path}:{'ro' if mount.read_only else 'rw'}"
        )
    env = _base_env()
    for name, value in container_env(job).items():
        if name in env:  # podman itself needs its PATH, HOME...: the value goes in argv
            argv.append(f"--env={name}={value}")
        else:
            argv.append(f"--env={name}")
            env[name] = value
    argv.append(job.image.oci_reference)
    argv += job.command
    return argv, env


def pod_container(job: ContainerJob) -> tuple[list[str], dict[str, str]]:
    """Command and environment of the container when the cluster runs the image itself."""
    if job.image is None:
        raise RuntimeConfigError("a container job needs an image")
    return list(job.command), container_env(job)
