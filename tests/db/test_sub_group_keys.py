"""Sub-group keys are unambiguous in SQL as in Python, whatever the names hold."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import ARRAY, Engine, String, cast, func, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.selection.dimensions import escape_key_value, parse_key
from ccat_wm.selection.query import escape_key_sql
from ccat_wm.simulate.register import SimulationRequest, register_simulation
from tests.gapkit import GapKit, _step

pytestmark = pytest.mark.db

PG_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from("|=\\%_'\""),
        st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    ),
    max_size=16,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(PG_TEXT, min_size=1, max_size=40))
def test_sql_escapes_values_exactly_as_python(engine: Engine, values: list[str]) -> None:
    column = func.unnest(cast(values, ARRAY(String))).column_valued("v")
    with engine.connect() as connection:
        escaped = connection.execute(select(escape_key_sql(column))).scalars().all()
    assert escaped == [escape_key_value(v) for v in values]


def test_names_holding_separators_make_two_sub_groups_not_one(
    engine: Engine, tmp_path: Path
) -> None:
    kit = GapKit(engine, tmp_path)
    spec = kit.edited()
    spec["pipelines"][0]["steps"] = [_step("grid", "grid-sw", ["observing_program", "source"], [])]
    kit.apply(spec)
    with Session(engine) as session, session.begin():
        for program, source in (("A|source=B", "C"), ("A", "B|source=C")):
            register_simulation(
                session,
                SimulationRequest(scans=2, seed=1, sources=(source,), program=program),
            )
        packages = session.scalar(select(func.count()).select_from(m.RawDataPackage))
    gaps = kit.gaps()
    assert sorted(parse_key(g.sub_group_key)["observing_program"] for g in gaps) == [
        "A",
        "A|source=B",
    ]
    assert [g.inputs for g in gaps] == [packages // 2, packages // 2]
    created = kit.create()
    assert sorted(c.sub_group_key for c in created) == sorted(g.sub_group_key for g in gaps)
