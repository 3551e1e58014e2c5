"""Deployments run by a real worker: `prefect server start`, `ccat-wm deploy`,
`prefect deploy --all`, `prefect worker start` on the location's pool, the real
PostgreSQL ops DB and the real SLURM cluster.

A MANUAL deployment run completes and the ops DB matches; new simulated scans lead to
runs of the CONTINUOUS pipeline without any manual step (event -> trigger deployment ->
pipeline deployment); cancelling a flow run as the UI does ends its runs CANCELLED in
the ops DB and its SLURM job cancelled.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from ccat_ops_db import migrate
from ccat_ops_db import models as m
from tests.flows.conftest import tool_step
from tests.helpers import (
    REPO,
    SLURM_TEST_SETTINGS,
    locations_data,
    run_cli,
    wait_until,
    write_yaml,
)

pytestmark = [
    pytest.mark.db,
    pytest.mark.xdist_group("site"),
    pytest.mark.usefixtures("slurm_cluster"),
]
PREFECT = str(Path(sys.executable).parent / "prefect")
COOLDOWN_S = 8
"""Cooldown of the CONTINUOUS pipeline's step; its location ticks only hourly otherwise."""
LIVENESS_S = 45
"""The site's `CCAT_WM_LIVENESS_S`: a flow run without a heartbeat for 45 s (not the
default 90 s) is Crashed; the pools send one every 30 s, Prefect's shortest interval."""
CHROMIUM = "/usr/bin/chromium"
"""Debian's Chromium (.ci/run installs the package)."""
RUN = m.ExecutedReductionStep
INPUT = m.ExecutedReductionStepInput


