"""The downstream sub-groups a changed decision in force reaches (their gaps say `qa_changed`).

When the decision in force on a run flips (a person's decision, or a changed gate), the
sub-groups of the steps directly downstream that hold the run's sub-group take other
inputs now: each is recorded as a `qa_change` row with the decision, and its gap says
`qa_changed` until it is re-made. Which sub-groups hold which is read once per pipeline
from a full snapshot (settled sub-groups included).
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.execution.waves import containment
from ccat_wm.gaps.snapshot import load_snapshot

SubGroup = tuple[str, str]
"""(step name, sub-group key)."""


class DownstreamChanges:
    """Records, per decision, the downstream sub-groups whose inputs it changed."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._holders: dict[int, dict[SubGroup, list[SubGroup]]] = {}
        self._step_ids: dict[int, dict[str, int]] = {}

    def of(self, pipeline: m.Pipeline, step: str, key: str) -> tuple[SubGroup, ...]:
        """Return the sub-groups of the steps directly downstream that hold (`step`, `key`)."""
        self._read(pipeline)
        return tuple(sorted(self._holders[pipeline.id].get((step, key), ())))

    def _read(self, pipeline: m.Pipeline) -> None:
        """Read which sub-groups hold which, once per pipeline (a full snapshot)."""
        if pipeline.id in self._holders:
            return
        holders: dict[SubGroup, list[SubGroup]] = defaultdict(list)
        snapshot = load_snapshot(self.session, pipeline, prune=False)
        for (up, down, down_key), up_keys in containment(snapshot).items():
            for up_key in up_keys:
                holders[(up, up_key)].append((down, down_key))
        self._holders[pipeline.id] = holders

    def record(
        self, pipeline: m.Pipeline, decisions: list[tuple[int, str, str]]
    ) -> dict[int, tuple[SubGroup, ...]]:
        """Record the downstream sub-groups of each `(decision id, step, key)`; return them.

        One INSERT for all of them. No commit.
        """
        reached = {d: self.of(pipeline, step, key) for d, step, key in decisions}
        rows = [
            {"qa_decision_id": d, "reduction_step_id": self._step_id(pipeline, s),
             "sub_group_key": k}
            for d, subs in reached.items()
            for s, k in subs
        ]  # fmt: skip
        if rows:
            self.session.execute(insert(m.table_of(m.QaChange)), rows)
        return reached

    def _step_id(self, pipeline: m.Pipeline, step: str) -> int:
        if pipeline.id not in self._step_ids:
            self._step_ids[pipeline.id] = dict(
                self.session.execute(
                    select(m.ReductionStep.name, m.ReductionStep.id).where(
                        m.ReductionStep.pipeline_id == pipeline.id
                    )
                ).all()
            )
        return self._step_ids[pipeline.id][step]
