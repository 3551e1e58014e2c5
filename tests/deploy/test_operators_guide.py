"""The operator's guide (docs/operators-guide.md) is run as written, so it cannot drift.

Every `$ ` line of its `console` blocks becomes one line of a bash script, in order
(`export` carries over, `&` starts a service in the background), and every
```` ```yaml file=NAME ```` block is written to `$SITE/NAME` as it stands (`ccat-wm apply`
expands `${SITE}` in its values from the environment).
The script runs with `set -euo pipefail` against a fresh ops DB, the real SLURM cluster
and a Prefect server the guide itself starts; its background services are stopped at
the end. The test then checks what the guide promises happened.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from tests.helpers import REPO, free_port, run_cli

pytestmark = [pytest.mark.db, pytest.mark.guide, pytest.mark.usefixtures("slurm_cluster")]
GUIDE = REPO / "docs" / "operators-guide.md"
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def guide_script(guide: str, site: Path) -> str:
    """The guide's commands as one bash script; its files written under `site`."""
    lines = [
        "set -euo pipefail",
        # Stop the guide's background services; a worker busy with flow runs gets 20 s.
        'trap \'kill $(jobs -rp) 2>/dev/null; for _ in $(seq 20); do [ -z "$(jobs -rp)" ] '
        "&& break; sleep 1; done; kill -9 $(jobs -rp) 2>/dev/null; wait' EXIT",
        "set -x",
    ]
    for kind, info, body in BLOCK.findall(guide):
        if kind == "yaml" and (name := re.search(r"file=(\S+)", info)):
            (site / name.group(1)).write_text(body)  # as written: `apply` expands ${SITE}
        elif kind == "console":
            lines += [line[2:] for line in body.splitlines() if line.startswith("$ ")]
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(1500)
def test_every_command_of_the_operators_guide_works_as_written(
    make_database: Callable[[], URL], tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    script = tmp_path / "guide.sh"
    script.write_text(guide_script(GUIDE.read_text(), site))
    assert script.read_text().count("\n") > 20  # the guide's commands were found
    url = make_database()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") or k.endswith("ANALYTICS_ENABLED")
    } | {
        "SITE": str(site),
        "CCAT_OPS_DB_URL": url.set(drivername="postgresql").render_as_string(hide_password=False),
        "CCAT_WM_HOME": str(tmp_path / "home"),
        "PREFECT_PORT": str(free_port()),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }  # fmt: skip
    log = tmp_path / "guide.log"
    with log.open("w") as out:
        result = subprocess.run(
            ["bash", str(script)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            timeout=1200, check=False,
        )  # fmt: skip
    assert result.returncode == 0, log.read_text()[-8000:]

    engine = create_engine(url)
    try:
        with Session(engine) as session:
            runs = session.execute(
                select(m.Pipeline.name, m.ExecutedReductionStep.status, m.ExecutedReductionStep.hpc_job_id)
                .join(m.ReductionStep, m.ReductionStep.pipeline_id == m.Pipeline.id)
                .join(m.ExecutedReductionStep)
            ).all()  # fmt: skip
            priority = session.scalar(
                select(m.Pipeline.priority).where(m.Pipeline.name == "ngc253-maps")
            )
    finally:
        engine.dispose()
    maps = [r for r in runs if r.name == "ngc253-maps"]
    assert maps and {r.status for r in maps} == {m.RunStatus.COMPLETED}
    assert all(r.hpc_job_id for r in maps)  # ran on SLURM
    assert [r.status for r in runs if r.name == "site-check"] == [m.RunStatus.CANCELLED]
    assert priority == 20  # section 7 changed it
    usage = {u["step"]: u for u in json.loads((site / "resources.json").read_text())}
    assert usage and all(u["completed_attempts"] > 0 for u in usage.values())  # section 10
    assert (site / "resources.png").read_bytes()[:4] == b"\x89PNG"
    status = run_cli(env, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)
