"""The pipeline-at-a-glance artifact: its table, failed commands and picture (no DB)."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from ccat_wm.execution.overview import (
    PICTURE_CELLS,
    Overview,
    StepOverview,
    overview_markdown,
    overview_picture,
)

KEYS = [f"executed_obs_unit=scan-{i:06d}" for i in range(1, 9)]


def _overview(keys: list[str]) -> Overview:
    cells = {("calibrate", k): ("failed" if i == 1 else "current") for i, k in enumerate(keys)}
    cells |= {("grid", k): "due" for k in keys}
    steps = [
        StepOverview("calibrate", current=len(keys) - 1, failed=1),
        StepOverview("grid", gaps=Counter({"new": len(keys)})),
    ]
    failed = [("calibrate", keys[1], f"ccat-wm retry p --step calibrate --sub-group {keys[1]}")]
    return Overview("p", dt.datetime(2026, 12, 7, tzinfo=dt.UTC), steps, cells, failed)


def test_the_overview_names_each_failure_with_its_command_and_draws_the_grid() -> None:
    overview = _overview(KEYS)
    picture = overview_picture(overview)
    assert picture is not None and picture.startswith(b"\x89PNG\r\n\x1a\n")
    markdown = overview_markdown(overview, picture=picture)
    assert "## p at a glance (2026-12-07 00:00:00Z)" in markdown
    assert f"| calibrate | {len(KEYS) - 1} | 0 | 0 | 1 |" in markdown
    assert f"| grid | 0 | {len(KEYS)} new | 0 | 0 |" in markdown
    assert f"`calibrate[{KEYS[1]}]`: `ccat-wm retry p --step calibrate --sub-group" in markdown
    assert "](data:image/png;base64,iVBORw0KGgo" in markdown


def test_a_grid_too_large_to_read_is_not_drawn() -> None:
    keys = [f"k={i}" for i in range(PICTURE_CELLS // 2 + 1)]
    assert overview_picture(_overview(keys)) is None
    empty = Overview("p", dt.datetime.now(dt.UTC), [StepOverview("calibrate")], {}, [])
    assert overview_picture(empty) is None
