"""Turn eligible gaps into PENDING runs that record their reason and exact input set.

Idempotent and safe under concurrency, enforced by the database: runs are inserted with
`ON CONFLICT DO NOTHING` against the partial unique index that allows one in-flight run
per (step, sub-group), in a fixed order so that concurrent evaluators cannot deadlock.
The input rows are then inserted set-based, and the run's input fingerprint is
recomputed from the rows actually recorded, so fingerprint and input set always agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import (
    ColumnElement,
    Integer,
    String,
    TextClause,
    any_,
    case,
    cast,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql.dml import ReturningInsert
from sqlalchemy.sql.selectable import CTE, Subquery

from ccat_ops_db import models as m
from ccat_wm.gaps.model import Gap, GapReason, PipelineSnapshot, StepInfo
from ccat_wm.gaps.pipeline_query import current_runs_cte, fine_cte, key_column
from ccat_wm.selection.query import item_hash, key_expression, selection

RUN = m.ExecutedReductionStep
INPUT = m.ExecutedReductionStepInput


@dataclass(frozen=True, slots=True)
class CreatedRun:
    """A PENDING run this call created."""

    id: int
    step: str
    sub_group_key: str
    reason: GapReason


def _in_flight_index_where() -> TextClause:
    statuses = ", ".join(f"'{s.value}'" for s in m.UNFINISHED_STATUSES)
    return text(f"status IN ({statuses})")


def _id_in(column: InstrumentedAttribute[int], ids: list[int]) -> ColumnElement[bool]:
    """`column = ANY(:ids)` with one array parameter, however many ids.

    An expanding `IN (...)` sends one parameter per id, and PostgreSQL takes at most
    65,535 per statement: a wave of 100k new runs of one step exceeds that.
    """
    return column == any_(cast(ids, ARRAY(Integer)))


def _insert_runs(step: StepInfo, version_id: int, gaps: Sequence[Gap]) -> ReturningInsert[int, str]:
    """One INSERT .. SELECT FROM unnest(arrays) of a step's PENDING runs, in key order.

    Three array parameters, whatever the number of runs: a multi-row VALUES list would
    be a statement of its own size for every batch of 1,000 runs (a wave of 100,000
    sub-groups, and the driver parses each of those statements on the client).
    """
    rows = (
        func.unnest(
            cast([g.sub_group_key for g in gaps], ARRAY(String)),
            cast([g.reason.value for g in gaps], ARRAY(String)),
            cast([g.input_fingerprint for g in gaps], ARRAY(String)),
        )
        .table_valued("sub_group_key", "reason", "input_fingerprint", with_ordinality="ord")
        .render_derived()
    )
    source = select(
        literal(step.id),
        literal(version_id),
        literal(m.RunStatus.PENDING, RUN.status.type),
        rows.c.sub_group_key,
        cast(rows.c.reason, RUN.reason.type),
        rows.c.input_fingerprint,
        literal(step.config_fingerprint, String),
    ).order_by(rows.c.ord)
    columns = [
        "reduction_step_id", "reduction_software_version_id", "status", "sub_group_key",
        "reason", "input_fingerprint", "config_fingerprint",
    ]  # fmt: skip
    return (
        insert(RUN)
        .from_select(columns, source)
        .on_conflict_do_nothing(
            index_elements=["reduction_step_id", "sub_group_key"],
            index_where=_in_flight_index_where(),
        )
        .returning(RUN.id, RUN.sub_group_key)
    )


def create_runs(
    session: Session, snapshot: PipelineSnapshot, gaps: Sequence[Gap]
) -> list[CreatedRun]:
    """Create a PENDING run for every eligible gap that has none in flight; return them.

    Does not commit. A gap that another evaluator created a run for meanwhile is skipped.
    """
    created: list[CreatedRun] = []
    order = {s.name: i for i, s in enumerate(snapshot.steps)}
    due = sorted(
        (g for g in gaps if g.eligible and g.reason is not GapReason.FAILED),
        key=lambda g: (order[g.step], g.sub_group_key),
    )
    if not due:
        return created
    grouping = session.get_one(m.DataGrouping, snapshot.pipeline.data_grouping_id)
    for step in snapshot.steps:
        step_gaps = [g for g in due if g.step == step.name]
        if not step_gaps or step.run_version is None:
            continue
        statement = _insert_runs(step, step.run_version.id, step_gaps)
        new = {key: run_id for run_id, key in session.execute(statement)}
        if not new:
            continue
        new_runs = select(RUN.id, RUN.sub_group_key).where(_id_in(RUN.id, list(new.values())))
        if step.upstream:
            _record_product_inputs(
                session, grouping, snapshot.steps, order[step.name], new_runs.subquery()
            )
        else:
            _record_package_inputs(session, grouping, step.group_by, new_runs.subquery())
        _refresh_fingerprints(session, list(new.values()))
        created.extend(
            CreatedRun(new[g.sub_group_key], step.name, g.sub_group_key, g.reason)
            for g in step_gaps
            if g.sub_group_key in new
        )
    return created


def _record_package_inputs(
    session: Session, grouping: m.DataGrouping, group_by: Sequence[str], runs: Subquery
) -> None:
    """Record the selected packages inside each new run's sub-group."""
    sel = selection(grouping.filter_rules, grouping.instrument_module_id, group_by)
    source = (
        select(runs.c.id, m.RawDataPackage.id, m.RawDataPackage.checksum)
        .select_from(sel.from_clause.join(runs, runs.c.sub_group_key == key_expression(group_by)))
        .where(sel.where)
    )
    session.execute(
        insert(INPUT).from_select(
            ["executed_reduction_step_id", "raw_data_package_id", "checksum"], source
        )
    )