@dataclass
class Site:
    """A deployed site: its environment, ops DB engine and Prefect API."""

    env: dict[str, str]
    engine: Engine
    api: str
    root: Path
    worker: subprocess.Popen[bytes] | None = None

    def start_worker(self) -> None:
        """Start a `prefect worker` on the `ramses` pool (its log: worker.log)."""
        with (self.root / "worker.log").open("a") as log:
            self.worker = subprocess.Popen(
                [PREFECT, "worker", "start", "--pool", "ramses", "--type", "process"],
                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def stop_worker(self, *, kill: bool = False) -> None:
        if self.worker is None:
            return
        if kill:
            self.worker.kill()
        else:
            self.worker.terminate()
        try:
            self.worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            self.worker.wait()
        self.worker = None

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.api}{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = httpx.post(f"{self.api}{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json() if response.content else None

    def prefect(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PREFECT, "--no-prompt", *args], cwd=REPO, env=self.env, capture_output=True,
            text=True, timeout=300, check=False,
        )  # fmt: skip

    def runs(self, pipeline: str) -> list[Any]:
        with Session(self.engine) as session:
            return list(
                session.execute(
                    select(
                        RUN.id,
                        RUN.status,
                        RUN.hpc_job_id,
                        RUN.prefect_flow_run_id,
                        RUN.sub_group_key,
                    )
                    .join(m.ReductionStep)
                    .join(m.Pipeline)
                    .where(m.Pipeline.name == pipeline)
                    .order_by(RUN.id)
                )
            )


def site_spec(root: Path) -> dict[str, Any]:
    spec = locations_data(root)
    spec["locations"][1] = {
        "name": "ramses", "site": "test", "location_type": "PROCESSING", "backend": "slurm",
        "runtime": "host", "path": str(root / "runs"),
        "settings": SLURM_TEST_SETTINGS | {"trigger_interval_s": 3600},
    }  # fmt: skip
    spec["locations"].append(  # deployed, never given a worker
        {"name": "idle-site", "site": "test", "location_type": "PROCESSING",
         "backend": "local", "path": str(root / "idle-site")}
    )  # fmt: skip
    base = {"data_grouping": "g", "processing_location": "ramses"}
    sleepy = tool_step("calibrate", parameters={"mode": "ok", "sleep": 120})
    sleepy["config"]["name"] = "sleepy-config"
    fragile = tool_step("calibrate", parameters={"mode": "ok", "sleep": 20})
    fragile["config"]["name"] = "fragile-config"
    broken = tool_step("calibrate", max_retries=1, parameters={"fail_key": "scan-000001"})
    broken["config"]["name"] = "broken-config"
    # Every sub-group fails until the operator's fix (the file `failday-fixed`) exists.
    failing = tool_step(
        "calibrate", parameters={"fail_key": "scan-", "fixed": str(root / "failday-fixed")}
    )
    failing["config"]["name"] = "failday-config"
    mapping = tool_step("grid", depends_on=["calibrate"])
    mapping["config"]["name"] = "failday-grid-config"
    return {
        **spec,
        "instruments": [{"name": "CHAI", "modules": ["LFA", "HFA"]}],
        "software": [
            {
                "name": "tool",
                "versions": [{"tag": "1.0.0", "digest": "sha256:" + "ab" * 32, "is_latest": True}],
            }
        ],
        "data_groupings": [{"name": "g", "instrument_module": "CHAI/LFA", "filter_rules": []}],
        "pipelines": [
            {
                "name": "manual",
                **base,
                "trigger": {"type": "MANUAL"},
                "steps": [tool_step("calibrate")],
            },
            {
                "name": "standing",
                **base,
                "trigger": {"type": "CONTINUOUS"},
                "steps": [tool_step("calibrate", cooldown_seconds=COOLDOWN_S)],
            },
            {"name": "sleepy", **base, "trigger": {"type": "MANUAL"}, "steps": [sleepy]},
            {
                "name": "urgent",
                **base,
                "trigger": {"type": "MANUAL"},
                "priority": 10,
                "steps": [tool_step("calibrate")],
            },
            {"name": "fragile", **base, "trigger": {"type": "MANUAL"}, "steps": [fragile]},
            {
                "name": "broken",
                **base,
                "trigger": {"type": "MANUAL"},
                "steps": [broken],
            },
            {
                "name": "failday",
                **base,
                "trigger": {"type": "MANUAL"},
                "steps": [failing, mapping],
            },
            {  # a cron tick that never comes during the tests
                "name": "yearly",
                **base,
                "trigger": {"type": "CRON", "cron": "0 0 1 1 *"},
                "steps": [tool_step("calibrate")],
            },
            {
                "name": "unattended",
                "data_grouping": "g",
                "processing_location": "idle-site",
                "trigger": {"type": "CONTINUOUS"},
                "steps": [tool_step("calibrate")],
            },
        ],
    }


@pytest.fixture(scope="module")
def site(
    make_database: Callable[[], URL],
    prefect_api: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:
    """A site with its own ops DB, deployed, with one worker on the `ramses` pool."""
    url = make_database()
    engine = create_engine(url)
    migrate.upgrade(engine)
    root = tmp_path_factory.mktemp("site")
    env = dict(os.environ) | prefect_api
    env |= {
        "CCAT_OPS_DB_URL": url.set(drivername="postgresql").render_as_string(hide_password=False),
        "CCAT_WM_HOME": str(root / "home"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "CCAT_WM_LIVENESS_S": str(LIVENESS_S),
    }
    site = Site(env, engine, prefect_api["PREFECT_API_URL"], root)
    applied = run_cli(env, "apply", str(write_yaml(root / "site.yaml", site_spec(root))))
    assert applied.returncode == 0, applied.stderr
    prefect_yaml = root / "prefect.yaml"
    deployed = run_cli(env, "deploy", "--prefect-yaml", str(prefect_yaml))
    assert deployed.returncode == 0, deployed.stderr
    registered = site.prefect("deploy", "--all", "--prefect-file", str(prefect_yaml))
    assert registered.returncode == 0, registered.stdout + registered.stderr
    site.start_worker()
    try:
        yield site
    finally:
        site.stop_worker()
        engine.dispose()


def flow_run_state(site: Site, flow_run_id: str) -> str:
    return str(site.get(f"/flow_runs/{flow_run_id}")["state"]["type"])


def run_deployment(site: Site, name: str) -> str:
    """Start a deployment's flow run as a person does in the UI; return its id."""
    deployment = site.get(f"/deployments/name/{name}/{name}")  # flow named after the pipeline
    flow_run = site.post(f"/deployments/{deployment['id']}/create_flow_run", {})
    return str(flow_run["id"])


@contextlib.contextmanager
def ui_page(height: int = 1200) -> Iterator[Any]:
    """A page of headless Chromium, 1600 px wide (closed at the end)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser.new_page(viewport={"width": 1600, "height": height})
        finally:
            browser.close()


def test_a_manual_deployment_run_completes_on_the_worker_and_the_ops_db_matches(
    site: Site,
) -> None:
    with Session(site.engine) as session, session.begin():
        from ccat_wm.simulate.register import SimulationRequest, register_simulation

        register_simulation(session, SimulationRequest(scans=2, seed=3))
    flow_run_id = run_deployment(site, "manual")
    final = wait_until(
        "the manual flow run to finish",
        lambda: (
            flow_run_state(site, flow_run_id) in {"COMPLETED", "FAILED", "CRASHED"}
            and flow_run_state(site, flow_run_id)
        ),
    )
    assert final == "COMPLETED", (site.root / "worker.log").read_text()[-5000:]
    runs = site.runs("manual")
    assert len(runs) == 2
    assert {r.status for r in runs} == {m.RunStatus.COMPLETED}
    assert {r.prefect_flow_run_id for r in runs} == {flow_run_id}
    assert all(r.hpc_job_id and r.hpc_job_id.split("_")[0].isdigit() for r in runs)


def test_new_scans_lead_to_runs_of_the_continuous_pipeline_without_a_manual_step(
    site: Site,
) -> None:
    before = {r.id for r in site.runs("standing")}
    simulated = run_cli(site.env, "simulate", "--scans", "1", "--seed", "11", "--json")
    assert simulated.returncode == 0, simulated.stderr
    for alarm in ("ERROR", "WARNING", "Traceback", "Still processing items"):
        assert alarm not in simulated.stderr, simulated.stderr  # it emitted the event
    [scan] = json.loads(simulated.stdout)["scan_names"]
    # Earlier tests' scans are gaps of this pipeline too: the run of *this* scan counts.
    new = wait_until(
        f"the CONTINUOUS pipeline's run of {scan}, COMPLETED",
        lambda: [r for r in site.runs("standing") if r.id not in before
                 and r.sub_group_key.endswith(scan) and r.status is m.RunStatus.COMPLETED],
        timeout=240,
    )  # fmt: skip
    assert new, (site.root / "worker.log").read_text()[-5000:]
    assert all(r.prefect_flow_run_id for r in new)  # run by a flow run of the deployment
    # The trigger tick that created the runs published the pipeline's overview too.
    overviews = site.post(
        "/artifacts/filter", {"artifacts": {"key": {"any_": ["standing-overview"]}}}
    )
    ticks = [a for a in overviews if a["flow_run_id"]
             and "trigger" in site.get(f"/flow_runs/{a['flow_run_id']}")["tags"]]  # fmt: skip
    assert ticks and "standing at a glance" in ticks[0]["data"], overviews
    with Session(site.engine) as session:
        created = session.scalar(select(RUN.created_at).where(RUN.id == new[0].id))
        newest_data = session.scalar(  # the newest of the run's own input packages
            select(func.max(m.RawDataPackage.created_at))
            .join(INPUT, INPUT.raw_data_package_id == m.RawDataPackage.id)
            .where(INPUT.executed_reduction_step_id == new[0].id)
        )
        assert created is not None and newest_data is not None
        latency = created - newest_data
    # The event's tick found the gap in its cooldown, waited it out and ticked again: the
    # run exists a cooldown (not an hourly interval) after the data.
    assert dt.timedelta(seconds=COOLDOWN_S) <= latency < dt.timedelta(seconds=COOLDOWN_S + 60)


def test_cancelling_a_flow_run_as_the_ui_does_cancels_its_runs_and_slurm_jobs(
    site: Site,
) -> None:
    flow_run_id = run_deployment(site, "sleepy")
    running = wait_until(
        "the sleepy runs to be RUNNING on SLURM",
        lambda: [r for r in site.runs("sleepy") if r.status is m.RunStatus.RUNNING],
        timeout=240,
    )
    job_ids = [r.hpc_job_id for r in running]
    # What the UI's Cancel button sends.
    site.post(
        f"/flow_runs/{flow_run_id}/set_state",
        {"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True},
    )
    wait_until(
        "the sleepy runs to be CANCELLED in the ops DB",
        lambda: all(r.status is m.RunStatus.CANCELLED for r in site.runs("sleepy")),
        timeout=120,
    )
    for job_id in job_ids:
        states = wait_until(
            f"SLURM job {job_id} to end", lambda job_id=job_id: ended_states(job_id), timeout=60
        )
        assert states[0].startswith("CANCELLED"), states


def seconds_since_heartbeat(site: Site, flow_run_id: str) -> float:
    """Seconds since the newest heartbeat event of a flow run reached the server."""
    events = site.post("/events/filter", {
        "filter": {
            "event": {"name": ["prefect.flow-run.heartbeat"]},
            "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
            "order": "DESC",
        },
        "limit": 1,
    })["events"]  # fmt: skip
    assert events, f"flow run {flow_run_id} sent no heartbeat at all"
    newest = dt.datetime.fromisoformat(events[0]["occurred"])
    return (dt.datetime.now(dt.UTC) - newest).total_seconds()


def ended_states(job_id: str) -> list[str]:
    """SLURM's accounting states of a job once none is still running or queued."""
    states = subprocess.run(
        ["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={job_id}",
         "--format=State"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return states if states and not {"RUNNING", "PENDING"} & set(states) else []


def test_on_a_saturated_pool_the_more_important_pipeline_starts_first(site: Site) -> None:
    """The pool is paused while both flow runs are created (the less important one
    first), then serves one flow run at a time: the higher `priority` must start first."""
    patch = lambda body: httpx.patch(  # noqa: E731
        f"{site.api}/work_pools/ramses", json=body, timeout=30
    ).raise_for_status()
    patch({"is_paused": True, "concurrency_limit": 1})
    try:
        low = run_deployment(site, "manual")
        time.sleep(1)
        high = run_deployment(site, "urgent")
        patch({"is_paused": False})
        wait_until(
            "both flow runs to finish",
            lambda: {flow_run_state(site, low), flow_run_state(site, high)} <= {"COMPLETED"},
        )
    finally:
        patch({"is_paused": False, "concurrency_limit": None})
    started = {f: site.get(f"/flow_runs/{f}")["start_time"] for f in (low, high)}
    assert started[high] < started[low], started


def test_a_flow_run_whose_host_died_is_crashed_by_the_trigger_tick_and_its_runs_finish(
    site: Site,
) -> None:
    """SIGKILL the worker, then the flow run's process, mid-job (as a host crash does):
    nobody reports the end, so only the heartbeat check of the trigger tick can mark the
    flow run Crashed (not before its heartbeats stopped for `CCAT_WM_LIVENESS_S`, 45 s
    here); the same tick restarts
    the pipeline, whose new flow run adopts the runs and completes them with their SLURM
    jobs."""
    flow_run_id = run_deployment(site, "fragile")
    wait_until(
        "the fragile run to be RUNNING",
        lambda: any(r.status is m.RunStatus.RUNNING for r in site.runs("fragile")),
        timeout=240,
    )
    site.stop_worker(kill=True)
    flow_process = next(
        p for p in psutil.process_iter(["environ"])
        if (p.info["environ"] or {}).get("PREFECT__FLOW_RUN_ID") == flow_run_id
    )  # fmt: skip
    flow_process.kill()
    assert flow_run_state(site, flow_run_id) == "RUNNING"  # nobody told the server
    early = run_cli(site.env, "trigger", "--location", "ramses", "--json")
    assert early.returncode == 0, early.stderr
    assert flow_run_id not in json.loads(early.stdout)["crashed"]  # a recent heartbeat
    assert flow_run_state(site, flow_run_id) == "RUNNING"
    wait_until(
        f"{LIVENESS_S} s without a heartbeat of the killed flow run",
        lambda: seconds_since_heartbeat(site, flow_run_id) > LIVENESS_S + 1,
        timeout=LIVENESS_S + 60,
        every=1,
    )
    site.start_worker()
    ticked = run_cli(site.env, "trigger", "--location", "ramses", "--json")
    assert ticked.returncode == 0, ticked.stderr
    assert flow_run_id in json.loads(ticked.stdout)["crashed"]
    assert flow_run_state(site, flow_run_id) == "CRASHED"
    assert "No heartbeat since" in site.get(f"/flow_runs/{flow_run_id}")["state"]["message"]
    # No false alarm: the flow runs that finished on the worker (pipelines and the
    # event-started trigger ticks of the earlier tests, long ago) stay as they
    # ended, and nothing tried to change a finished flow run's state.
    crashed = site.post("/flow_runs/filter", {
        "flow_runs": {"state": {"type": {"any_": ["CRASHED"]}}},
        "work_pools": {"name": {"any_": ["ramses"]}},
    })  # fmt: skip
    assert [r["id"] for r in crashed] == [flow_run_id]
    failed_actions = site.post(
        "/events/filter",
        {"filter": {"event": {"name": ["prefect.automation.action.failed"]}}, "limit": 50},
    )["events"]
    assert failed_actions == [], [
        (e["resource"].get("prefect.resource.name"), e["payload"]) for e in failed_actions
    ]
    assert "fragile" in json.loads(ticked.stdout)["started"]
    done = wait_until(
        "the adopted runs to complete",
        lambda: (
            (runs := site.runs("fragile"))
            and all(r.status is m.RunStatus.COMPLETED for r in runs)
            and runs
        ),
        timeout=240,
    )
    assert all(r.prefect_flow_run_id != flow_run_id for r in done)  # adopted by the new one


def test_a_quick_run_of_a_cron_deployment_does_the_ready_work_now(site: Site) -> None:
    """What a person pressing Run in the UI gets (no parameters): every ready gap runs
    now, although the pipeline's cron tick is months away; the flow run appears under
    the pipeline's own flow with a name saying who started it."""
    flow_run_id = run_deployment(site, "yearly")
    final = wait_until(
        "the yearly flow run to finish",
        lambda: flow_run_state(site, flow_run_id) in {"COMPLETED", "FAILED", "CRASHED"}
        and flow_run_state(site, flow_run_id),
    )  # fmt: skip
    assert final == "COMPLETED", (site.root / "worker.log").read_text()[-5000:]
    runs = site.runs("yearly")
    assert runs and {r.status for r in runs} == {m.RunStatus.COMPLETED}
    assert {r.prefect_flow_run_id for r in runs} == {flow_run_id}
    flow_run = site.get(f"/flow_runs/{flow_run_id}")
    assert flow_run["name"].startswith("yearly manual ")
    assert site.get(f"/flows/{flow_run['flow_id']}")["name"] == "yearly"


def test_a_cron_schedule_fires_and_its_flow_run_does_the_ready_work(site: Site) -> None:
    """A CRON pipeline deployed with `* * * * *`: the Prefect server's scheduler creates
    its flow runs (nobody presses Run), the worker starts the first at the next minute,
    and that flow run does the ready work on SLURM. Paused afterwards, so that it does
    not run during the later tests."""
    spec = site_spec(site.root)
    spec["pipelines"].append({
        "name": "minutely", "data_grouping": "g", "processing_location": "ramses",
        "trigger": {"type": "CRON", "cron": "* * * * *"}, "steps": [tool_step("calibrate")],
    })  # fmt: skip
    applied = run_cli(site.env, "apply", str(write_yaml(site.root / "site.yaml", spec)))
    assert applied.returncode == 0, applied.stderr
    simulated = run_cli(site.env, "simulate", "--scans", "1", "--seed", "12")
    assert simulated.returncode == 0, simulated.stderr
    prefect_yaml = site.root / "prefect.yaml"
    deployed = run_cli(site.env, "deploy", "--prefect-yaml", str(prefect_yaml))
    assert deployed.returncode == 0, deployed.stderr
    registered = site.prefect("deploy", "--all", "--prefect-file", str(prefect_yaml))
    assert registered.returncode == 0, registered.stdout + registered.stderr
    deployment = site.get("/deployments/name/minutely/minutely")
    assert [s["schedule"].get("cron") for s in deployment["schedules"]] == ["* * * * *"]
    try:
        scheduled = wait_until(
            "a flow run of the minutely deployment made by the scheduler, COMPLETED",
            lambda: [
                f for f in site.post("/flow_runs/filter", {
                    "deployments": {"id": {"any_": [deployment["id"]]}},
                    "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
                })
                if f["auto_scheduled"]
            ],
            timeout=180,
        )  # fmt: skip
    finally:
        httpx.patch(
            f"{site.api}/deployments/{deployment['id']}", json={"paused": True}, timeout=30
        ).raise_for_status()
    runs = site.runs("minutely")
    assert runs and {r.status for r in runs} == {m.RunStatus.COMPLETED}, runs
    by_schedule = {f["id"] for f in scheduled}
    assert {r.prefect_flow_run_id for r in runs} <= by_schedule  # nobody else ran them
    assert all(f["parameters"].get("started_by") == "schedule" for f in scheduled)


def test_trigger_ticks_do_not_bury_the_runs_nor_pile_up_without_a_worker(site: Site) -> None:
    """Ticks of a location without a worker that never started (Late) are deleted by the
    next tick anywhere; a tick with nothing to do is marked idle and deleted by the next."""
    deployment = site.get("/deployments/name/ccat-trigger/trigger-idle-site")
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).isoformat()
    late = [
        site.post(
            f"/deployments/{deployment['id']}/create_flow_run",
            {"state": {"type": "SCHEDULED", "name": "Late",
                       "state_details": {"scheduled_time": past}}},
        )["id"]
        for _ in range(3)
    ]  # fmt: skip
    first = run_cli(site.env, "trigger", "--location", "ramses", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["deleted_ticks"] >= 3
    for flow_run_id in late:
        assert httpx.get(f"{site.api}/flow_runs/{flow_run_id}", timeout=30).status_code == 404
    trigger_runs = lambda: site.post(  # noqa: E731
        "/flow_runs/filter", {"flow_runs": {"tags": {"all_": ["trigger"]}}}
    )
    # Only deployment runs carry the deployment's tag: start two idle ticks on the worker.
    ramses = site.get("/deployments/name/ccat-trigger/trigger-ramses")
    for _ in range(2):
        tick = site.post(f"/deployments/{ramses['id']}/create_flow_run", {})["id"]
        wait_until("a trigger tick to finish", lambda tick=tick: flow_run_state(site, tick)
                 in {"COMPLETED", "FAILED", "CRASHED"})  # fmt: skip
        assert flow_run_state(site, tick) == "COMPLETED"
    idle = [r for r in trigger_runs() if "ccat-idle" in r["tags"]]
    assert len(idle) == 1 and idle[0]["id"] == tick and idle[0]["name"].endswith(": idle")


@pytest.mark.browser
def test_a_failed_run_says_why_on_its_task_run_page_in_the_ui(site: Site) -> None:
    """The failed sub-group's task run: Failed with the job's stderr line, its job id and
    its log's path as the message; two attempts counted by Prefect; tagged; its Logs tab
    (the API behind it) tells the attempts. Headless Chromium screenshots the page into
    `test-artifacts/failed-task-run.png` (the operator's guide refers to it)."""
    from playwright.sync_api import sync_playwright

    flow_run_id = run_deployment(site, "broken")
    wait_until(
        "the broken flow run to finish",
        lambda: flow_run_state(site, flow_run_id) in {"COMPLETED", "FAILED", "CRASHED"},
    )
    assert flow_run_state(site, flow_run_id) == "FAILED"
    [failed] = [r for r in site.runs("broken") if r.status is m.RunStatus.FAILED]
    # The server records task run states in batches (up to a second behind the flow run).
    [task_run] = wait_until(
        "the failed task run on the server",
        lambda: [
            t
            for t in site.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
            if t["state_type"] == "FAILED"
        ],
        timeout=30,
    )
    assert task_run["name"] == f"calibrate[{failed.sub_group_key}]"
    message = task_run["state"]["message"]
    assert "boom: failing on purpose" in message and f"last job {failed.hpc_job_id}" in message
    assert "exit code 3" in message and "/logs/calibrate-attempt-2.log" in message
    assert message.startswith(f"run {failed.id} (calibrate[")  # the run id, not a tag
    assert task_run["run_count"] == 2
    assert set(task_run["tags"]) == {"step:calibrate", "pipeline:broken", "location:ramses"}
    logs = wait_until(
        "the task run's logs",
        lambda: (
            [
                entry["message"]
                for entry in site.post(
                    "/logs/filter", {"logs": {"task_run_id": {"any_": [task_run["id"]]}}}
                )
                if "attempt 2 of 2 (job " in entry["message"]
            ]
            and site.post("/logs/filter", {"logs": {"task_run_id": {"any_": [task_run["id"]]}}})
        ),
    )
    lines = [entry["message"] for entry in logs]
    assert any(f"submitted as job {failed.hpc_job_id}" in line for line in lines), lines
    assert any(
        f"(job {failed.hpc_job_id}) failed (EXIT_CODE): exit code 3" in line for line in lines
    ), lines
    assert any("retrying (attempt 2 of 2)" in line for line in lines), lines

    ui = site.api.removesuffix("/api")
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1400})
        page.goto(f"{ui}/runs/task-run/{task_run['id']}", wait_until="networkidle")
        page.get_by_text("boom: failing on purpose").first.wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "failed-task-run.png"), full_page=True)
        browser.close()


@pytest.mark.browser
def test_browser_renders_a_map_inline_in_a_products_artifact(site: Site) -> None:
    """The products artifact's maps are PNG data URIs: the UI's markdown shows them."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from playwright.sync_api import sync_playwright

    from ccat_wm.execution.report import image_markdown

    png = site.root / "map.png"
    figure = pyplot.figure(figsize=(2, 2))
    pyplot.imshow([[0, 1], [1, 0]])
    figure.savefig(png)
    artifact = site.post(
        "/artifacts/", {"key": "map-check", "type": "markdown", "data": image_markdown(png)}
    )
    ui = site.api.removesuffix("/api")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"{ui}/artifacts/artifact/{artifact['id']}", wait_until="networkidle")
        image = page.locator('img[src^="data:image/png;base64,"]').first
        image.wait_for(timeout=30_000)
        assert image.evaluate("img => img.complete && img.naturalWidth") == 200
        page.screenshot(path=str(REPO / "test-artifacts" / "artifact-map.png"), full_page=True)
        browser.close()


@pytest.mark.browser
def test_browser_shows_the_flow_run_page_with_named_task_runs_and_the_run_table(
    site: Site, tmp_path: Path
) -> None:
    """Headless Chromium (Debian's package) on the real Prefect UI of the server.

    The screenshots are kept under `test-artifacts/` of the repository (CI keeps them).
    """
    from playwright.sync_api import sync_playwright

    [flow_run] = site.post("/flow_runs/filter", {
        "flows": {"name": {"any_": ["manual"]}},  # the pipeline's own flow
        "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
        "sort": "START_TIME_DESC", "limit": 1,
    })  # fmt: skip
    assert flow_run["name"].startswith("manual manual ")
    task_names = {t["name"] for t in site.post(
        "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run["id"]]}}}
    )}  # fmt: skip
    calibrate = sorted(n for n in task_names if n.startswith("calibrate[executed_obs_unit="))
    assert calibrate, task_names
    ui = site.api.removesuffix("/api")
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        page.goto(f"{ui}/runs/flow-run/{flow_run['id']}", wait_until="networkidle")
        page.screenshot(path=str(artifacts / "flow-run.png"), full_page=True)
        page.locator("li.p-tab#task-runs").click()  # the page's "Task Runs" tab
        page.get_by_text(calibrate[0]).first.wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "flow-run-task-runs.png"), full_page=True)
        page.locator("li.p-tab#artifacts").click()
        page.get_by_text("manual-runs").first.wait_for(timeout=30_000)  # the run table's key
        page.screenshot(path=str(artifacts / "flow-run-artifacts.png"), full_page=True)
        browser.close()


def flow_run_logs(site: Site, flow_run_id: str) -> list[str]:
    """Every log line of a flow run and its task runs, as the UI's Logs tab shows them."""
    return [
        str(entry["message"])
        for entry in site.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}})
    ]


