"""Works from a wheel: the demo needs nothing from a source checkout.

The wheels of ccat-wm and of the example software are built from a copy of the
repository (with pip's build isolation, as a packager builds them) and installed into a
fresh virtual environment without their dependencies; those are borrowed from the test
environment through a `.pth` file (installing Prefect, SQLAlchemy, numpy and astropy
again would only test PyPI). The test's own editable install is not visible there (a
`.pth` path is not a site directory, so its editable finder is not loaded), which the
test checks: the demo runs the wheel's code, from an unrelated directory, and writes
nothing in the user's home (an empty read-only `HOME`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests.helpers import REPO

pytestmark = pytest.mark.db

IGNORED = (".git", ".venv", "build", "dist", "test-artifacts", "*.egg-info", "__pycache__",
           ".mypy_cache", ".ruff_cache", ".pytest_cache", "generated")  # fmt: skip


def build_wheels(out: Path, scratch: Path) -> list[Path]:
    """Build the two wheels from a copy of the tree (no build/ left in the repository)."""
    source = scratch / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*IGNORED), symlinks=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
         "-w", str(out), str(source), str(source / "examples" / "chai-software")],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return sorted(out.glob("*.whl"))


def test_the_demo_runs_from_installed_wheels_in_an_unrelated_directory(
    tmp_path: Path, cli_env: dict[str, str], make_database: Callable[[], URL]
) -> None:
    wheels = build_wheels(tmp_path / "dist", tmp_path)
    assert [w.name.split("-")[0] for w in wheels] == ["ccat_workflow_manager", "chai_software"]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
         "--disable-pip-version-check", *map(str, wheels)],
        check=True, timeout=300,
    )  # fmt: skip
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = subprocess.run(
        [str(python), "-c", "import ccat_wm, chai_software; print(ccat_wm.__file__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    ).stdout.strip()  # fmt: skip
    assert where.startswith(site), where  # the wheel's code, not the checkout's

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    user_home = tmp_path / "user"  # the demo writes nothing in the user's home
    user_home.mkdir()
    user_home.chmod(0o555)
    env = {k: v for k, v in cli_env.items() if k not in ("PYTHONPATH", "PREFECT_API_URL")}
    fresh = make_database()  # an empty ops DB: the demo migrates it, as on a new site
    env["CCAT_OPS_DB_URL"] = fresh.set(drivername="postgresql").render_as_string(
        hide_password=False
    )
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(user_home)
    for unset in ("PREFECT_HOME", "MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        env.pop(unset, None)
    demo = subprocess.run(
        [str(venv / "bin" / "ccat-wm"), "demo"], env=env, cwd=elsewhere,
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output[-3000:]
    assert "[2/5] applied chai-demo.yaml" in output and "COMPLETED" in output, output[-3000:]
    assert "map: " in output and "Traceback" not in output
    assert os.listdir(user_home) == []
