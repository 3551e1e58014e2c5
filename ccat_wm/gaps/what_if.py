"""`ccat-wm plan --with SPEC.yaml...`: what applying spec files would cost, before applying.

The files are applied inside a transaction, the plan is evaluated there before and
after, and the transaction is rolled back: the ops DB is left exactly as it was. The
difference is the work the change causes (a version bump's `version_changed` gaps, a
config edit's `config_changed` gaps, a changed quality gate's flipped sub-groups and
their `qa_changed` downstream gaps), with its estimated CPU-hours, so an operator sees
the cost before making the change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.errors import CcatWmError
from ccat_wm.gaps.model import Gap
from ccat_wm.gaps.plan import Plan, make_plan
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.changes import Change
from ccat_wm.spec.loader import LoadedSpec


@dataclass(frozen=True, slots=True)
class QaFlip:
    """A sub-group whose quality decision in force the change would flip."""

    pipeline: str
    step: str
    sub_group_key: str
    rejected: bool
    """True: rejected after the change (accepted before); False: the other way round."""
    message: str
    """The rejecting decision (after the change if now rejected, before it if accepted)."""


@dataclass(frozen=True, slots=True)
class WhatIf:
    """The plan with the specs applied, and what they change compared with the plan now."""

    changes: list[Change]
    before: Plan
    after: Plan

    @property
    def new_gaps(self) -> list[Gap]:
        """Gaps the change causes (absent, or for another reason, before it)."""
        seen = {(g.pipeline, g.step, g.sub_group_key, g.reason) for g in self.before.gaps}
        return [
            g
            for g in self.after.gaps
            if (g.pipeline, g.step, g.sub_group_key, g.reason) not in seen
        ]

    @property
    def qa_flips(self) -> list[QaFlip]:
        """Sub-groups whose decision in force the change flips (a changed `qa_gate`)."""
        before = {(r.pipeline, r.step, r.sub_group_key): r for r in self.before.rejected}
        after = {(r.pipeline, r.step, r.sub_group_key): r for r in self.after.rejected}
        flips = [QaFlip(*k, rejected=True, message=r.message) for k, r in after.items()
                 if k not in before]  # fmt: skip
        flips += [QaFlip(*k, rejected=False, message=r.message) for k, r in before.items()
                  if k not in after]  # fmt: skip
        return sorted(flips, key=lambda f: (f.pipeline, f.step, f.sub_group_key))

    @property
    def added_cpu_hours(self) -> float:
        """Estimated CPU-hours of the wave after the change minus before it."""
        return self.after.total_cpu_hours - self.before.total_cpu_hours


def _only(plan: Plan, pipeline: str | None) -> Plan:
    if pipeline is None:
        return plan
    return Plan(
        plan.evaluated_at,
        [g for g in plan.gaps if g.pipeline == pipeline],
        [c for c in plan.costs if c.pipeline == pipeline],
        [c for c in plan.retry_costs if c.pipeline == pipeline],
        {k: v for k, v in plan.errors.items() if k == pipeline},
        [r for r in plan.rejected if r.pipeline == pipeline],
    )


def plan_with(
    session: Session,
    loaded: Sequence[LoadedSpec],
    now: dt.datetime,
    pipeline: str | None = None,
    *,
    user: str,
) -> WhatIf:
    """Plan as if `loaded` were applied; roll everything back (nothing is written)."""
    if pipeline is not None:
        in_files = any(p.name == pipeline for f in loaded for p in f.spec.pipelines)
        exists = session.scalar(select(m.Pipeline.id).where(m.Pipeline.name == pipeline))
        if not in_files and exists is None:
            raise CcatWmError(
                f"unknown pipeline {pipeline!r}: neither in the ops DB nor in the files"
            )
    try:
        before = make_plan(session, now, read_only=False)
        changes = apply_specs(session, loaded, user=user)
        after = make_plan(session, now, read_only=False)
    finally:
        session.rollback()
    return WhatIf(changes, _only(before, pipeline), _only(after, pipeline))
