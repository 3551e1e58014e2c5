"""`ccat-wm invalidate`: mark raw data, runs or products bad, and undo it (docs/provenance.md).

An invalidation is recorded with who, when and why, and never deleted. While it is
active:

- an invalidated raw data package leaves every selection (`selection.query.not_invalidated`);
- every run the bad data flowed into stops being current: for a package, the runs
  that used it; for a run, the run; for a product, the run that made it (a run is the
  unit that is current or not); and, from those, every run downstream that used their
  products, recursively. They are recorded in `invalidated_run`; a run among them still
  in flight never becomes current when it completes (the database sees to it);
- the affected sub-groups become gaps with the reason `invalidated` (or, where the
  package was the sub-group's only input, the sub-group is gone).

`undo` records the undo on the invalidation and makes each affected sub-group's latest
COMPLETED run current again where no newer run has replaced it and no other active
invalidation covers it.

Invalidations are a set: a target named twice counts once, operators who invalidate
at the same moment take turns (a transaction-level advisory lock), and the database
allows one active invalidation per target (a unique partial index per kind), so the
second of two operators is told the target is already invalidated.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.errors import CcatWmError

INVALIDATION_LOCK = 0x0CCA7B1D
"""Advisory lock taken by `invalidate` and `undo_invalidation` (they take turns)."""


class TargetKind(enum.StrEnum):
    """What an invalidation marks bad."""

    RAW_PACKAGE = "raw data package"
    RUN = "run"
    PRODUCT = "product"


_COLUMN = {
    TargetKind.RAW_PACKAGE: "raw_data_package_id",
    TargetKind.RUN: "executed_reduction_step_id",
    TargetKind.PRODUCT: "data_product_id",
}
_TABLE = {
    TargetKind.RAW_PACKAGE: m.RawDataPackage,
    TargetKind.RUN: m.ExecutedReductionStep,
    TargetKind.PRODUCT: m.DataProduct,
}


@dataclass(frozen=True, slots=True)
class Target:
    """One thing to mark bad (or to un-mark)."""

    kind: TargetKind
    id: int

    def __str__(self) -> str:
        return f"{self.kind.value} {self.id}"


@dataclass(frozen=True, slots=True)
class StepImpact:
    """The runs of one step the invalidated data reached."""

    pipeline: str
    step: str
    runs: int
    current: int
    """Of those, runs that were current: their sub-groups must be re-made."""
    products: int
    """Products (but logs) of those current runs, which stop being current."""
    cpu_hours: float
    """CPU-hours those current runs took: the estimated cost of re-making them."""
    sub_groups: list[str] = field(default_factory=list)
    """Keys of the sub-groups whose current run it reached (they become gaps)."""
    product_paths: list[str] = field(default_factory=list)
    """Paths of those products."""


@dataclass(slots=True)
class InvalidationResult:
    """What `invalidate` (or its dry run, or its undo) did or would do."""

    targets: list[str]
    reason: str
    user: str
    dry_run: bool
    undo: bool = False
    invalidation_ids: list[int] = field(default_factory=list)
    impact: list[StepImpact] = field(default_factory=list)
    restored_runs: int = 0
    """Undo: runs made current again."""

    @property
    def cpu_hours(self) -> float:
        """Estimated CPU-hours to re-make everything no longer current."""
        return sum(i.cpu_hours for i in self.impact)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the total CPU-hours."""
        return {**asdict(self), "cpu_hours": self.cpu_hours}


def _check_targets(session: Session, targets: Sequence[Target]) -> None:
    """Refuse an unknown id, naming it (before anything is written)."""
    problems = []
    for kind in TargetKind:
        wanted = {t.id for t in targets if t.kind is kind}
        if not wanted:
            continue
        table = _TABLE[kind]
        found = set(session.scalars(select(table.id).where(table.id.in_(wanted))))  # type: ignore[attr-defined]
        problems += [f"no {kind.value} with id {i}" for i in sorted(wanted - found)]
    if problems:
        raise CcatWmError("; ".join(problems) + "; nothing was invalidated")


