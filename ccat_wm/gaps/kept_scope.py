"""What every part of a pipeline's kept evaluation shares: its tables, tags and scope.

See `ccat_wm.gaps.kept` for the three tables and what they hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, any_, cast, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.gaps.model import GapReason, StepInfo

RUN = m.ExecutedReductionStep
PACKAGE = m.RawDataPackage
FINE = m.EvaluationFine
MEMBER = m.EvaluationMember
KEPT = m.EvaluationGap
DOWNSTREAM = m.EvaluationDownstream
REASONS = {reason.value: reason for reason in GapReason}
"""A gap reason by its stored value."""
Pair = tuple[int, str, int, str]
"""(downstream step index, its key, upstream step index, its key)."""


def tag(pipeline_id: int, index: int, key: str) -> str:
    """Return the `evaluation_fine.tags` element of step `index`'s sub-group `key`."""
    return f"{pipeline_id}:{index}:{key}"


def upstream_pairs(steps: Sequence[StepInfo]) -> list[tuple[int, int]]:
    """Return (downstream index, upstream index) of every dependency, upstream steps first."""
    names = [s.name for s in steps]
    return sorted((d, names.index(u)) for d, s in enumerate(steps) for u in s.upstream)


FINE_LEVEL = -1
"""`evaluation_member.upstream_index` of a root sub-group's fine rows."""


def key_array(keys: set[str]) -> Any:
    """Return sub-group keys as a SQL text array (sorted: the same statement each time)."""
    return cast(sorted(keys), ARRAY(String))


@dataclass(frozen=True)
class KeptScope:
    """One pipeline's kept evaluation, read and written in `session`'s transaction."""

    session: Session
    pipeline_id: int
    grouping: m.DataGrouping
    steps: Sequence[StepInfo]

    def untag(self, index: int, value: str) -> str:
        """Return the sub-group key of step `index` in a fine row's tag."""
        return value[len(tag(self.pipeline_id, index, "")) :]

    def members(self, down: int, up: int, upstream_keys: set[str]) -> Any:
        """Select (upstream key, downstream key) of step `down`'s sub-groups holding those."""
        return select(MEMBER.upstream_key, MEMBER.sub_group_key).where(
            MEMBER.pipeline_id == self.pipeline_id,
            MEMBER.upstream_index == up,
            MEMBER.upstream_key == any_(key_array(upstream_keys)),
            MEMBER.step_index == down,
        )
