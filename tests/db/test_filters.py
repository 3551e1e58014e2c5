"""The filter engine against the real database: every operator, plain columns and json_path."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.selection.query import selection
from tests.gapkit import GapKit

Row = dict[str, Any]


def _packages(engine: Engine) -> list[Row]:
    with Session(engine) as session:
        result = session.execute(
            select(
                m.RawDataPackage.name, m.RawDataPackage.size, m.RawDataPackage.metadata_,
                m.Source.name.label("source"), m.Line.name.label("line"), m.ExecutedObsUnit.start_time,
            )
            .join(m.ExecutedObsUnit, m.ExecutedObsUnit.id == m.RawDataPackage.executed_obs_unit_id)
            .join(m.ObsUnit, m.ObsUnit.id == m.ExecutedObsUnit.obs_unit_id)
            .join(m.Source, m.Source.id == m.ObsUnit.source_id)
            .join(m.Line, m.Line.id == m.ObsUnit.line_id)
        ).all()  # fmt: skip
    return [r._asdict() for r in result]


T10 = dt.datetime(2026, 1, 1, 0, 10, tzinfo=dt.UTC)
CASES: list[tuple[dict[str, Any], Callable[[Row], bool]]] = [
    ({"table": "Source", "column": "name", "operator": "eq", "value": "NGC253"}, lambda r: r["source"] == "NGC253"),
    ({"table": "Source", "column": "name", "operator": "neq", "value": "NGC253"}, lambda r: r["source"] != "NGC253"),
    ({"table": "Source", "column": "name", "operator": "in", "value": ["NGC253", "M83"]}, lambda r: r["source"] in ("NGC253", "M83")),
    ({"table": "Source", "column": "name", "operator": "not_in", "value": ["NGC253"]}, lambda r: r["source"] != "NGC253"),
    ({"table": "Line", "column": "name", "operator": "like", "value": "CO%"}, lambda r: r["line"].startswith("CO")),
    # Packages of a scan of 33 rows are 619,766 bytes, of one shifted by half a row (32) 601,168.
    ({"table": "RawDataPackage", "column": "size", "operator": "gt", "value": 610000}, lambda r: r["size"] > 610000),
    ({"table": "RawDataPackage", "column": "size", "operator": "lte", "value": 610000}, lambda r: r["size"] <= 610000),
    ({"table": "ExecutedObsUnit", "column": "start_time", "operator": "gte", "value": T10.isoformat()}, lambda r: r["start_time"] >= T10),
    ({"table": "RawDataPackage", "column": "metadata", "json_path": "observation.frequency_ghz", "operator": "gt", "value": 700},
     lambda r: r["metadata_"]["observation"]["frequency_ghz"] > 700),
    ({"table": "RawDataPackage", "column": "metadata", "json_path": "observation.frequency_ghz", "operator": "lt", "value": 470},
     lambda r: r["metadata_"]["observation"]["frequency_ghz"] < 470),
    ({"table": "RawDataPackage", "column": "metadata", "json_path": "observation.source", "operator": "eq", "value": "M83"},
     lambda r: r["metadata_"]["observation"]["source"] == "M83"),
    ({"table": "RawDataPackage", "column": "metadata", "json_path": "observation.line", "operator": "in", "value": ["CO43", "CO76"]},
     lambda r: r["metadata_"]["observation"]["line"] in ("CO43", "CO76")),
    ({"table": "RawDataPackage", "column": "metadata", "json_path": "instrument.module", "operator": "neq", "value": "LFA"},
     lambda r: r["metadata_"]["instrument"]["module"] != "LFA"),
    ({"table": "RawDataPackage", "column": "metadata", "json_path": "observation.weather", "operator": "neq", "value": "bad"},
     lambda r: True),  # a missing key is "not equal"
    ({"table": "RawDataPackage", "column": "metadata", "json_path": "observation.weather", "operator": "eq", "value": "bad"},
     lambda r: False),
    ({"table": "RawDataPackage", "column": "metadata", "json_path": "observation.source", "operator": "like", "value": "N%"},
     lambda r: r["metadata_"]["observation"]["source"].startswith("N")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rule", "expected"),
    CASES,
    ids=[f"{c[0]['column']}-{c[0].get('json_path', '')}-{c[0]['operator']}" for c in CASES],
)
def test_rule_selects_exactly_the_matching_packages(
    engine: Engine, tmp_path: Path, rule: dict[str, Any], expected: Callable[[Row], bool]
) -> None:
    kit = GapKit(engine, tmp_path)
    kit.simulate(12, sources=("NGC253", "M83", "Orion-KL"), lines=("CO43", "CI10", "CO76"), seed=12)
    rows = _packages(engine)
    sel = selection([rule], None, [])
    with Session(engine) as session:
        got = set(
            session.scalars(
                select(m.RawDataPackage.name).select_from(sel.from_clause).where(sel.where)
            )
        )
    want = {r["name"] for r in rows if expected(r)}
    assert got == want
    assert 0 < len(want) < len(rows) or rule.get("json_path") == "observation.weather"
