"""Shell completion of names from the ops DB: pipelines, steps and locations.

Click completes commands and options itself (`_CCAT_WM_COMPLETE=bash_source ccat-wm`,
README "Shell completion"); these functions complete the values people type most. A
completion never fails loudly: an unreachable ops DB completes nothing.
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem


def _names(column: Any, *where: Any) -> list[str]:
    """Return the distinct values of `column`, sorted; nothing when the ops DB is away."""
    try:
        from sqlalchemy import select

        from ccat_wm.cli.common import engine_for
        from ccat_wm.settings import load_settings

        with engine_for(load_settings(), require_schema=False).connect() as conn:
            return sorted(set(conn.scalars(select(column).where(*where))))
    except Exception:  # a completion prints no error
        return []


def pipelines(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Complete a pipeline's name."""
    from ccat_ops_db import models as m

    del ctx, param
    return [CompletionItem(n) for n in _names(m.Pipeline.name) if n.startswith(incomplete)]


def steps(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Complete a step's name (of the pipeline given before it, if any)."""
    from sqlalchemy import select

    from ccat_ops_db import models as m

    del param
    pipeline = ctx.params.get("pipeline")
    where = []
    if pipeline:
        ids = select(m.Pipeline.id).where(m.Pipeline.name == pipeline).scalar_subquery()
        where.append(m.ReductionStep.pipeline_id == ids)
    names = _names(m.ReductionStep.name, *where)
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def locations(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Complete a data location's name."""
    from ccat_ops_db import models as m

    del ctx, param
    return [CompletionItem(n) for n in _names(m.DataLocation.name) if n.startswith(incomplete)]
