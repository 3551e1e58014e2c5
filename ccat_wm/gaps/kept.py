"""What incremental evaluation keeps per pipeline, and the reads it makes of only what changed.

Three tables (models in `ccat_ops_db.models.evaluation`), all derived data:

- `evaluation_fine`: the selected packages aggregated per scan (and module, where a
  key needs it), with every step's key as a tag `<pipeline>:<step index>:<key>`;
- `evaluation_member`: which upstream sub-group lies inside which downstream one;
- `evaluation_gap`: the gaps of the last evaluation, with what their timing needs.

`KeptEvaluation` maintains them and builds, for a set of dirty sub-groups, the rows the
full snapshot would hold for them (`ccat_wm.gaps.snapshot`), reading only those.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    String,
    and_,
    any_,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, array
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ccat_wm.gaps.evaluate import Timing
from ccat_wm.gaps.kept_downstream import KeptDownstream
from ccat_wm.gaps.kept_scope import (
    DOWNSTREAM,
    FINE,
    FINE_LEVEL,
    KEPT,
    MEMBER,
    PACKAGE,
    REASONS,
    RUN,
    Pair,
    key_array,
    tag,
    upstream_pairs,
)
from ccat_wm.gaps.model import CurrentRun, Gap, GroupRow
from ccat_wm.gaps.pipeline_query import package_groups
from ccat_wm.selection.query import (
    dimension_joins,
    key_expression,
    package_foreign_keys,
    selection,
)

_FINE_COLUMNS = [
    "pipeline_id", "executed_obs_unit_id", "instrument_module_id", "inputs", "hash_sum",
    "last_change", "tags",
]  # fmt: skip
_MEMBER_COLUMNS = ["pipeline_id", "step_index", "sub_group_key", "upstream_index", "upstream_key"]


def _fine_id(scan: Any, module: Any) -> Any:
    """Return the SQL of a fine row's `evaluation_member.upstream_key`: `<scan>:<module>`."""
    return cast(scan, String) + literal(":", String) + cast(module, String)


def _fine_rows(where: Any) -> Any:
    return (
        select(FINE.tags, FINE.executed_obs_unit_id, FINE.instrument_module_id)
        .where(where)
        .subquery()
    )


_DELETE_UNHELD_MEMBERS = text("""
DELETE FROM evaluation_member m
USING unnest(CAST(:down AS int[]), CAST(:down_key AS text[]), CAST(:up AS int[]),
             CAST(:up_key AS text[])) AS g(down, down_key, up, up_key)
WHERE m.pipeline_id = :pipeline AND m.step_index = g.down AND m.sub_group_key = g.down_key
  AND m.upstream_index = g.up AND m.upstream_key = g.up_key
  AND NOT EXISTS (
    SELECT 1 FROM evaluation_fine f
    WHERE f.pipeline_id = :pipeline
      AND f.tags @> CAST(ARRAY[:pipeline || ':' || g.down || ':' || g.down_key,
                               :pipeline || ':' || g.up || ':' || g.up_key] AS varchar[]))
""")
"""Forget the member pairs no fine row holds any more (tags are `varchar[]`: the array
built here is cast to it, as `@>` compares arrays of one type only)."""


