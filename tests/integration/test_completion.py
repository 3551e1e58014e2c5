"""Shell completion as the README sets it up: click's completion scripts for bash, zsh
and fish, completing commands, and pipeline, step and location names from the ops DB."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from tests.helpers import CCAT_WM, demo_spec_data, locations_data, write_yaml

pytestmark = pytest.mark.db


def complete(env: dict[str, str], words: str) -> list[str]:
    """What bash completion offers for the command line `words` (cursor at its end)."""
    line = f"ccat-wm {words}"
    result = subprocess.run(
        [CCAT_WM], capture_output=True, text=True, check=True, timeout=60,
        env=env | {"_CCAT_WM_COMPLETE": "bash_complete", "COMP_WORDS": line,
                   "COMP_CWORD": str(len(line.split()) - (0 if line.endswith(" ") else 1))},
    )  # fmt: skip
    return [row.split(",", 1)[1] for row in result.stdout.splitlines() if row]


def test_completion_scripts_and_names_from_the_ops_db(
    engine: Engine, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    for shell, marker in (("bash", "complete -o"), ("zsh", "#compdef ccat-wm"),
                          ("fish", "complete --no-files --command ccat-wm")):  # fmt: skip
        script = subprocess.run(
            [CCAT_WM], env=cli_env | {"_CCAT_WM_COMPLETE": f"{shell}_source"},
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert marker in script, (shell, script[:300])

    spec = write_yaml(tmp_path / "spec.yaml", {**locations_data(tmp_path), **demo_spec_data()})
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([spec]), user="tester")
    assert complete(cli_env, "sta") == ["status"]
    assert "products" in complete(cli_env, "pro") and "raw" in complete(cli_env, "ra")
    assert complete(cli_env, "status ") == ["chai-demo"]
    assert complete(cli_env, "run chai") == ["chai-demo"]
    assert complete(cli_env, "status chai-demo --step ") == ["baseline", "calibrate", "grid"]
    assert complete(cli_env, "products --step g") == ["grid"]
    assert sorted(complete(cli_env, "trigger --location ")) == ["archive", "local"]
    away = cli_env | {"CCAT_OPS_DB_URL": "postgresql://nobody@127.0.0.1:1/none"}
    assert complete(away, "status ") == []  # no ops DB: nothing, and no error
