"""Write the declared sites: set-based, since a deployment may declare 100,000 of them."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ARRAY, String, bindparam, cast, func, insert, select, update
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.spec.changes import Change, short_value
from ccat_wm.spec.loader import LoadedSpec


def write_sites(session: Session, loaded: Sequence[LoadedSpec]) -> list[Change]:
    """Create and update the declared sites set-based; return the changes. No commit."""
    # long: one set-based upsert: read, insert the new, update the changed
    declared: dict[str, str | None] = {s.name: s.description for f in loaded for s in f.spec.sites}
    for f in loaded:
        for loc in f.spec.locations:
            declared.setdefault(loc.site, None)  # an undeclared site keeps its description
    names = list(declared)
    table = m.table_of(m.Site)
    existing = dict(
        session.execute(
            select(m.Site.name, m.Site.description).where(
                m.Site.name == func.any(cast(names, ARRAY(String)))
            )
        ).all()
    )
    created = [n for n in names if n not in existing]
    changed = {
        n: d for n, d in declared.items() if n in existing and d is not None and existing[n] != d
    }
    if created:
        rows = (
            func.unnest(
                cast(created, ARRAY(String)),
                cast([declared[n] or "" for n in created], ARRAY(String)),
            )
            .table_valued("name", "description")
            .render_derived()
        )
        session.execute(
            insert(table).from_select(
                ["name", "description"], select(rows.c.name, rows.c.description)
            )
        )
    if changed:
        session.execute(
            update(table).where(table.c.name == bindparam("site_name")),
            [{"site_name": n, "description": d} for n, d in changed.items()],
        )
    changes = [Change("create", "site", n) for n in created]
    changes.extend(
        Change(
            "update",
            "site",
            n,
            (f"description: {short_value(existing[n])} -> {short_value(d)}",),
        )
        for n, d in changed.items()
    )
    return changes
