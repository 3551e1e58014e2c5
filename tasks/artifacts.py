"""Prefect tasks that publish what the UI shows of a pipeline: artifacts.

A pipeline flow run publishes its runs, products and failures; the pipeline's overview
(`<pipeline>-overview`, one stable key) is published by every flow run and by every
trigger tick that touched the pipeline, so its latest version is the pipeline now.
"""

from __future__ import annotations

import datetime as dt

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ccat_wm.execution.failures import failures_message, flow_run_failures
from ccat_wm.execution.overview import overview_markdown, overview_picture, pipeline_overview
from ccat_wm.execution.report import artifact_rows, products_markdown, run_table
from tasks.runs import BOOKKEEPING, executor


def artifact_key(pipeline: str) -> str:
    """Return the prefix of a pipeline's artifact keys (Prefect allows `[a-z0-9-]`)."""
    return "".join(c if c.isalnum() else "-" for c in pipeline.lower())


def _publish_overview(pipeline: str) -> None:
    with executor().session() as session:
        overview = pipeline_overview(session, pipeline, dt.datetime.now(dt.UTC))
    create_markdown_artifact(
        markdown=overview_markdown(overview, picture=overview_picture(overview)),
        key=f"{artifact_key(pipeline)}-overview",
        description=f"{pipeline} at a glance: per step, sub-groups current, due, in flight, failed",
    )


@task(name=f"{BOOKKEEPING}publish-overview", cache_policy=NO_CACHE)
def publish_overview(pipeline: str) -> None:
    """Publish the pipeline's overview artifact (a trigger tick that touched it)."""
    _publish_overview(pipeline)


@task(name=f"{BOOKKEEPING}publish-artifacts", cache_policy=NO_CACHE)
def publish_artifacts(pipeline: str, claim_as: str, not_run: int = 0) -> str | None:
    """Publish the flow run's table of runs, its failures and a summary of its products.

    A large wave's table lists `ARTIFACT_ROWS` runs, those that did not complete first.
    The failures table names each failed sub-group's step, key, kind, reason, attempts,
    log and the command that retries it. Returns the flow run's message when runs failed
    (`failures_message`, counting the `not_run` follow-ups apart), else None.
    """
    with executor().session() as session:
        rows, total = artifact_rows(session, claim_as)
        markdown = products_markdown(session, claim_as)
        failures = flow_run_failures(session, claim_as)
    key = artifact_key(pipeline)
    description = f"Runs of {pipeline} in this flow run"
    if total > len(rows):
        description += (
            f": {len(rows)} of {total}, those that did not complete first "
            f"(ccat-wm status {pipeline} --limit {total} lists them all)"
        )
    create_table_artifact(table=run_table(rows), key=f"{key}-runs", description=description)
    create_markdown_artifact(markdown=markdown, key=f"{key}-products", description="Products")
    _publish_overview(pipeline)
    if failures:
        create_table_artifact(
            table=[f.as_row() for f in failures],
            key=f"{key}-failures",
            description=(
                f"Sub-groups of {pipeline} that failed in this flow run: fix the cause, then "
                "press Retry on the flow run, or run the command of a row"
            ),
        )
    return failures_message(failures, total, not_run) if failures else None
