"""The kept inputs of downstream sub-groups: summed from their members' current runs.

A downstream sub-group's inputs are the products of its members' current runs; they
are summed again only for the sub-groups whose members' runs changed (`reread`), and
read from `evaluation_downstream` for the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import any_, delete, insert, select, text

from ccat_wm.gaps.kept_scope import DOWNSTREAM, KeptScope, key_array, upstream_pairs
from ccat_wm.gaps.model import GroupRow

_DOWNSTREAM = text("""
SELECT m.sub_group_key,
       coalesce(sum(c.product_count) FILTER (WHERE c.qa_rejected IS NOT TRUE), 0),
       coalesce(sum(c.product_hash_sum) FILTER (WHERE c.qa_rejected IS NOT TRUE), 0),
       max(coalesce(c.finished_at, c.updated_at)),
       min(coalesce(c.finished_at, c.updated_at))
         FILTER (WHERE own.id IS NULL OR coalesce(c.finished_at, c.updated_at) > own.created_at)
FROM evaluation_member m
JOIN unnest(CAST(:up_index AS int[]), CAST(:up_step AS bigint[])) AS s(idx, step_id)
  ON s.idx = m.upstream_index
LEFT JOIN executed_reduction_step c
  ON c.is_current AND c.reduction_step_id = s.step_id AND c.sub_group_key = m.upstream_key
LEFT JOIN executed_reduction_step own
  ON own.is_current AND own.reduction_step_id = :step_id AND own.sub_group_key = m.sub_group_key
WHERE m.pipeline_id = :pipeline AND m.step_index = :index
  AND m.sub_group_key = ANY(CAST(:keys AS text[]))
GROUP BY m.sub_group_key, own.id, own.created_at
""")
"""A downstream sub-group's inputs: the products of its members' current runs that no
quality decision rejects, as the full statement (`pipeline_query._downstream_part`)
sums them."""


class KeptDownstream(KeptScope):
    """Reads and keeps the inputs of a pipeline's downstream sub-groups."""

    def downstream_rows(self, index: int, keys: set[str], reread: set[str]) -> list[GroupRow]:
        """Return one row per sub-group `keys` of a downstream step, as the snapshot has it.

        The inputs of the sub-groups `reread` are summed again from their members' current
        runs (and kept); the others' did not change and are read from what was kept.
        """
        kept: list[tuple[Any, ...]] = []
        if keys - reread:
            query = select(
                DOWNSTREAM.sub_group_key, DOWNSTREAM.inputs, DOWNSTREAM.hash_sum,
                DOWNSTREAM.last_change, DOWNSTREAM.oldest_unprocessed,
            ).where(
                DOWNSTREAM.pipeline_id == self.pipeline_id,
                DOWNSTREAM.step_index == index,
                DOWNSTREAM.sub_group_key == any_(key_array(keys - reread)),
            )  # fmt: skip
            kept = [tuple(row) for row in self.session.execute(query)]
        # A sub-group nothing was kept for (new) is read too.
        reread = reread | (keys - reread - {row[0] for row in kept})
        fresh: list[tuple[Any, ...]] = []
        if reread:
            names = [s.name for s in self.steps]
            upstream = [names.index(u) for u in self.steps[index].upstream]
            params = {
                "up_index": upstream,
                "up_step": [self.steps[u].id for u in upstream],
                "step_id": self.steps[index].id,
                "pipeline": self.pipeline_id,
                "index": index,
                "keys": sorted(reread),
            }
            fresh = [tuple(row) for row in self.session.execute(_DOWNSTREAM, params)]
            self._keep_downstream(index, reread, fresh)
        below = [d for d, u in upstream_pairs(self.steps) if u == index]
        inside = {  # the sub-group of each direct downstream step holding each key
            down: {
                up_key: key for up_key, key in self.session.execute(self.members(down, index, keys))
            }
            for down in below
        }
        rows = []
        for key, count, hash_sum, last, oldest in [*fresh, *kept]:
            row_keys: list[str | None] = [None] * len(self.steps)
            row_keys[index] = key
            for down in below:
                row_keys[down] = inside[down].get(key)
            rows.append(
                GroupRow(index, key, tuple(row_keys), int(count), int(hash_sum), last, oldest)
            )
        return rows

    def _keep_downstream(
        self, index: int, keys: set[str] | None, rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """Replace the kept inputs of step `index`'s sub-groups `keys` (None: all of them)."""
        where = [DOWNSTREAM.pipeline_id == self.pipeline_id, DOWNSTREAM.step_index == index]
        if keys is not None:
            where.append(DOWNSTREAM.sub_group_key == any_(key_array(keys)))
        self.session.execute(delete(DOWNSTREAM).where(*where))
        if rows:
            self.session.execute(
                insert(DOWNSTREAM),
                [
                    {
                        "pipeline_id": self.pipeline_id, "step_index": index,
                        "sub_group_key": key, "inputs": count, "hash_sum": hash_sum,
                        "last_change": last, "oldest_unprocessed": oldest,
                    }
                    for key, count, hash_sum, last, oldest in rows
                ],
            )  # fmt: skip

    def keep_downstream(self, rows: Sequence[Sequence[GroupRow]]) -> None:
        """Keep the inputs of every downstream sub-group of a full snapshot's rows."""
        for index, step in enumerate(self.steps):
            if step.upstream:
                self._keep_downstream(
                    index,
                    None,
                    [(r.key, r.inputs, r.hash_sum, r.last_change, r.oldest_unprocessed)
                     for r in rows[index]],
                )  # fmt: skip