@pytest.mark.browser
def test_a_failure_day_reads_well_and_prefects_retry_retries(site: Site) -> None:
    """Two or more sub-groups fail: the flow run is Failed with one message naming each
    (`step[sub-group]: reason`) and what to do, no traceback in its logs or the worker's
    output, a failures artifact with each sub-group's next command, and each failed task
    run's artifact shows the log's last lines as lines; the maps that wait for them end
    `UpstreamFailed`, counted apart. The cause is fixed and Chromium presses Retry on the
    flow run's page: the same flow run retries exactly the failed sub-groups with a fresh
    budget, their downstream runs follow, and it ends Completed. Each page is screenshot
    into `test-artifacts/` (the operator's guide shows them)."""
    simulated = run_cli(site.env, "simulate", "--scans", "2", "--seed", "21")
    assert simulated.returncode == 0, simulated.stderr
    worker_log = site.root / "worker.log"
    seen = worker_log.stat().st_size
    flow_run_id = run_deployment(site, "failday")
    wait_until(
        "the failday flow run to fail",
        lambda: flow_run_state(site, flow_run_id) in {"COMPLETED", "FAILED", "CRASHED"},
    )
    assert flow_run_state(site, flow_run_id) == "FAILED"
    failed = [r for r in site.runs("failday") if r.status is m.RunStatus.FAILED]
    assert len(failed) >= 2
    message = site.get(f"/flow_runs/{flow_run_id}")["state"]["message"]
    assert f"{len(failed)} of {len(failed)} sub-group run(s) failed: calibrate[" in message
    assert "exit code 3" in message and "press Retry on this flow run" in message, message

    lines = wait_until(
        "the flow run's logs", lambda: [x for x in flow_run_logs(site, flow_run_id) if x]
    )
    worker_output = worker_log.read_text()[seen:]
    for text in ("\n".join(lines), worker_output):
        assert "Traceback" not in text and "unexpected exception" not in text, text[-3000:]

    [failures] = wait_until(
        "the failures artifact",
        lambda: site.post("/artifacts/filter", {
            "artifacts": {"key": {"any_": ["failday-failures"]}},
            "flow_runs": {"id": {"any_": [flow_run_id]}},
        }),
    )  # fmt: skip
    rows = failures["data"] if isinstance(failures["data"], list) else json.loads(failures["data"])
    assert sorted(r["sub_group"] for r in rows) == sorted(r.sub_group_key for r in failed)
    assert all(r["step"] == "calibrate" and r["kind"] == "EXIT_CODE" for r in rows)
    assert all(r["next"] == f"ccat-wm retry failday --step calibrate --sub-group {r['sub_group']}"
               for r in rows)  # fmt: skip

    def all_final() -> list[Any] | None:  # the server records task run states in batches
        runs = site.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
        final = {"COMPLETED", "FAILED", "CANCELLED"}
        return runs if all(t["state_type"] in final for t in runs) else None

    task_runs = wait_until("every task run of the flow run in a final state", all_final, 30)
    failed_task = next(t for t in task_runs if t["state_type"] == "FAILED")
    waiting = [t for t in task_runs if t["name"].startswith("grid[")]
    assert waiting and all(t["state"]["name"] == "UpstreamFailed" for t in waiting), waiting
    assert f" {len(waiting)} downstream sub-group(s) were not run: they wait for these." in message
    assert "\n" not in failed_task["state"]["message"]
    assert "last log line: 'boom: failing on purpose'" in failed_task["state"]["message"]
    [why] = site.post("/artifacts/filter", {"task_runs": {"id": {"any_": [failed_task["id"]]}}})
    assert "```text\n" in why["data"] and "\nboom: failing on purpose\n" in why["data"]
    others = {t["name"].split("-")[0] for t in task_runs if not t["name"].startswith(
        ("calibrate[", "grid["))}  # fmt: skip
    assert others <= {"[bookkeeping] prepare", "[bookkeeping] ensure", "[bookkeeping] submit",
                      "[bookkeeping] publish"}, [(t["name"], t["state_type"]) for t in task_runs]  # fmt: skip

    ui = site.api.removesuffix("/api")
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with ui_page() as page:
        page.goto(f"{ui}/runs/flow-run/{flow_run_id}", wait_until="networkidle")
        page.get_by_text("press Retry on this flow run").first.wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "failday-flow-run.png"), full_page=True)
        page.get_by_text("Task Runs", exact=True).first.click()
        page.get_by_text("UpstreamFailed").first.wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "failday-task-runs.png"), full_page=True)
        page.goto(f"{ui}/artifacts/artifact/{failures['id']}", wait_until="networkidle")
        page.get_by_text("ccat-wm retry failday").first.wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "failday-failures.png"), full_page=True)
        [overview] = site.post("/artifacts/filter", {
            "artifacts": {"key": {"any_": ["failday-overview"]}}, "sort": "CREATED_DESC",
            "limit": 1,
        })  # fmt: skip
        assert (
            "Failed sub-groups" in overview["data"] and "ccat-wm retry failday" in overview["data"]
        )
        page.goto(f"{ui}/artifacts/artifact/{overview['id']}", wait_until="networkidle")
        page.locator('img[src^="data:image/png;base64,"]').first.wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "failday-overview-failed.png"), full_page=True)
        page.goto(f"{ui}/runs/task-run/{failed_task['id']}", wait_until="networkidle")
        page.get_by_text("last log line").first.wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "failday-task-run.png"), full_page=True)
        page.goto(f"{ui}/artifacts/artifact/{why['id']}", wait_until="networkidle")
        page.get_by_text("boom: failing on purpose").first.wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "failday-task-run-artifact.png"), full_page=True)

    (site.root / "failday-fixed").touch()  # the operator fixes the cause
    with ui_page() as page:  # and presses Retry on the flow run's page
        page.goto(f"{ui}/runs/flow-run/{flow_run_id}", wait_until="networkidle")
        page.get_by_role("button", name="Retry").first.click()
        dialog = page.locator(".p-modal")
        dialog.get_by_text("This will retry flow run").wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "failday-retry.png"), full_page=True)
        dialog.get_by_role("button", name="Retry").click()
        wait_until(
            "the Retry button to put the flow run in AwaitingRetry or later",
            lambda: site.get(f"/flow_runs/{flow_run_id}")["state"]["type"] != "FAILED",
        )
    retried = wait_until(
        "the retried flow run to end",
        lambda: (
            (state := site.get(f"/flow_runs/{flow_run_id}"))["run_count"] > 1
            and state["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED"}
            and state
        ),
        timeout=300,
    )
    assert retried["state"]["type"] == "COMPLETED", retried["state"]["message"]
    runs = site.runs("failday")
    latest = {}
    with Session(site.engine) as session:
        for run_id, step, key, reason, status in session.execute(
            select(RUN.id, m.ReductionStep.name, RUN.sub_group_key, RUN.reason, RUN.status)
            .join(m.ReductionStep).join(m.Pipeline).where(m.Pipeline.name == "failday")
            .order_by(RUN.id)
        ):  # fmt: skip
            latest[(step, key)] = (reason, status, run_id)
    assert len(runs) == 3 * len(failed)  # the failed runs, their retries, the grid runs
    for (step, _), (reason, status, _) in latest.items():
        assert status is m.RunStatus.COMPLETED
        assert reason is (m.GapReason.RETRY if step == "calibrate" else m.GapReason.NEW)
    assert {r.prefect_flow_run_id for r in runs} == {flow_run_id}  # the same flow run
    still_failed = run_cli(site.env, "status", "failday", "--status", "FAILED", "--json")
    assert json.loads(still_failed.stdout) == []  # current problems only, by default

    [overview] = site.post("/artifacts/filter", {  # the pipeline at a glance, latest version
        "artifacts": {"key": {"any_": ["failday-overview"]}}, "sort": "CREATED_DESC", "limit": 1,
    })  # fmt: skip
    assert "failday at a glance" in overview["data"]
    assert "| calibrate | " in overview["data"] and "| grid | " in overview["data"]
    assert "Failed sub-groups" not in overview["data"]  # all fixed now
    assert "](data:image/png;base64," in overview["data"]
    with ui_page() as page:
        page.goto(f"{ui}/artifacts/artifact/{overview['id']}", wait_until="networkidle")
        page.locator('img[src^="data:image/png;base64,"]').first.wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "failday-overview.png"), full_page=True)
        page.goto(f"{ui}/runs/flow-run/{flow_run_id}", wait_until="networkidle")
        page.screenshot(path=str(artifacts / "failday-flow-run-retried.png"), full_page=True)
