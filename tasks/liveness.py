"""Flow runs whose process died: marked Crashed by the trigger tick, never a finished one.

A flow run started by a worker sends a `prefect.flow-run.heartbeat` event every
`PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds (the work pools set 30) while it runs. When
its host dies nobody reports the end, and the UI would show it Running forever. Each
trigger tick (and `ccat-wm trigger`) reads the Running flow runs and the newest
heartbeat of each; one that did send heartbeats but none for `MISSED_HEARTBEATS_S` is
set Crashed (an ordinary, non-forced state change: a run that finished meanwhile keeps
its final state). The ops DB runs it owned are adopted by the pipeline's next flow run
(their claim is dead: its lock is free).

Prefect's documented alternative, a proactive automation on heartbeats, also fires for
flow runs that completed normally when a heartbeat reaches the server after their
final state (Prefect issues 18653 and 21932); its failed actions are false alarms in the
event feed. This check looks at the state first, so it fires only for a silent Running
flow run.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed

HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
MISSED_HEARTBEATS_S = 90.0
"""Three missed heartbeats at the pools' 30 s frequency: the default of the setting
`CCAT_WM_LIVENESS_S` (`ccat_wm.settings.Settings.liveness_s`)."""
MAX_CHECKED = 200
"""Running flow runs read per check (a site has a handful)."""

LOG = logging.getLogger(__name__)


def last_heartbeat(client: SyncPrefectClient, flow_run_id: UUID, since: dt.datetime) -> Any:
    """Return the time of the newest heartbeat of a flow run since `since` (None: none)."""
    response = client.request(
        "POST",
        "/events/filter",
        json={
            "filter": {
                "occurred": {"since": since.isoformat()},
                "event": {"name": [HEARTBEAT_EVENT]},
                "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
                "order": "DESC",
            },
            "limit": 1,
        },
    )
    events = response.json().get("events") or []
    return dt.datetime.fromisoformat(events[0]["occurred"]) if events else None


def crash_silent_flow_runs(
    now: dt.datetime | None = None, *, missed_s: float = MISSED_HEARTBEATS_S
) -> list[str]:
    """Set Crashed every Running flow run whose heartbeats stopped `missed_s` ago; return ids."""
    now = now or dt.datetime.now(dt.UTC)
    crashed: list[str] = []
    with get_client(sync_client=True) as client:
        running = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
            ),
            limit=MAX_CHECKED,
        )
        for flow_run in running:
            since = flow_run.start_time or flow_run.created or now - dt.timedelta(days=1)
            beat = last_heartbeat(client, flow_run.id, since)
            if beat is None or (now - beat).total_seconds() < missed_s:
                continue  # never sent heartbeats (not judged here), or alive
            result: Any = client.set_flow_run_state(
                flow_run.id,
                Crashed(
                    message=f"No heartbeat since {beat:%Y-%m-%d %H:%M:%S} UTC "
                    f"({missed_s:.0f} s without one): the flow run's process died."
                ),
            )
            if result.state is not None and result.state.type is StateType.CRASHED:
                crashed.append(str(flow_run.id))
                LOG.warning("flow run %s (%s) sent no heartbeat since %s: marked Crashed",
                            flow_run.name, flow_run.id, beat)  # fmt: skip
    return crashed
