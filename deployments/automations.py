"""The automation that marks dead flow runs Crashed (a self-hosted server does not).

A flow run's process sends a heartbeat event every `PREFECT_RUNNER_HEARTBEAT_FREQUENCY`
seconds (the work pools set 30). When a running flow run's heartbeats stop for
`MISSED_HEARTBEATS_S` without a final state, this proactive automation sets it Crashed,
so that the UI tells the truth; the ops DB runs it owned are adopted by the next flow
run that the trigger tick starts (their owner's advisory lock is free).
"""

from __future__ import annotations

from typing import Any

AUTOMATION_NAME = "ccat-wm: crash flow runs whose heartbeats stopped"
MISSED_HEARTBEATS_S = 90
"""Three missed heartbeats at the pools' 30 s frequency."""


def crash_automation() -> Any:
    """Return the automation (an `AutomationCore`) as `ccat-wm deploy` creates it."""
    from prefect.client.schemas.objects import StateType  # noqa: PLC0415 - heavy
    from prefect.events.actions import ChangeFlowRunState  # noqa: PLC0415
    from prefect.events.schemas.automations import (  # noqa: PLC0415
        AutomationCore,
        EventTrigger,
        Posture,
    )

    return AutomationCore(
        name=AUTOMATION_NAME,
        description=(
            "Created by ccat-wm deploy: a flow run that sent no heartbeat for "
            f"{MISSED_HEARTBEATS_S} s and did not finish is marked Crashed."
        ),
        enabled=True,
        trigger=EventTrigger(
            posture=Posture.Proactive,
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            for_each={"prefect.resource.id"},
            threshold=1,
            within=MISSED_HEARTBEATS_S,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {MISSED_HEARTBEATS_S} s: the flow run's process died.",
            )
        ],
    )


def sync_crash_automation(*, dry_run: bool = False) -> str:
    """Create the automation, or update it if it differs; return what was (would be) done."""
    from prefect.client.orchestration import get_client  # noqa: PLC0415 - heavy

    wanted = crash_automation()
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(AUTOMATION_NAME)
        if not existing:
            if not dry_run:
                client.create_automation(wanted)
            return "create"
        current = existing[0]
        fields = ("trigger", "actions", "enabled", "description")
        if all(getattr(current, f) == getattr(wanted, f) for f in fields):
            return "unchanged"
        if not dry_run:
            client.update_automation(current.id, wanted)
        return "update"
