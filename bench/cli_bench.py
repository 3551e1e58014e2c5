"""How long a `ccat-wm` command takes to start and answer, against `import click`.

    python bench/cli_bench.py [--home DIR] [--repeat 7]

Each command runs as a user types it, in a fresh process, on the demo's embedded ops
DB (`--home` is a CCAT_WM_HOME where `ccat-wm demo` ran; without it, the demo runs once
in a temporary home first). The baseline `python -c "import click"` runs interleaved
with the commands, so a busy machine slows both, and so does the floor of a command that
reads the ops DB (importing the ORM models, the settings and the driver). Prints the median wall time of each
and its ratio to the baseline; the last line is one JSON object with the medians (s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = {
    "import click": [sys.executable, "-c", "import click"],
    # What any command that reads the ops DB must import: SQLAlchemy's ORM with the
    # models, the pydantic settings and the PostgreSQL driver (the floor of status).
    "import floor": [
        sys.executable,
        "-c",
        "import ccat_ops_db.models, ccat_wm.settings, psycopg, click",
    ],
    # The same libraries without a line of ours: SQLAlchemy's ORM with its PostgreSQL
    # dialect, the driver, pydantic-settings. No command that reads the ops DB through
    # the ORM can start faster than this.
    "library floor": [
        sys.executable,
        "-c",
        "import sqlalchemy.orm, sqlalchemy.dialects.postgresql, psycopg, pydantic_settings, click",
    ],
    "--version": [str(BIN / "ccat-wm"), "--version"],
    "--help": [str(BIN / "ccat-wm"), "--help"],
    "status": [str(BIN / "ccat-wm"), "status"],
    "plan": [str(BIN / "ccat-wm"), "plan"],
}
TARGETS = {"--version": 0.3, "--help": 0.3, "status": 0.6, "plan": 0.6}


def wall(argv: list[str], env: dict[str, str]) -> float:
    """Run one command to its end; return its wall time in seconds (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def compile_bytecode() -> None:
    """Compile this checkout's packages, as pip does when it installs a wheel.

    An editable install compiles a module on its first import, unless
    PYTHONDONTWRITEBYTECODE is set (it is on the CI machines): then every command
    would compile our modules from source again, which a user's install never does.
    """
    root = Path(__file__).resolve().parent.parent
    packages = ["ccat_wm", "ccat_ops_db", "infra", "flows", "tasks", "deployments"]
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *(str(root / p) for p in packages)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "CCAT_OPS_DB_URL"}
    home = args.home or Path(tempfile.mkdtemp(prefix="cli-bench-"))
    env["CCAT_WM_HOME"] = str(home)
    if args.home is None:
        print(f"running the demo in {home} first", flush=True)
        subprocess.run([str(BIN / "ccat-wm"), "demo"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    compile_bytecode()
    for argv in COMMANDS.values():  # warm: the embedded server is up, files are cached
        wall(argv, env)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):  # interleaved: each round runs every command once
        for name, argv in COMMANDS.items():
            times[name].append(wall(argv, env))
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["import click"]
    print(f"{'command':<14} {'median s':>9} {'x click':>8} {'target s':>9}")
    for name, median in medians.items():
        target = f"{TARGETS[name]:.1f}" if name in TARGETS else ""
        print(f"{name:<14} {median:>9.3f} {median / base:>8.1f} {target:>9}")
    print(json.dumps({"median_s": medians, "ratio_to_import_click": {
        n: round(m / base, 2) for n, m in medians.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()
