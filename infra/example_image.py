"""Build the example software's OCI image on this host, without a registry, and pin it.

    python -m infra.example_image [--spec-out FILE]

The image holds the example CHAI reduction software (`examples/chai-software`) on a
Debian root file system made by `debootstrap` from the machine's Debian mirror, with
the same Python packages (numpy, astropy, matplotlib and what they need, the exact
versions installed beside this interpreter) as the host, so that the container and the
host runtime run the same deterministic software and make bit-identical products. It is
imported into podman's local storage (`podman import`) as `localhost/chai-software` and
tagged as each example software's repository (`localhost/chai-calibration`, ...); the
digest podman reports pins it in the spec.

The tag is a hash of everything the image is made from (this file, the software's
sources, the package versions, the Debian suite and packages): when none changed, the
image exists already and nothing is built. The Debian root file system alone is cached
as a tar file under `/var/cache/ccat-wm/images` (a minute or two to make).

`--spec-out` writes the example pipeline spec with the software's image repositories
and real digests (its locations and pipeline as in `examples/specs/chai-demo.yaml`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
SOFTWARE_DIR = REPO / "examples" / "chai-software"
DEMO_SPEC = REPO / "ccat_wm" / "examples" / "chai-demo.yaml"
CACHE_DIR = Path(os.environ.get("CCAT_IMAGE_CACHE", "/var/cache/ccat-wm/images"))
SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-pip")
IMAGE = "localhost/chai-software"
SOFTWARE_NAMES = ("chai-calibration", "chai-baseline", "chai-gridding")
"""The example software (one package, three programs): each name is a repository tag."""
PODMAN = ("podman", "--runtime", "runc", "--cgroup-manager=cgroupfs")


@dataclass(frozen=True, slots=True)
class BuiltImage:
    """The example image as podman stores it."""

    tag: str
    """The content hash that names this build."""
    digest: str
    """`sha256:...` as `podman image inspect` reports it."""

    def repository(self, software: str) -> str:
        """Return the image repository of one example software."""
        return f"localhost/{software}"


def _run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=True, text=True, **kwargs)  # noqa: S603


def pinned_requirements(distribution: str = "chai-software") -> list[str]:
    """`name==version` of every package `distribution` needs, as installed here."""
    seen: dict[str, str] = {}
    todo = [distribution]
    while todo:
        name = todo.pop()
        dist = md.distribution(name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    seen.pop(distribution, None)
    return sorted(f"{k}=={v}" for k, v in seen.items())


def build_key(requirements: Sequence[str]) -> str:
    """Hash of everything the image is made from."""
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    digest.update(json.dumps([SUITE, DEBIAN_PACKAGES, list(requirements)]).encode())
    for path in sorted(SOFTWARE_DIR.rglob("*")):
        rel = path.relative_to(SOFTWARE_DIR)
        if rel.parts[0] in ("apptainer", "build") or "__pycache__" in rel.parts:
            continue  # not in the image
        if path.is_file() and ".egg-info" not in str(rel):
            digest.update(str(rel).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _image_digest(ref: str) -> str | None:
    result = subprocess.run(  # noqa: S603
        [*PODMAN, "image", "inspect", "--format", "{{.Digest}}", ref],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return result.stdout.strip() or None if result.returncode == 0 else None


def _base_rootfs() -> Path:
    """Return a Debian root file system with Python as a tar file (made once per inputs)."""
    key = hashlib.sha256(json.dumps([SUITE, DEBIAN_PACKAGES]).encode()).hexdigest()[:12]
    tar = CACHE_DIR / f"debian-{SUITE}-{key}.tar"
    if tar.exists():
        return tar
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        root = Path(tmp) / "root"
        print(f"==> debootstrap {SUITE} ({', '.join(DEBIAN_PACKAGES)}) into {root}", flush=True)
        _run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
             SUITE, str(root)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        partial = tar.with_suffix(".partial")
        _run(["tar", "-C", str(root), "-cf", str(partial), "."])
        partial.replace(tar)
    return tar


def build(requirements: Sequence[str] | None = None) -> BuiltImage:
    """Build the image unless a build of the same inputs exists; tag it; return its digest."""
    requirements = list(requirements if requirements is not None else pinned_requirements())
    tag = build_key(requirements)
    digest = _image_digest(f"{IMAGE}:{tag}")
    if digest is None:
        digest = _build(tag, requirements)
        _remove_older_builds(tag)
    else:
        print(f"==> {IMAGE}:{tag} exists ({digest})", flush=True)
    for name in SOFTWARE_NAMES:
        _run([*PODMAN, "tag", f"{IMAGE}:{tag}", f"localhost/{name}:{tag}"])
    return BuiltImage(tag, digest)


def _remove_older_builds(tag: str) -> None:
    """Untag earlier builds (podman then frees their storage): one build is kept."""
    repositories = [IMAGE, *(f"localhost/{name}" for name in SOFTWARE_NAMES)]
    listed = subprocess.run(  # noqa: S603
        [*PODMAN, "images", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    old = [ref for ref in listed if ref.rsplit(":", 1)[0] in repositories and not ref.endswith(tag)]
    if old:
        subprocess.run([*PODMAN, "rmi", "--force", *old], capture_output=True, check=False)  # noqa: S603


def _build(tag: str, requirements: Sequence[str]) -> str:
    base = _base_rootfs()
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        root, wheels = Path(tmp) / "root", Path(tmp) / "root" / "tmp" / "wheels"
        root.mkdir()
        _run(["tar", "-C", str(root), "-xf", str(base)])
        wheels.mkdir(parents=True, exist_ok=True)
        print(f"==> wheels of chai-software and {len(requirements)} pinned packages", flush=True)
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("\n".join(requirements) + "\n")
        # The host's pip fetches exactly the host's versions (binary wheels for this Python).
        _run(
            [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "--quiet",
             "--wheel-dir", str(wheels), "--constraint", str(constraints),
             "--only-binary=:all:", str(SOFTWARE_DIR)],
        )  # fmt: skip
        shutil.rmtree(SOFTWARE_DIR / "build", ignore_errors=True)
        print("==> installing them into the root file system (chroot, no network)", flush=True)
        _run(
            ["chroot", str(root), "python3", "-m", "pip", "install", "--quiet", "--no-index",
             "--no-cache-dir", "--break-system-packages", "--find-links", "/tmp/wheels",  # noqa: S108 - inside the chroot
             "chai-software", *requirements],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"},
        )  # fmt: skip
        shutil.rmtree(wheels)
        print(f"==> podman import as {IMAGE}:{tag}", flush=True)
        tar = Path(tmp) / "rootfs.tar"
        _run(["tar", "-C", str(root), "-cf", str(tar), "."])
        _run(
            [*PODMAN, "import", "--quiet",
             "--change", "ENV PATH=/usr/local/bin:/usr/bin:/bin",
             "--change", "ENV LANG=C.UTF-8",
             "--change", "ENV PYTHONUNBUFFERED=1",
             "--change", "ENV MPLCONFIGDIR=/tmp/matplotlib",
             "--change", "WORKDIR /workflow",
             "--change", "LABEL org.ccat.contract=workflow-v1",
             str(tar), f"{IMAGE}:{tag}"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
    digest = _image_digest(f"{IMAGE}:{tag}")
    if digest is None:
        raise RuntimeError(f"podman import of {IMAGE}:{tag} left no image")
    return digest


def spec_with_image(image: BuiltImage, spec_path: Path = DEMO_SPEC) -> dict[str, Any]:
    """Return the example pipeline spec with the built image's repositories and digest."""
    data: dict[str, Any] = yaml.safe_load(spec_path.read_text())
    for software in data["software"]:
        if software["name"] in SOFTWARE_NAMES:
            software["ghcr_url"] = image.repository(software["name"])
            for version in software["versions"]:
                version["digest"] = image.digest
    return data


def main(argv: Sequence[str] | None = None) -> int:
    """Build (or find) the image; print its digest; optionally write the pinned spec."""
    parser = argparse.ArgumentParser(prog="python -m infra.example_image", description=__doc__)
    parser.add_argument("--spec-out", type=Path, help="write the pinned example spec here")
    args = parser.parse_args(argv)
    image = build()
    print(f"{IMAGE}:{image.tag} {image.digest}")
    if args.spec_out:
        args.spec_out.parent.mkdir(parents=True, exist_ok=True)
        header = (
            f"# Generated by `python -m infra.example_image` from {DEMO_SPEC.name}: the example\n"
            f"# software's image built on this host ({IMAGE}:{image.tag}), pinned by digest.\n"
        )
        args.spec_out.write_text(header + yaml.safe_dump(spec_with_image(image), sort_keys=False))
        print(f"==> wrote {args.spec_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
