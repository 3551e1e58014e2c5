"""No run can change an archive file or an upstream product through its inputs.

Real pipeline flow on the local backend (host runtime, where nothing else would stop a
program), real PostgreSQL, and a program that tries to change its inputs in place.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.cli.driver import run_pipeline
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from tests.flows.conftest import setup_pipeline, tool_step
from tests.helpers import write_yaml

pytestmark = [pytest.mark.db, pytest.mark.usefixtures("prefect_server")]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _recorded(engine: Engine) -> dict[str, str]:
    """Every archive copy and product path with the checksum the ops DB holds for it."""
    with Session(engine) as session:
        copies = session.execute(
            select(m.RawDataPackageCopy.path, m.RawDataPackage.checksum).join(
                m.RawDataPackage, m.RawDataPackage.id == m.RawDataPackageCopy.raw_data_package_id
            )
        ).all()
        products = session.execute(select(m.DataProduct.file_path, m.DataProduct.checksum)).all()
    return {str(path): checksum for path, checksum in [*copies, *products]}


@pytest.mark.parametrize("how", ["write", "append", "truncate", "chmod", "recreate"])
def test_a_program_that_changes_its_inputs_harms_only_its_own_copy(
    engine: Engine, tmp_path: Path, how: str
) -> None:
    setup_pipeline(
        engine,
        tmp_path,
        [
            tool_step("first", parameters={"mode": f"tamper-{how}"}),
            tool_step("second", parameters={"mode": f"tamper-{how}"}, depends_on=["first"]),
        ],
        scans=2,
    )
    archive = {p: _sha256(p) for p in (tmp_path / "archive").rglob("*") if p.is_file()}
    assert archive

    result = run_pipeline(engine, "t")

    assert result.state == "Completed", result.message
    logs = "".join(p.read_text() for p in (tmp_path / "runs").rglob("*-attempt-1.log"))
    assert f"({how})" in logs  # the program did try
    assert {p: _sha256(p) for p in archive} == archive
    recorded = _recorded(engine)
    staged = [p for p in recorded if "/.staging/" in p]
    assert len(staged) == 2 and len(recorded) > len(archive) + len(staged)
    # Archive, staged copies and every product (the first step's included) are intact.
    assert {p: _sha256(Path(p)) for p in recorded} == recorded


def test_a_changed_upstream_product_fails_the_downstream_run_naming_the_file(
    engine: Engine, tmp_path: Path
) -> None:
    steps = [tool_step("first"), tool_step("second", depends_on=["first"])]
    setup_pipeline(engine, tmp_path, steps, scans=1)
    assert run_pipeline(engine, "t").state == "Completed"
    with Session(engine) as session:
        product = Path(
            session.scalars(
                select(m.DataProduct.file_path)
                .join(m.ExecutedReductionStep)
                .join(m.ReductionStep)
                .where(m.ReductionStep.name == "first", m.DataProduct.file_path.like("%.json"))
                .order_by(m.DataProduct.file_path)
            ).first()
            or ""
        )
    product.chmod(0o644)
    product.write_text('{"bit": "rot"}')
    # A config edit of the second step makes it run again from the first step's products.
    spec = yaml.safe_load((tmp_path / "spec.yaml").read_text())
    edited = copy.deepcopy(spec)
    edited["pipelines"][0]["steps"][1]["config"]["parameters"]["arg"] = "again"
    with Session(engine) as session, session.begin():
        apply_specs(session, load_spec_files([write_yaml(tmp_path / "e.yaml", edited)]), user="t")

    result = run_pipeline(engine, "t")

    assert result.state == "Failed"
    with Session(engine) as session:
        failed = session.scalars(
            select(m.ExecutedReductionStep).where(
                m.ExecutedReductionStep.status == m.RunStatus.FAILED
            )
        ).one()
    assert str(product) in (failed.failure_reason or "")
    assert "but the ops DB recorded" in (failed.failure_reason or "")
