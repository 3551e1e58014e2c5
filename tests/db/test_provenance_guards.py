"""Secrets never enter a record, invalidations are a set, provenance cannot be truncated.

Real PostgreSQL, real runs on the local backend (host runtime), the real migrations.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ccat_ops_db import migrate
from ccat_ops_db import models as m
from ccat_wm.errors import CcatWmError, SpecError
from ccat_wm.execution.invalidation import Target, TargetKind, invalidate, undo_invalidation
from ccat_wm.execution.runner import RunExecutor
from ccat_wm.execution.secrets import mask_passwords, split_secrets
from ccat_wm.execution.waves import prepare_wave
from ccat_wm.settings import Settings
from ccat_wm.simulate.register import SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from tests.db.test_apply import add_run
from tests.helpers import demo_spec_data, locations_data, write_yaml

pytestmark = pytest.mark.db
SECRETS = {
    "PGPASSWORD": "pg-s3cret", "MYSQL_PWD": "my-s3cret", "APITOKEN": "tok-s3cret",
    "SECRETKEY": "key-s3cret", "AWS_SECRETACCESSKEY": "aws-s3cret", "PLAIN_NAME": "named-s3cret",
}  # fmt: skip
URL = "postgresql://reducer:url-s3cret@db.example:5432/ops"
DSN = "host=db.example user=reducer password=dsn-s3cret dbname=ops"
CHECK = (
    "import json, os, pathlib, sys; want = json.loads(pathlib.Path(sys.argv[1]).read_text()); "
    "bad = [k for k, v in want.items() if os.environ.get(k) != v]; "
    "sys.exit('wrong: ' + ','.join(bad)) if bad else None; "
    "out = pathlib.Path(os.environ['WORKFLOW_OUTPUT_DIR']) / 'science'; "
    "out.mkdir(parents=True, exist_ok=True); (out / 'ok.txt').write_text('ok')"
)


def test_the_rules_name_every_kind_of_secret() -> None:
    env = {**SECRETS, "DB_URL": URL, "DB_DSN": DSN, "HOME_DIR": "/home/x"}
    stored, withheld = split_secrets(env, ["PLAIN_NAME"])
    assert stored == {
        "DB_URL": "postgresql://reducer:<withheld>@db.example:5432/ops",
        "DB_DSN": "host=db.example user=reducer password=<withheld> dbname=ops",
        "HOME_DIR": "/home/x",
    }
    assert withheld == sorted([*SECRETS, "DB_URL", "DB_DSN"])
    assert mask_passwords("https://host/path?x=1") == "https://host/path?x=1"


def _spec(root: Path, environment: dict[str, str], secret_env: list[str]) -> Path:
    expected = root / "expected.json"  # what the job must get (not on its command line)
    expected.write_text(json.dumps(environment))
    data: dict[str, Any] = {
        **locations_data(root),
        "instruments": [{"name": "CHAI", "modules": ["LFA", "HFA"]}],
        "software": [{"name": "tool", "ghcr_url": "ghcr.io/ccatobs/tool",
                      "versions": [{"tag": "1", "digest": "sha256:" + "ab" * 32,
                                    "is_latest": True}]}],
        "data_groupings": [{"name": "g", "instrument_module": "CHAI/LFA", "filter_rules": []}],
        "pipelines": [{"name": "s", "data_grouping": "g", "processing_location": "local",
                       "trigger": {"type": "MANUAL"},
                       "steps": [{"name": "use", "software": "tool", "group_by": [],
                                  "config": {"name": "use", "environment": environment,
                                             "secret_env": secret_env,
                                             "command": [sys.executable, "-c", CHECK]}}]}],
    }  # fmt: skip
    data["pipelines"][0]["steps"][0]["config"]["command"].append(str(expected))
    return write_yaml(root / "spec.yaml", data)


def test_a_run_gets_its_secrets_and_no_record_holds_them(engine: Engine, tmp_path: Path) -> None:
    environment = {**SECRETS, "DB_URL": URL, "DB_DSN": DSN, "PLAIN": "visible"}
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([_spec(tmp_path, environment, ["PLAIN_NAME"])]),
                    user="t")  # fmt: skip
        register_simulation(session, SimulationRequest(scans=1, seed=1))
    with Session(engine) as session, session.begin():
        wave = prepare_wave(session, "s", dt.datetime.now(dt.UTC), claim_as="t", manual=True)
    (run_id,) = [i.run_id for i in wave.items if i.run_id is not None]
    outcome = RunExecutor(engine, Settings()).execute(run_id)
    assert outcome.status is m.RunStatus.COMPLETED, outcome.message  # the job saw every value
    with Session(engine) as session:
        snap = session.get_one(m.RunSnapshot, run_id)
        run = session.get_one(m.ExecutedReductionStep, run_id)
        attempts = session.scalars(select(m.RunAttempt)).all()
    for record in (str(snap.environment), run.execution_command or "",
                   *(str(a.failure_reason) for a in attempts)):  # fmt: skip
        assert "s3cret" not in record, record
    assert snap.environment == {
        "PLAIN": "visible",
        "DB_URL": "postgresql://reducer:<withheld>@db.example:5432/ops",
        "DB_DSN": "host=db.example user=reducer password=<withheld> dbname=ops",
    }
    assert set(snap.withheld_environment) == {*SECRETS, "DB_URL", "DB_DSN"}
    assert run.execution_command is not None
    head = run.execution_command.split(sys.executable)[0]  # the NAME=value words
    assert "'PGPASSWORD=<withheld>'" in head, head
    assert "PLAIN=visible" in head


def test_migration_0010_scrubs_records_written_before_it(
    make_database: Any, tmp_path: Path
) -> None:
    engine = create_engine(make_database())
    migrate.upgrade(engine)
    spec = write_yaml(tmp_path / "spec.yaml", {**locations_data(tmp_path), **demo_spec_data()})
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([spec]), user="tester")
    migrate.downgrade(engine, "0009")
    run_id = add_run(engine, "chai-demo", "grid", m.RunStatus.COMPLETED, "source=a")
    command = f"PGPASSWORD=pg-s3cret DB_URL={URL} LANG=C chai-grid --db {URL}"
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE executed_reduction_step DISABLE TRIGGER USER"))
        conn.execute(
            text("UPDATE executed_reduction_step SET execution_command = :c WHERE id = :id"),
            {"c": command, "id": run_id},
        )
        conn.execute(text("ALTER TABLE executed_reduction_step ENABLE TRIGGER USER"))
        conn.execute(
            text(
                "INSERT INTO run_snapshot (executed_reduction_step_id, origin, unknown, "
                "recorded_at, location, software, software_tag, config_name, environment, "
                "withheld_environment) VALUES (:id, 'recorded', '{}', now(), 'local', 'x', '1', "
                "'c', CAST(:env AS jsonb), '{GITHUB_TOKEN}')"
            ),
            {"id": run_id, "env": '{"MYSQL_PWD": "my-s3cret", "DB_URL": "' + URL + '", "A": "b"}'},
        )
    migrate.upgrade(engine)
    with engine.connect() as conn:
        env, withheld = conn.execute(
            text("SELECT environment, withheld_environment FROM run_snapshot")
        ).one()
        stored = conn.scalar(text("SELECT execution_command FROM executed_reduction_step"))
    assert env == {"DB_URL": "postgresql://reducer:<withheld>@db.example:5432/ops", "A": "b"}
    assert withheld == ["DB_URL", "GITHUB_TOKEN", "MYSQL_PWD"]
    assert stored is not None and "s3cret" not in stored, stored
    assert stored.startswith("'PGPASSWORD=<withheld>' 'DB_URL=postgresql://reducer:<withheld>@")
    with pytest.raises(DBAPIError, match="immutable"), engine.begin() as conn:  # still guarded
        conn.execute(text("UPDATE run_snapshot SET environment = '{}'"))
    engine.dispose()


@pytest.fixture
def completed_run(engine: Engine, tmp_path: Path) -> int:
    spec = write_yaml(tmp_path / "spec.yaml", {**locations_data(tmp_path), **demo_spec_data()})
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([spec]), user="tester")
    return add_run(engine, "chai-demo", "grid", m.RunStatus.COMPLETED, "source=a")


def _active(engine: Engine, run_id: int) -> int:
    with Session(engine) as session:
        return len(
            session.scalars(
                select(m.Invalidation.id).where(
                    m.Invalidation.executed_reduction_step_id == run_id,
                    m.Invalidation.undone_at.is_(None),
                )
            ).all()
        )


def test_invalidation_is_a_set_under_repetition_and_concurrency(
    engine: Engine, completed_run: int
) -> None:
    target = Target(TargetKind.RUN, completed_run)
    with Session(engine) as session:
        invalidate(session, [target, target], "twice in one command", user="a", dry_run=False)
    assert _active(engine, completed_run) == 1
    with Session(engine) as session:
        undo_invalidation(session, [target], "fixed", user="a", dry_run=False)
    assert _active(engine, completed_run) == 0

    outcomes: list[str] = []
    start = threading.Barrier(4)

    def operator(name: str) -> None:
        start.wait()
        with Session(engine) as session:
            try:
                invalidate(session, [target], f"seen by {name}", user=name, dry_run=False)
                outcomes.append("invalidated")
            except CcatWmError as exc:
                outcomes.append(str(exc))

    threads = [threading.Thread(target=operator, args=(f"op{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("invalidated") == 1, outcomes
    assert all("is already invalidated" in o for o in outcomes if o != "invalidated"), outcomes
    assert _active(engine, completed_run) == 1
    with Session(engine) as session:
        undo_invalidation(session, [target], "fixed", user="a", dry_run=False)
    assert _active(engine, completed_run) == 0
    with pytest.raises(DBAPIError, match="uq_invalidation_active"), engine.begin() as conn:
        for _ in range(2):  # what a second writer outside `invalidate` would meet
            conn.execute(
                text("INSERT INTO invalidation (executed_reduction_step_id, reason, created_by) "
                     "VALUES (:id, 'raw SQL', 'x')"),
                {"id": completed_run},
            )  # fmt: skip


@pytest.mark.parametrize(
    "table",
    ["run_snapshot", "run_attempt", "executed_reduction_step_input", "invalidation",
     "invalidated_run"],
)  # fmt: skip
def test_provenance_tables_refuse_truncate(engine: Engine, table: str) -> None:
    refused = pytest.raises(DBAPIError, match=f"{table} is provenance: TRUNCATE is refused")
    with refused, engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {table} CASCADE"))


def test_a_recorded_input_cannot_be_deleted(engine: Engine, completed_run: int) -> None:
    with engine.begin() as conn:
        package = conn.scalar(text("SELECT id FROM raw_data_package LIMIT 1"))
        if package is None:
            with Session(conn) as session:
                register_simulation(session, SimulationRequest(scans=1, seed=2))
            package = conn.scalar(text("SELECT id FROM raw_data_package LIMIT 1"))
        conn.execute(
            text("INSERT INTO executed_reduction_step_input (executed_reduction_step_id, "
                 "raw_data_package_id, checksum) VALUES (:run, :pkg, :sum)"),
            {"run": completed_run, "pkg": package, "sum": "0" * 64},
        )  # fmt: skip
    with pytest.raises(DBAPIError, match="recorded for good"), engine.begin() as conn:
        conn.execute(text("DELETE FROM executed_reduction_step_input"))


def test_secret_env_must_name_a_variable_of_the_config(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="secret_env names 'NOPE', which environment does not set"):
        load_spec_files([_spec(tmp_path, {"A": "b"}, ["NOPE"])])
