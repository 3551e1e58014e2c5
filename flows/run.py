"""Start a pipeline flow run from this process (`ccat-wm run`, `ccat-wm demo`).

With `PREFECT_API_URL` unset this uses Prefect's ephemeral local server, which the
first flow run starts by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ccat_wm.execution.report import RunRow, run_rows
from ccat_wm.execution.waves import pipeline_by_name
from flows.pipeline import flow_for


@dataclass(frozen=True, slots=True)
class FlowRunResult:
    """How a pipeline flow run ended and the runs it executed."""

    flow_run_id: str
    state: str
    """Prefect's state name (Completed, Failed, ...)."""
    message: str
    runs: list[RunRow]

    @property
    def failed(self) -> bool:
        """True when the flow run did not complete."""
        return self.state != "Completed"


def run_pipeline(
    engine: Engine,
    pipeline: str,
    *,
    sub_groups: list[str] | None = None,
    force: bool = False,
    manual: bool = True,
) -> FlowRunResult:
    """Run the pipeline's flow now and wait for it; the pipeline is checked first."""
    with Session(engine) as session:
        pipeline_by_name(session, pipeline)  # unknown pipeline: a clear error before Prefect starts
    state: Any = flow_for(pipeline)(
        pipeline=pipeline, sub_groups=sub_groups, force=force, manual=manual, return_state=True
    )
    flow_run_id = str(state.state_details.flow_run_id)
    with Session(engine) as session:
        rows = run_rows(session, flow_run=flow_run_id)
    return FlowRunResult(flow_run_id, state.name or state.type.value, state.message or "", rows)