class KeptEvaluation(KeptDownstream):
    """One pipeline's kept evaluation: its members, root rows and gaps (inputs: below)."""

    def _fine_select(self, scans: list[int] | None) -> Any:
        """Select the fine rows (of `scans` only, unless None) as the table holds them."""
        dims = sorted({d for s in self.steps for d in s.group_by})
        columns = sorted({*package_foreign_keys(dims), "executed_obs_unit_id"})
        chosen = None
        if scans is not None:
            chosen = PACKAGE.executed_obs_unit_id == any_(cast(scans, ARRAY(BigInteger)))
        packages = package_groups(self.grouping, columns, chosen)
        module = (
            packages.c.instrument_module_id
            if "instrument_module_id" in columns
            else literal(0, BigInteger)
        )
        tags = [
            literal(tag(self.pipeline_id, i, ""), String) + key_expression(s.group_by)
            for i, s in enumerate(self.steps)
        ]
        return select(
            literal(self.pipeline_id, BigInteger),
            packages.c.executed_obs_unit_id,
            module,
            packages.c.n,
            packages.c.h,
            packages.c.last_change,
            array(tags, type_=String),  # type: ignore[misc]
        ).select_from(dimension_joins(packages, dims))

    def _insert_members(self, fine: Any) -> set[Pair]:
        """Insert the members of the fine rows `fine` selects (tags, scan and module).

        Pairs of sub-groups for every dependency, and for every root step its sub-groups'
        fine rows (`upstream_index` -1, `upstream_key` `<scan>:<module>`). Returns the
        pairs of sub-groups that were not members before.
        """
        inserted: set[Pair] = set()
        for down, up in upstream_pairs(self.steps):
            source = select(
                literal(self.pipeline_id, BigInteger),
                literal(down, Integer),
                func.substr(fine.c.tags[down + 1], len(tag(self.pipeline_id, down, "")) + 1),
                literal(up, Integer),
                func.substr(fine.c.tags[up + 1], len(tag(self.pipeline_id, up, "")) + 1),
            ).distinct()
            statement = (
                pg_insert(MEMBER)
                .from_select(_MEMBER_COLUMNS, source)
                .on_conflict_do_nothing()
                .returning(MEMBER.sub_group_key, MEMBER.upstream_key)
            )
            inserted.update((down, j, up, u) for j, u in self.session.execute(statement))
        for root in (i for i, s in enumerate(self.steps) if not s.upstream):
            source = select(
                literal(self.pipeline_id, BigInteger),
                literal(root, Integer),
                func.substr(fine.c.tags[root + 1], len(tag(self.pipeline_id, root, "")) + 1),
                literal(FINE_LEVEL, Integer),
                _fine_id(fine.c.executed_obs_unit_id, fine.c.instrument_module_id),
            )
            self.session.execute(
                pg_insert(MEMBER).from_select(_MEMBER_COLUMNS, source).on_conflict_do_nothing()
            )
        return inserted

    def rebuild(self) -> None:
        """Derive the fine rows and members from the whole history (gaps: `store`)."""
        for table in (FINE, MEMBER, DOWNSTREAM, KEPT):
            self.session.execute(delete(table).where(table.pipeline_id == self.pipeline_id))
        self.session.execute(insert(FINE).from_select(_FINE_COLUMNS, self._fine_select(None)))
        self._insert_members(_fine_rows(FINE.pipeline_id == self.pipeline_id))

    def refresh_scans(self, scans: set[int], dirty: list[set[str]]) -> list[set[str]]:
        """Re-aggregate the changed scans; add the keys they were and are in to `dirty`.

        Returns, per step, the downstream sub-groups whose inputs may have changed: they
        lost a member, or gained one that has a current run (a new scan has none).
        """
        ids = cast(sorted(scans), ARRAY(BigInteger))
        mine = and_(FINE.pipeline_id == self.pipeline_id, FINE.executed_obs_unit_id == any_(ids))
        removed = self.session.execute(
            delete(FINE)
            .where(mine)
            .returning(FINE.tags, FINE.executed_obs_unit_id, FINE.instrument_module_id)
        ).all()
        self.session.execute(
            delete(MEMBER).where(
                MEMBER.pipeline_id == self.pipeline_id,
                MEMBER.upstream_index == FINE_LEVEL,
                MEMBER.upstream_key == any_(key_array({f"{r[1]}:{r[2]}" for r in removed})),
            )
        )
        added = self.session.scalars(
            insert(FINE)
            .from_select(_FINE_COLUMNS, self._fine_select(sorted(scans)))
            .returning(FINE.tags)
        ).all()
        for tags in [*(r[0] for r in removed), *added]:
            for index, value in enumerate(tags):
                dirty[index].add(self.untag(index, value))
        joined = self._insert_members(_fine_rows(mine))
        gone = sorted(self._pairs([r[0] for r in removed]) - self._pairs(added))
        if gone:  # pairs only the removed rows held, unless another fine row holds them
            self.session.execute(
                _DELETE_UNHELD_MEMBERS,
                {
                    "pipeline": self.pipeline_id,
                    "down": [p[0] for p in gone],
                    "down_key": [p[1] for p in gone],
                    "up": [p[2] for p in gone],
                    "up_key": [p[3] for p in gone],
                },
            )
        regrouped: list[set[str]] = [set() for _ in self.steps]
        for down, key, _, _ in gone:
            regrouped[down].add(key)
        for down, up in upstream_pairs(self.steps):
            new = {u: j for d, j, i, u in joined if (d, i) == (down, up)}
            for upstream_key in self.current_runs(up, set(new)) if new else ():
                regrouped[down].add(new[upstream_key])
        return regrouped

    def _pairs(self, rows: Sequence[list[str]]) -> set[Pair]:
        return {
            (down, self.untag(down, tags[down]), up, self.untag(up, tags[up]))
            for tags in rows
            for down, up in upstream_pairs(self.steps)
        }

    def propagate(self, dirty: list[set[str]]) -> None:
        """Make dirty every downstream sub-group holding a dirty upstream one."""
        for down, up in upstream_pairs(self.steps):
            if dirty[up]:
                rows = self.session.execute(self.members(down, up, dirty[up]))
                dirty[down].update(key for _, key in rows)

    def current_runs(self, index: int, keys: set[str]) -> dict[str, CurrentRun]:
        """Return the current runs of step `index`'s sub-groups `keys`."""
        query = select(
            RUN.sub_group_key, RUN.id, RUN.reduction_software_version_id,
            RUN.config_fingerprint, RUN.input_fingerprint, RUN.created_at,
            func.coalesce(RUN.finished_at, RUN.updated_at),
        ).where(
            RUN.reduction_step_id == self.steps[index].id,
            RUN.is_current,
            RUN.sub_group_key == any_(key_array(keys)),
        )  # fmt: skip
        return {row[0]: CurrentRun(*row[1:]) for row in self.session.execute(query)}

    def root_rows(
        self, index: int, keys: set[str], current: dict[str, CurrentRun]
    ) -> list[GroupRow]:
        """Return the fine rows of a root step's sub-groups `keys`, as the snapshot has them."""
        member = and_(
            MEMBER.pipeline_id == self.pipeline_id,
            MEMBER.step_index == index,
            MEMBER.sub_group_key == any_(key_array(keys)),
            MEMBER.upstream_index == FINE_LEVEL,
        )
        query = (
            select(
                FINE.executed_obs_unit_id, FINE.instrument_module_id, FINE.inputs,
                FINE.hash_sum, FINE.last_change, FINE.tags,
            )
            .join(MEMBER, and_(  # the fine row's primary key, from `<scan>:<module>`
                FINE.pipeline_id == MEMBER.pipeline_id,
                FINE.executed_obs_unit_id
                == cast(func.split_part(MEMBER.upstream_key, ":", 1), BigInteger),
                FINE.instrument_module_id
                == cast(func.split_part(MEMBER.upstream_key, ":", 2), BigInteger),
            ))
            .where(member)
        )  # fmt: skip
        fine = self.session.execute(query).all()
        oldest: dict[tuple[int, int], dt.datetime] = {}
        if self.steps[index].max_wait_seconds is not None and fine:
            oldest = self._oldest_unprocessed(index, fine, current)
        rows = []
        for scan, module, inputs, hash_sum, last_change, row_tags in fine:
            row_keys = tuple(self.untag(i, t) for i, t in enumerate(row_tags))
            rows.append(
                GroupRow(
                    index, row_keys[index], row_keys, int(inputs), int(hash_sum), last_change,
                    oldest.get((scan, module)),
                )
            )  # fmt: skip
        return rows

    def _oldest_unprocessed(
        self, index: int, fine: Sequence[Any], current: dict[str, CurrentRun]
    ) -> dict[tuple[int, int], dt.datetime]:
        """Per fine row: ingest time of its oldest package the current run has not seen."""
        sel = selection(self.grouping.filter_rules, self.grouping.instrument_module_id, [])
        after = []
        for row in fine:
            run = current.get(self.untag(index, row.tags[index]))
            after.append(run.created_at if run else None)
        groups = (
            func.unnest(
                cast([row.executed_obs_unit_id for row in fine], ARRAY(BigInteger)),
                cast([row.instrument_module_id for row in fine], ARRAY(BigInteger)),
                cast(after, ARRAY(DateTime(timezone=True))),
            )
            .table_valued("scan", "module", "after")
            .render_derived()
        )
        inside = and_(
            PACKAGE.executed_obs_unit_id == groups.c.scan,
            or_(groups.c.module == 0, PACKAGE.instrument_module_id == groups.c.module),
        )
        query = (
            select(groups.c.scan, groups.c.module, func.min(PACKAGE.created_at))
            .select_from(sel.from_clause.join(groups, inside))
            .where(sel.where, or_(groups.c.after.is_(None), PACKAGE.created_at > groups.c.after))
            .group_by(groups.c.scan, groups.c.module)
        )
        return {(scan, module): when for scan, module, when in self.session.execute(query)}

    def reread_inputs(self, changed_runs: list[set[str]], reread: list[set[str]]) -> None:
        """Add to `reread` the downstream sub-groups holding a sub-group whose runs changed."""
        for down, up in upstream_pairs(self.steps):
            if changed_runs[up]:
                rows = self.session.execute(self.members(down, up, changed_runs[up]))
                reread[down].update(key for _, key in rows)

    def blocked_from_outside(
        self, dirty: list[set[str]], unsettled: list[set[str]]
    ) -> dict[int, set[str]]:
        """Return the dirty downstream keys holding an unsettled upstream sub-group not dirty."""
        blocked: dict[int, set[str]] = defaultdict(set)
        for down, up in upstream_pairs(self.steps):
            outside = unsettled[up] - dirty[up]
            if dirty[down] and outside:
                rows = self.session.execute(self.members(down, up, outside))
                blocked[down].update(key for _, key in rows if key in dirty[down])
        return blocked

    def gaps(self, pipeline: str) -> list[tuple[int, Gap, Timing]]:
        """Return the kept gaps: step index, the gap (not timed: `retime`), its timing."""
        query = select(
            KEPT.step_index, KEPT.sub_group_key, cast(KEPT.reason, String), KEPT.ready,
            KEPT.inputs, KEPT.input_fingerprint, KEPT.last_change, KEPT.oldest_unprocessed,
        ).where(KEPT.pipeline_id == self.pipeline_id)  # fmt: skip
        names = [s.name for s in self.steps]
        return [
            (
                index,
                Gap(pipeline, names[index], key, REASONS[reason], ready, None, False, inputs,
                    fingerprint),
                Timing(last_change, oldest),
            )
            for index, key, reason, ready, inputs, fingerprint, last_change, oldest
            in self.session.execute(query)
        ]  # fmt: skip

    def store(self, dirty: list[set[str]] | None, gaps: Sequence[tuple[Gap, Timing]]) -> None:
        """Replace the kept gaps of the dirty sub-groups (all of them when `dirty` is None)."""
        if dirty is None:
            self.session.execute(delete(KEPT).where(KEPT.pipeline_id == self.pipeline_id))
        for index, keys in enumerate(dirty or []):
            if keys:
                self.session.execute(
                    delete(KEPT).where(
                        KEPT.pipeline_id == self.pipeline_id,
                        KEPT.step_index == index,
                        KEPT.sub_group_key == any_(key_array(keys)),
                    )
                )
        if not gaps:
            return
        position = {s.name: i for i, s in enumerate(self.steps)}
        rows = [
            {
                "pipeline_id": self.pipeline_id,
                "step_index": position[gap.step],
                "sub_group_key": gap.sub_group_key,
                "reason": gap.reason,
                "ready": gap.ready,
                "inputs": gap.inputs,
                "input_fingerprint": gap.input_fingerprint,
                "last_change": timing.last_change,
                "oldest_unprocessed": timing.oldest_unprocessed,
            }
            for gap, timing in gaps
        ]
        self.session.execute(insert(KEPT), rows)
