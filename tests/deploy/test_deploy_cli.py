"""`ccat-wm deploy` and `prefect deploy --all` against a real `prefect server start`.

Work pools of the processing locations (types, templates, priority queues), an
idempotent second sync, a type conflict that changes nothing, and the rendered
`prefect.yaml` registered by Prefect's own CLI onto the locations' pools.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from tests.helpers import REPO, demo_spec_data, locations_data, run_cli, write_yaml

K8S_LOCATION = {
    "name": "k8s-cologne", "site": "test", "location_type": "PROCESSING",
    "backend": "kubernetes", "path": "/data/k8s-pipelines",
    "settings": {
        "k8s_namespace": "ccat",
        "k8s_volumes": {"/data/k8s-pipelines": {"persistentVolumeClaim": {"claimName": "p"}}},
    },
}  # fmt: skip


def site_spec(root: Path) -> dict[str, Any]:
    """The demo pipeline (MANUAL, at `local`), a CRON copy at a SLURM location, and k8s."""
    spec = {**locations_data(root), **demo_spec_data()}
    spec["locations"] += [
        {
            "name": "ramses", "site": "test", "location_type": "PROCESSING", "backend": "slurm",
            "path": str(root / "ramses"),
            "settings": {"slurm_partition": "debug", "slurm_account": "ccat"},
        },
        K8S_LOCATION,
    ]  # fmt: skip
    nightly = copy.deepcopy(spec["pipelines"][0])
    nightly.update(
        name="chai-nightly",
        processing_location="ramses",
        priority=10,
        trigger={"type": "CRON", "cron": "0 4 * * *", "timezone": "America/Santiago"},
    )
    spec["pipelines"].append(nightly)
    return spec


def api_get(api: dict[str, str], path: str) -> Any:
    response = httpx.get(f"{api['PREFECT_API_URL']}{path}", timeout=30)
    response.raise_for_status()
    return response.json()


def api_post(api: dict[str, str], path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{api['PREFECT_API_URL']}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


@pytest.fixture
def deploy_env(
    engine: Engine, cli_env: dict[str, str], prefect_api: dict[str, str], tmp_path: Path
) -> dict[str, str]:
    del engine  # a clean ops DB
    env = cli_env | prefect_api
    result = run_cli(env, "apply", str(write_yaml(tmp_path / "site.yaml", site_spec(tmp_path))))
    assert result.returncode == 0, result.stderr
    return env


def test_deploy_creates_a_pool_per_processing_location_and_prefect_deploy_registers_on_them(
    deploy_env: dict[str, str], prefect_api: dict[str, str], tmp_path: Path
) -> None:
    prefect_yaml = tmp_path / "prefect.yaml"
    result = run_cli(deploy_env, "deploy", "--prefect-yaml", str(prefect_yaml), "--json")
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout)
    assert {(p["name"], p["type"]) for p in done["work_pools"]} == {
        ("local", "process"), ("ramses", "process"), ("k8s-cologne", "kubernetes"),
    }  # fmt: skip
    assert done["deployments"] == ["chai-demo", "chai-nightly", "trigger-local", "trigger-ramses"]
    # No heartbeat automation (it fires for completed flow runs too): the trigger tick
    # marks dead flow runs Crashed instead.
    assert done["crash_automation"] in {"removed", "absent"}  # the server is the session's
    assert not [
        a for a in api_post(prefect_api, "/automations/filter", {})
        if a["name"] == "ccat-wm: crash flow runs whose heartbeats stopped"
    ]  # fmt: skip

    ramses = api_get(prefect_api, "/work_pools/ramses")
    assert ramses["type"] == "process"
    env = ramses["base_job_template"]["variables"]["properties"]["env"]["default"]
    assert env == {
        "CCAT_WM_LOCATION": "ramses", "SLURM_PARTITION": "debug", "SLURM_ACCOUNT": "ccat",
        "PREFECT_RUNNER_HEARTBEAT_FREQUENCY": "30",
    }  # fmt: skip
    k8s = api_get(prefect_api, "/work_pools/k8s-cologne")
    assert k8s["type"] == "kubernetes"
    assert k8s["base_job_template"]["variables"]["properties"]["namespace"]["default"] == "ccat"
    queues = api_post(prefect_api, "/work_pools/ramses/queues/filter", {})
    priorities = {q["name"]: q["priority"] for q in queues}
    assert (priorities["trigger"], priorities["priority-10"]) == (1, 2)

    again = run_cli(deploy_env, "deploy", "--prefect-yaml", str(prefect_yaml), "--json")
    assert {p["action"] for p in json.loads(again.stdout)["work_pools"]} == {"unchanged"}
    assert json.loads(again.stdout)["crash_automation"] == "absent"

    prefect_deploy_all(deploy_env, prefect_yaml)
    deployments = {
        d["name"]: d
        for d in api_post(prefect_api, "/deployments/filter", {})
        if "ccat-wm" in d["tags"]
    }
    assert set(deployments) == {"chai-demo", "chai-nightly", "trigger-local", "trigger-ramses"}
    trigger = deployments["trigger-local"]
    assert trigger["work_pool_name"] == "local" and trigger["work_queue_name"] == "trigger"
    assert trigger["schedules"][0]["schedule"]["interval"] == 600  # the default safety net
    automations = api_post(prefect_api, "/automations/filter", {})
    assert any(
        a["trigger"].get("expect") == ["ccat.raw-data.registered"]
        and a["actions"][0].get("deployment_id") == trigger["id"]
        for a in automations
    ), automations
    nightly = deployments["chai-nightly"]
    assert (nightly["work_pool_name"], nightly["work_queue_name"]) == ("ramses", "priority-10")
    assert nightly["parameters"] == {
        "pipeline": "chai-nightly", "manual": True, "started_by": "manual"
    }  # fmt: skip
    assert nightly["flow_id"] == api_get(prefect_api, "/flows/name/chai-nightly")["id"]
    [schedule] = nightly["schedules"]
    assert schedule["parameters"] == {"manual": False, "started_by": "schedule"}
    assert schedule["schedule"]["cron"] == "0 4 * * *"
    assert schedule["schedule"]["timezone"] == "America/Santiago"
    assert deployments["chai-demo"]["work_pool_name"] == "local"
    assert deployments["chai-demo"]["schedules"] == []


def test_a_pool_of_another_type_stops_deploy_before_anything_changes(
    deploy_env: dict[str, str], prefect_api: dict[str, str], tmp_path: Path
) -> None:
    clash = {"name": "clash", "type": "kubernetes", "base_job_template": {}}
    httpx.post(f"{prefect_api['PREFECT_API_URL']}/work_pools/", json=clash, timeout=30)
    spec = site_spec(tmp_path)
    spec["locations"].append(
        {"name": "clash", "site": "test", "location_type": "PROCESSING", "backend": "local",
         "path": str(tmp_path / "clash")}
    )  # fmt: skip
    assert run_cli(deploy_env, "apply", str(write_yaml(tmp_path / "s.yaml", spec))).returncode == 0
    prefect_yaml = tmp_path / "prefect.yaml"
    prefect_yaml.write_text("name: site\ndeployments: []\n")
    result = run_cli(deploy_env, "deploy", "--prefect-yaml", str(prefect_yaml))
    assert result.returncode == 1
    assert "work pool 'clash' exists with type 'kubernetes'" in result.stderr
    assert "nothing was changed" in result.stderr
    assert prefect_yaml.read_text() == "name: site\ndeployments: []\n"
    assert api_get(prefect_api, "/work_pools/clash")["type"] == "kubernetes"


def prefect_deploy_all(env: dict[str, str], prefect_yaml: Path) -> None:
    registered = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all",
         "--prefect-file", str(prefect_yaml)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert registered.returncode == 0, registered.stdout + registered.stderr


def test_deploy_removes_stale_schedules_and_deployments_that_prefect_deploy_keeps(
    deploy_env: dict[str, str], prefect_api: dict[str, str], tmp_path: Path
) -> None:
    prefect_yaml = tmp_path / "prefect.yaml"
    assert run_cli(deploy_env, "deploy", "--prefect-yaml", str(prefect_yaml)).returncode == 0
    prefect_deploy_all(deploy_env, prefect_yaml)
    flow = api_post(prefect_api, "/flows/", {"name": "ccat-pipeline"})
    api_post(
        prefect_api,
        "/deployments/",
        {"name": "removed-pipeline", "flow_id": flow["id"], "tags": ["ccat-wm"]},
    )
    spec = site_spec(tmp_path)
    nightly = spec["pipelines"][1]
    nightly["trigger"]["cron"] = "0 5 * * *"
    nightly["enabled"] = False
    spec["locations"].append(
        {"name": "dry-run-pool", "site": "test", "location_type": "PROCESSING",
         "backend": "local", "path": str(tmp_path / "dry")}
    )  # fmt: skip
    assert run_cli(deploy_env, "apply", str(write_yaml(tmp_path / "s.yaml", spec))).returncode == 0

    # A dry run reports all of it and changes nothing: server, pools, file.
    before_file = prefect_yaml.read_bytes()
    before = api_post(prefect_api, "/deployments/filter", {})
    dry = run_cli(deploy_env, "deploy", "--prefect-yaml", str(prefect_yaml), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    would = json.loads(dry.stdout)
    assert would["dry_run"] is True and would["prefect_yaml_action"] == "update"
    assert sorted(would["reconciled"]["deleted_deployments"]) == [
        "removed-pipeline", "trigger-ramses",
    ]  # fmt: skip
    assert ("dry-run-pool", "create") in {(p["name"], p["action"]) for p in would["work_pools"]}
    text = run_cli(deploy_env, "deploy", "--prefect-yaml", str(prefect_yaml), "--dry-run")
    assert "work pool dry-run-pool (process): would be created" in text.stdout
    assert "deployment removed-pipeline would be deleted (its pipeline is gone)" in text.stdout
    assert text.stdout.rstrip().endswith("dry run: nothing was changed")
    assert prefect_yaml.read_bytes() == before_file
    assert api_post(prefect_api, "/deployments/filter", {}) == before
    missing = httpx.get(f"{prefect_api['PREFECT_API_URL']}/work_pools/dry-run-pool", timeout=30)
    assert missing.status_code == 404

    ramses_trigger = next(d for d in before if d["name"] == "trigger-ramses")
    owned = f"prefect.deployment.{ramses_trigger['id']}"

    def event_triggers_of_ramses() -> list[Any]:
        return [
            a for a in api_post(prefect_api, "/automations/filter", {})
            if any(a2.get("deployment_id") == ramses_trigger["id"] for a2 in a["actions"])
        ]  # fmt: skip

    assert event_triggers_of_ramses(), owned  # `prefect deploy` made its event trigger
    result = run_cli(deploy_env, "deploy", "--prefect-yaml", str(prefect_yaml), "--json")
    assert result.returncode == 0, result.stderr
    reconciled = json.loads(result.stdout)["reconciled"]
    # ramses's only pipeline is disabled now: its trigger deployment goes too, with its
    # event trigger (left behind, every raw-data event would fail to run it: a false alarm)
    assert sorted(reconciled["deleted_deployments"]) == ["removed-pipeline", "trigger-ramses"]
    assert event_triggers_of_ramses() == []
    assert reconciled["deleted_schedules"] == ["chai-nightly: cron 0 4 * * * America/Santiago"]
    prefect_deploy_all(deploy_env, prefect_yaml)
    deployments = {d["name"]: d for d in api_post(prefect_api, "/deployments/filter", {})}
    assert "removed-pipeline" not in deployments
    [schedule] = deployments["chai-nightly"]["schedules"]
    assert schedule["schedule"]["cron"] == "0 5 * * *"
    assert schedule["active"] is False  # disabled pipeline: paused
