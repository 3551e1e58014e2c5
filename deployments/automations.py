"""The heartbeat automation that earlier versions created, and its removal.

Earlier versions of `ccat-wm deploy` created a proactive Prefect automation that set a
flow run Crashed when its heartbeats stopped. Prefect also fires it for flow runs that
completed normally when a heartbeat reaches the server after their final state (Prefect
issues 18653 and 21932); every such firing is an `automation.action.failed` event, a
false alarm. Dead flow runs are now marked Crashed by the trigger tick, which checks the
state first (`tasks.liveness`), and `ccat-wm deploy` removes the old automation.
"""

from __future__ import annotations

AUTOMATION_NAME = "ccat-wm: crash flow runs whose heartbeats stopped"


def remove_crash_automation(*, dry_run: bool = False) -> str:
    """Delete the old automation if the server has it; return `removed` or `absent`."""
    from prefect.client.orchestration import get_client  # noqa: PLC0415 - heavy

    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(AUTOMATION_NAME)
        if not dry_run:
            for automation in existing:
                client.delete_automation(automation.id)
    return "removed" if existing else "absent"
