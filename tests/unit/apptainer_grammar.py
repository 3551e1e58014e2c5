"""The command-line grammar of Apptainer 1.3 (`apptainer exec`, `apptainer pull`), as
documented by the project, to check the argument lists we build without the binary.

Sources (Apptainer v1.3.6, the 1.3 series HPC sites run):
- usage lines, docs/content.go: `exec [exec options...] <container> <command>` and
  `pull [pull options...] [output file] <URI>`; URIs `docker://` (an OCI image that
  Apptainer converts) and `oras://` (a SIF in an OCI registry); https://apptainer.org/
  docs/user/1.3/cli/apptainer_exec.html and .../apptainer_pull.html render the same text;
- the options, cmd/internal/cli/action_flags.go (every `exec` option: its name, short
  form and whether it takes a value, i.e. its default is not a bool) and
  cmd/internal/cli/pull.go (the `pull` options, and `--force` from apptainer.go);
- the bind grammar, the `--bind` usage: `src[:dest[:opts]]`, opts `ro` or `rw`,
  several specs comma-separated;
- `--net` with `--network none`: a network namespace with loopback only; Apptainer
  returns before any network permission check for `none`
  (internal/pkg/runtime/engine/apptainer/container_linux.go, prepareNetworkSetup).
Exec options stop at the first positional argument (the root command sets
`SetInterspersed(false)`), so everything after the image is the command's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# name -> (short form, takes a value), transcribed from action_flags.go at v1.3.6.
EXEC_OPTIONS: dict[str, tuple[str | None, bool]] = {
    "add-caps": (None, True), "allow-setuid": (None, False), "app": (None, True),
    "apply-cgroups": (None, True), "bind": ("B", True), "blkio-weight": (None, True),
    "blkio-weight-device": (None, True), "boot": (None, False), "cleanenv": ("e", False),
    "compat": (None, False), "contain": ("c", False), "containall": ("C", False),
    "containlibs": (None, True), "cpu-shares": (None, True), "cpus": (None, True),
    "cpuset-cpus": (None, True), "cpuset-mems": (None, True), "cwd": (None, True),
    "disable-cache": (None, False), "dmtcp-launch": (None, True),
    "dmtcp-restart": (None, True), "dns": (None, True), "drop-caps": (None, True),
    "env": (None, True), "env-file": (None, True), "fakeroot": ("f", False),
    "fusemount": (None, True), "home": ("H", True), "hostname": (None, True),
    "ignore-fakeroot-command": (None, False), "ignore-subuid": (None, False),
    "ignore-userns": (None, False), "ipc": ("i", False), "keep-privs": (None, False),
    "memory": (None, True), "memory-reservation": (None, True), "memory-swap": (None, True),
    "mount": (None, True), "net": ("n", False), "network": (None, True),
    "network-args": (None, True), "no-eval": (None, False), "no-home": (None, False),
    "no-init": (None, False), "no-mount": (None, True), "no-nv": (None, False),
    "no-pid": (None, False), "no-privs": (None, False), "no-rocm": (None, False),
    "no-umask": (None, False), "nv": (None, False), "nvccli": (None, False),
    "oom-kill-disable": (None, False), "overlay": ("o", True), "pid": ("p", False),
    "pids-limit": (None, True), "pwd": (None, True), "rocm": (None, False),
    "runscript-timeout": (None, True), "scratch": ("S", True), "security": (None, True),
    "sharens": (None, False), "shell": ("s", True), "tmpdir": (None, True),
    "underlay": (None, False), "unsquash": (None, False), "userns": ("u", False),
    "uts": (None, False), "workdir": ("W", True), "writable": ("w", False),
    "writable-tmpfs": (None, False),
}  # fmt: skip

# name -> (short form, takes a value), from pull.go at v1.3.6.
PULL_OPTIONS: dict[str, tuple[str | None, bool]] = {
    "allow-unauthenticated": (None, False), "allow-unsigned": ("U", False),
    "arch": (None, True), "arch-variant": (None, True), "dir": (None, True),
    "disable-cache": (None, False), "library": (None, True), "name": (None, True),
    "force": ("F", False),
}  # fmt: skip

URI_SCHEMES = ("docker://", "oras://", "library://", "shub://", "oci-archive://",
               "docker-archive://", "docker-daemon://", "http://", "https://")  # fmt: skip
NO_MOUNT_VALUES = {"proc", "sys", "dev", "devpts", "home", "tmp", "hostfs", "cwd", "bind-paths"}
"""`--no-mount` values (internal/pkg/runtime/launch/launcher_linux.go, setNoMountFlags);
an absolute path names one `bind path` entry of apptainer.conf."""


class GrammarError(ValueError):
    """An argument list Apptainer would not accept as we mean it."""


@dataclass
class Parsed:
    """An argument list read the way Apptainer reads it."""

    options: list[tuple[str, str | None]] = field(default_factory=list)
    positionals: list[str] = field(default_factory=list)

    def values(self, name: str) -> list[str | None]:
        """Values given for option `name`, in order."""
        return [value for option, value in self.options if option == name]


def _parse(argv: list[str], command: str, options: dict[str, tuple[str | None, bool]]) -> Parsed:
    if argv[:2] != ["apptainer", command]:
        raise GrammarError(f"expected `apptainer {command}`, got {argv[:2]}")
    shorts = {short: name for name, (short, _) in options.items() if short}
    parsed, rest = Parsed(), argv[2:]
    while rest and rest[0].startswith("-"):
        arg = rest.pop(0)
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
        elif len(arg) == 2 and arg[1] in shorts:
            name, eq, value = shorts[arg[1]], "", ""
        else:
            raise GrammarError(f"unknown short option {arg!r}")
        if name not in options:
            raise GrammarError(f"`apptainer {command}` has no option --{name}")
        takes_value = options[name][1]
        if takes_value and not eq:
            if not rest:
                raise GrammarError(f"--{name} needs a value")
            value = rest.pop(0)
        elif not takes_value and eq and value not in ("true", "false"):
            raise GrammarError(f"--{name} is a switch; got value {value!r}")
        parsed.options.append((name, value if takes_value else None))
    parsed.positionals = rest
    return parsed


def parse_exec(argv: list[str]) -> Parsed:
    """Read an `apptainer exec` argument list; check option names, values and binds."""
    parsed = _parse(argv, "exec", EXEC_OPTIONS)
    if len(parsed.positionals) < 2:
        raise GrammarError("expected <container> <command> after the options")
    for spec in parsed.values("bind"):
        assert spec is not None
        for one in spec.split(","):
            parts = one.split(":")
            if not 1 <= len(parts) <= 3 or not all(parts[:2]):
                raise GrammarError(f"bind {one!r} is not src[:dest[:opts]]")
            if len(parts) == 3 and parts[2] not in ("ro", "rw"):
                raise GrammarError(f"bind {one!r}: options must be ro or rw")
            if not parts[0].startswith("/") or (len(parts) > 1 and not parts[1].startswith("/")):
                raise GrammarError(f"bind {one!r}: paths must be absolute")
    for value in parsed.values("no-mount"):
        assert value is not None
        unknown = {v for v in value.split(",") if v not in NO_MOUNT_VALUES and v[:1] != "/"}
        if unknown:
            raise GrammarError(f"--no-mount {value!r}: unknown {sorted(unknown)}")
    return parsed


def parse_pull(argv: list[str]) -> Parsed:
    """Read an `apptainer pull` argument list: options, [output file], <URI>."""
    parsed = _parse(argv, "pull", PULL_OPTIONS)
    if not 1 <= len(parsed.positionals) <= 2:
        raise GrammarError("expected [output file] <URI> after the options")
    uri = parsed.positionals[-1]
    if not uri.startswith(URI_SCHEMES):
        raise GrammarError(f"{uri!r} is not a URI Apptainer pulls ({', '.join(URI_SCHEMES)})")
    return parsed
