"""A run's own record of what it used (RunSnapshot), written once when it starts.

Lineage, later attempts and `ccat-wm reproduce` read this copy rather than the
current config and software rows, so editing a config never rewrites what an old run
is said to have used; the database refuses any change to it (migration 0005).

Secrets (`ccat_wm.execution.secrets`): the value of a secret-named variable, of one the
config lists in `secret_env`, and the password inside a URL or DSN value are never copied
into a snapshot; the name is, in `withheld_environment`. A later attempt takes such a
value from the current config.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

from sqlalchemy import Connection, Insert
from sqlalchemy.dialects.postgresql import insert

from ccat_ops_db import models as m
from ccat_wm.execution.context import RunContext
from ccat_wm.execution.secrets import split_secrets


@lru_cache(maxsize=1)
def _insert() -> Insert:
    return insert(m.RunSnapshot).on_conflict_do_nothing(
        index_elements=[m.RunSnapshot.executed_reduction_step_id]
    )


def record_snapshot(conn: Connection, ctx: RunContext) -> None:
    """Record what run `ctx` is about to use, unless it has its snapshot already.

    Call it in the transaction that loaded `ctx` (and moved the run to STAGING_DATA),
    so that the snapshot is what the run really uses.
    """
    if ctx.snapshot_recorded:
        return
    environment, withheld = split_secrets(ctx.environment, ctx.secret_env)
    conn.execute(
        _insert(),
        {
            "executed_reduction_step_id": ctx.run_id,
            "origin": m.SnapshotOrigin.RECORDED,
            "unknown": [],
            "recorded_at": dt.datetime.now(dt.UTC),
            "location": ctx.location.name,
            "backend": ctx.location.backend,
            "runtime": ctx.location.runtime,
            "software": ctx.software,
            "software_tag": ctx.version_tag,
            "image_repository": ctx.repository,
            "image_digest": ctx.digest,
            "config_name": ctx.config_name,
            "parameters": ctx.parameters,
            "environment": environment,
            "withheld_environment": withheld,
            "command_template": ctx.command_template,
            "resources": ctx.resources,
        },
    )
