"""Pipelines into `prefect.yaml` deployment entries: a pure function, checked against a golden file."""

from __future__ import annotations

from pathlib import Path

import yaml

from ccat_ops_db.models import TriggerType
from deployments.render import (
    PipelineDeploymentInfo,
    deployment_entry,
    merge_prefect_yaml,
    queue_name,
    render_deployments,
)
from deployments.work_pools import queue_priorities

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "deployments.yaml"
PIPELINES = [
    PipelineDeploymentInfo(
        "chai-ngc253", "ramses", TriggerType.CONTINUOUS, {}, True, 10, "chai-ngc253",
        ("calibrate", "baseline", "grid"),
    ),
    PipelineDeploymentInfo(
        "chai-nightly-maps", "ramses", TriggerType.CRON, {"cron": "0 4 * * *", "timezone": "America/Santiago"},
        True, 5, "chai-all", ("grid",),
    ),
    PipelineDeploymentInfo(
        "chai-paused", "ramses", TriggerType.CRON, {"cron": "30 2 * * 1", "timezone": "UTC"}, False, 0,
        "chai-all", ("grid",),
    ),
    PipelineDeploymentInfo(
        "chai-reprocess", "laptop", TriggerType.MANUAL, {}, True, -5, "chai-ngc253", ("calibrate",),
    ),
]  # fmt: skip


def test_rendered_deployments_match_the_golden_file() -> None:
    rendered = yaml.safe_dump(render_deployments(PIPELINES), sort_keys=False, width=100)
    assert rendered == GOLDEN.read_text(), (
        "rendering changed; if intended, review and update tests/golden/deployments.yaml"
    )


def test_cron_pipelines_get_their_timezone_and_disabled_ones_a_paused_schedule() -> None:
    by_name = {p.name: deployment_entry(p) for p in PIPELINES}
    assert by_name["chai-nightly-maps"]["schedules"] == [
        {
            "cron": "0 4 * * *", "timezone": "America/Santiago", "active": True,
            "parameters": {"manual": False, "started_by": "schedule"},
        }
    ]  # fmt: skip
    assert by_name["chai-paused"]["schedules"][0]["active"] is False
    assert by_name["chai-reprocess"]["schedules"] == []
    assert by_name["chai-ngc253"]["schedules"] == []
    assert {e["work_pool"]["name"] for e in by_name.values()} == {"ramses", "laptop"}
    # A person's run (UI, `prefect deployment run`) does the ready work now, whatever the type.
    person = {"manual": True, "started_by": "manual"}
    assert by_name["chai-ngc253"]["parameters"] == {"pipeline": "chai-ngc253"} | person
    assert by_name["chai-reprocess"]["parameters"] == {"pipeline": "chai-reprocess"} | person
    assert by_name["chai-ngc253"]["entrypoint"] == "flows/pipelines.py:chai-ngc253"


def test_higher_pipeline_priority_gets_the_better_prefect_queue_priority() -> None:
    assert queue_priorities([0, 10, 5, 10]) == (
        ("trigger", 1), ("priority-10", 2), ("priority-5", 3), ("priority-0", 4),
    )  # fmt: skip
    assert queue_name(-5) == "priority-m5"


def test_every_location_with_an_enabled_pipeline_gets_a_trigger_deployment() -> None:
    rendered = render_deployments(PIPELINES, {"ramses": 30})
    triggers = {d["name"]: d for d in rendered if "trigger" in d["tags"]}
    assert sorted(triggers) == ["trigger-laptop", "trigger-ramses"]
    trigger = triggers["trigger-ramses"]
    assert trigger["schedules"] == [{"interval": 30, "active": True}]
    assert triggers["trigger-laptop"]["schedules"] == [{"interval": 600, "active": True}]
    assert trigger["triggers"][0]["expect"] == ["ccat.raw-data.registered"]
    assert trigger["work_pool"] == {
        "name": "ramses", "work_queue_name": "trigger", "job_variables": {},
    }  # fmt: skip
    disabled = [PipelineDeploymentInfo("x", "laptop", TriggerType.CONTINUOUS, {}, False, 0)]
    assert [d["name"] for d in render_deployments(disabled)] == ["x"]


def test_merging_keeps_hand_written_deployments_and_other_keys() -> None:
    document = {
        "name": "site",
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/ccat"}}],
        "deployments": [
            {"name": "old-pipeline", "tags": ["ccat-wm"]},
            {"name": "housekeeping", "tags": ["ops"]},
        ],
    }
    merged = merge_prefect_yaml(document, [deployment_entry(PIPELINES[3])])
    assert [d["name"] for d in merged["deployments"]] == ["chai-reprocess", "housekeeping"]
    assert merged["pull"] == document["pull"] and merged["name"] == "site"
