"""Prefect events the workflow manager emits, for the trigger deployments to react to."""

from __future__ import annotations

from collections.abc import Sequence

from prefect.events import emit_event
from prefect.events.worker import EventsWorker
from prefect.settings import PREFECT_API_URL

from ccat_wm.settings import RAW_DATA_EVENT

DRAIN_TIMEOUT_S = 10.0


def announce_raw_data(archive: str, packages: int, scans: Sequence[str]) -> bool:
    """Emit `ccat.raw-data.registered` for newly registered packages; False if no server.

    Without PREFECT_API_URL there is no server whose automations could react (the
    ephemeral one lives only as long as a flow run), so nothing is sent.
    """
    if not PREFECT_API_URL.value():
        return False
    emit_event(
        event=RAW_DATA_EVENT,
        resource={
            "prefect.resource.id": f"ccat.raw-data.{archive}",
            "prefect.resource.name": archive,
        },
        payload={
            "packages": packages,
            "scans": len(scans),
            "first_scan": scans[0] if scans else None,
            "last_scan": scans[-1] if scans else None,
        },
    )
    EventsWorker.drain_all(timeout=DRAIN_TIMEOUT_S)  # a CLI process exits right after
    return True