def _active(session: Session, targets: Sequence[Target]) -> dict[Target, int]:
    """Active invalidations of `targets`: target -> invalidation id."""
    mark = m.Invalidation
    out = {}
    for target in targets:
        column = getattr(mark, _COLUMN[target.kind])
        found = session.scalar(select(mark.id).where(column == target.id, mark.undone_at.is_(None)))
        if found is not None:
            out[target] = found
    return out


_REACHED = text(
    """
    WITH RECURSIVE reached(invalidation_id, run_id) AS (
        SELECT i.id, inp.executed_reduction_step_id
          FROM invalidation i
          JOIN executed_reduction_step_input inp ON inp.raw_data_package_id = i.raw_data_package_id
         WHERE i.id = ANY(:ids)
        UNION
        SELECT i.id, i.executed_reduction_step_id FROM invalidation i
         WHERE i.id = ANY(:ids) AND i.executed_reduction_step_id IS NOT NULL
        UNION
        SELECT i.id, p.executed_reduction_step_id
          FROM invalidation i JOIN data_product p ON p.id = i.data_product_id
         WHERE i.id = ANY(:ids)
        UNION
        SELECT r.invalidation_id, inp.executed_reduction_step_id
          FROM reached r
          JOIN data_product p ON p.executed_reduction_step_id = r.run_id
          JOIN executed_reduction_step_input inp ON inp.data_product_id = p.id
    )
    INSERT INTO invalidated_run (invalidation_id, executed_reduction_step_id)
    SELECT invalidation_id, run_id FROM reached
    """
)
"""Record every run the invalidations `ids` reach: seeds, then downstream through products."""


def _impact(session: Session, ids: list[int]) -> list[StepImpact]:
    """Count the reached runs per step, the current ones, their products and CPU-hours."""
    run, reached, step = m.ExecutedReductionStep, m.InvalidatedRun, m.ReductionStep
    products = (
        select(func.count())
        .where(
            m.DataProduct.executed_reduction_step_id == run.id,
            m.DataProduct.data_product_type != m.DataProductType.LOG,
        )
        .scalar_subquery()
    )
    runs = (
        select(run.id, run.is_current, run.cpu_hours, products.label("products"), step.step_order,
               step.name.label("step"), m.Pipeline.name.label("pipeline"), run.sub_group_key)
        .join(run.reduction_step)
        .join(step.pipeline)
        .where(run.id.in_(select(reached.executed_reduction_step_id).where(
            reached.invalidation_id.in_(ids))))
        .subquery()
    )  # fmt: skip
    current = runs.c.is_current
    rows = session.execute(
        select(
            runs.c.pipeline,
            runs.c.step,
            func.count(),
            func.count().filter(current),
            func.coalesce(func.sum(runs.c.products).filter(current), 0),
            func.coalesce(func.sum(runs.c.cpu_hours).filter(current), 0.0),
            func.array_agg(aggregate_order_by(runs.c.sub_group_key, runs.c.sub_group_key)).filter(
                current
            ),
        )
        .group_by(runs.c.pipeline, runs.c.step, runs.c.step_order)
        .order_by(runs.c.pipeline, runs.c.step_order)
    ).all()
    paths: dict[tuple[str, str], list[str]] = {}
    for pipeline, step_name, path in session.execute(
        select(runs.c.pipeline, runs.c.step, m.DataProduct.file_path)
        .join(m.DataProduct, m.DataProduct.executed_reduction_step_id == runs.c.id)
        .where(current, m.DataProduct.data_product_type != m.DataProductType.LOG)
        .order_by(m.DataProduct.file_path)
    ):
        paths.setdefault((pipeline, step_name), []).append(path)
    return [
        StepImpact(p, s, n, c, int(pn), float(h), list(keys or []), paths.get((p, s), []))
        for p, s, n, c, pn, h, keys in rows
    ]