def _record_product_inputs(
    session: Session,
    grouping: m.DataGrouping,
    steps: Sequence[StepInfo],
    position: int,
    runs: Subquery,
) -> None:
    """Record the products of the current upstream runs inside each new run's sub-group.

    A run a quality decision rejects gives none: its data is in no downstream product.
    Every rejected current run of a step upstream (transitively) inside the sub-group
    is recorded as left out (`qa_exclusion`), for `lineage` to say so.
    """
    fine = fine_cte(grouping, steps)
    product = m.DataProduct
    names = [s.name for s in steps]
    for upstream in (names.index(u) for u in steps[position].upstream):
        pairs = _pairs(fine, upstream, position)
        current = current_runs_cte(steps[upstream])
        source = (
            select(runs.c.id, product.id, product.checksum)
            .select_from(
                pairs.join(runs, runs.c.sub_group_key == pairs.c.dk)
                .join(current, current.c.sub_group_key == pairs.c.uk)
                .join(product, product.executed_reduction_step_id == current.c.id)
            )
            .where(
                product.data_product_type != m.DataProductType.LOG,
                current.c.qa_rejected.is_not(True),  # a rejected run's products feed none
            )
        )
        session.execute(
            insert(INPUT).from_select(
                ["executed_reduction_step_id", "data_product_id", "checksum"], source
            )
        )
    for ancestor in _ancestors(steps, position):
        current = current_runs_cte(steps[ancestor])
        _record_exclusions(session, _pairs(fine, ancestor, position), runs, current)


def _pairs(fine: CTE, upstream: int, position: int) -> Subquery:
    """(upstream key `uk`, key `dk` of the step at `position`) of every sub-group pair."""
    return (
        select(fine.c[key_column(upstream)].label("uk"), fine.c[key_column(position)].label("dk"))
        .distinct()
        .subquery()
    )


def _ancestors(steps: Sequence[StepInfo], position: int) -> list[int]:
    """Return the positions of every step upstream of the one at `position`, transitively."""
    names = [s.name for s in steps]
    found: set[int] = set()
    frontier = [names.index(u) for u in steps[position].upstream]
    while frontier:
        index = frontier.pop()
        if index not in found:
            found.add(index)
            frontier += [names.index(u) for u in steps[index].upstream]
    return sorted(found)


def _record_exclusions(session: Session, pairs: Subquery, runs: Subquery, current: CTE) -> None:
    """Record the rejected current runs of one upstream step inside each new run's sub-group."""
    left_out = (
        select(runs.c.id, current.c.id)
        .select_from(
            pairs.join(runs, runs.c.sub_group_key == pairs.c.dk).join(
                current, current.c.sub_group_key == pairs.c.uk
            )
        )
        .where(current.c.qa_rejected.is_(True))
    )
    session.execute(
        insert(m.QaExclusion).from_select(
            ["executed_reduction_step_id", "excluded_run_id"], left_out
        )
    )


def _refresh_fingerprints(session: Session, run_ids: list[int]) -> None:
    digest = case(
        (
            INPUT.raw_data_package_id.is_not(None),
            item_hash("r", INPUT.raw_data_package_id, INPUT.checksum),
        ),
        else_=item_hash("p", INPUT.data_product_id, INPUT.checksum),
    )
    agg = (
        select(
            INPUT.executed_reduction_step_id.label("run_id"),
            func.count().label("n"),
            func.sum(digest).label("hash_sum"),
        )
        .where(_id_in(INPUT.executed_reduction_step_id, run_ids))
        .group_by(INPUT.executed_reduction_step_id)
        .subquery()
    )
    fingerprint = (
        literal("v1:", String)
        + func.cast(agg.c.n, String)
        + ":"
        + func.cast(agg.c.hash_sum, String)
    )
    session.execute(
        update(RUN).where(RUN.id == agg.c.run_id).values(input_fingerprint=fingerprint),
        execution_options={"synchronize_session": False},
    )