def invalidate(
    session: Session, targets: Sequence[Target], reason: str, *, user: str, dry_run: bool
) -> InvalidationResult:
    """Mark `targets` bad in one transaction (rolled back for a dry run); see the module."""
    if not targets:
        raise CcatWmError("name what to invalidate: --raw-package, --run or --product ID")
    if not reason.strip():
        raise CcatWmError("--reason must say why the data is bad")
    targets = list(dict.fromkeys(targets))  # the same target twice is one invalidation
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": INVALIDATION_LOCK})
    _check_targets(session, targets)
    already = _active(session, targets)
    if already:
        raise CcatWmError(
            "; ".join(f"{t} is already invalidated (invalidation {i})" for t, i in already.items())
            + "; nothing was invalidated"
        )
    result = InvalidationResult([str(t) for t in targets], reason, user, dry_run)
    ids = list(
        session.scalars(
            insert(m.Invalidation).returning(m.Invalidation.id),
            [{_COLUMN[t.kind]: t.id, "reason": reason, "created_by": user} for t in targets],
        )
    )
    session.execute(_REACHED, {"ids": ids})
    result.invalidation_ids = ids
    result.impact = _impact(session, ids)
    reached = select(m.InvalidatedRun.executed_reduction_step_id).where(
        m.InvalidatedRun.invalidation_id.in_(ids)
    )
    run = m.ExecutedReductionStep
    session.execute(update(run).where(run.is_current, run.id.in_(reached)).values(is_current=False))
    if dry_run:
        session.rollback()
    else:
        session.commit()
    return result


_RESTORE = text(
    """
    UPDATE executed_reduction_step SET is_current = true
     WHERE id IN (
        SELECT DISTINCT ON (r.reduction_step_id, r.sub_group_key) r.id
          FROM executed_reduction_step r
          JOIN (SELECT DISTINCT x.reduction_step_id, x.sub_group_key
                  FROM invalidated_run ir
                  JOIN executed_reduction_step x ON x.id = ir.executed_reduction_step_id
                 WHERE ir.invalidation_id = ANY(:ids)) k
            ON k.reduction_step_id = r.reduction_step_id AND k.sub_group_key = r.sub_group_key
         WHERE r.status = 'COMPLETED'
         ORDER BY r.reduction_step_id, r.sub_group_key, r.id DESC)
       AND NOT is_current
       AND NOT EXISTS (
        SELECT 1 FROM invalidated_run ir JOIN invalidation i ON i.id = ir.invalidation_id
         WHERE ir.executed_reduction_step_id = executed_reduction_step.id
           AND i.undone_at IS NULL)
       AND NOT EXISTS (
        SELECT 1 FROM executed_reduction_step c
         WHERE c.reduction_step_id = executed_reduction_step.reduction_step_id
           AND c.sub_group_key = executed_reduction_step.sub_group_key AND c.is_current)
    """
)
"""Make each affected sub-group's latest COMPLETED run current again, if it is not still
invalidated and nothing is current there (a newer run may have replaced it)."""


def undo_invalidation(
    session: Session, targets: Sequence[Target], reason: str, *, user: str, dry_run: bool
) -> InvalidationResult:
    """Undo the active invalidations of `targets` (recorded, never deleted)."""
    if not targets:
        raise CcatWmError("name what to un-invalidate: --raw-package, --run or --product ID")
    targets = list(dict.fromkeys(targets))
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": INVALIDATION_LOCK})
    _check_targets(session, targets)
    active = _active(session, targets)
    missing = [str(t) for t in targets if t not in active]
    if missing:
        raise CcatWmError(
            f"{', '.join(missing)}: no active invalidation to undo; nothing was changed"
        )
    ids = sorted(active.values())
    result = InvalidationResult([str(t) for t in targets], reason, user, dry_run, undo=True)
    result.invalidation_ids = ids
    mark = m.Invalidation
    session.execute(
        update(mark)
        .where(mark.id.in_(ids))
        .values(undone_at=func.now(), undone_by=user, undo_reason=reason or None)
    )
    result.restored_runs = session.execute(_RESTORE, {"ids": ids}).rowcount  # type: ignore[attr-defined]
    result.impact = _impact(session, ids)
    if dry_run:
        session.rollback()
    else:
        session.commit()
    return result
