"""The SLURM backend: its sbatch arguments and accounting parsing, and the real cluster."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from infra.backends import BackendError, JobState, Resources
from infra.backends.slurm import SlurmBackend
from infra.backends.slurm_output import parse_duration, parse_memory, parse_sacct, parse_squeue
from infra.backends.slurm_settings import settings_from
from tests.backends.test_backend_contract import job, wait
from tests.helpers import SLURM_TEST_SETTINGS


def test_resources_translate_to_sbatch_options(tmp_path: Path) -> None:
    backend = SlurmBackend(
        tmp_path,
        settings_from(
            {"slurm_partition": "astro", "slurm_account": "ccat", "slurm_extra_args": ["--qos=hi"]}
        ),
    )
    options = backend.resource_options(Resources(cpu=4, memory_gb=7.5, time_hours=2.5, gpu=2))
    assert options == (
        "--cpus-per-task=4", "--mem=7680M", "--time=150", "--gres=gpu:2",
        "--partition=astro", "--account=ccat", "--nice=100", "--qos=hi",
    )  # fmt: skip
    cpu_only = SlurmBackend(tmp_path, settings_from({})).resource_options(Resources())
    assert cpu_only == ("--cpus-per-task=1", "--mem=1024M", "--time=60", "--nice=100")


def test_pipeline_priority_becomes_a_nice_value_or_a_qos(tmp_path: Path) -> None:
    """Higher priority -> smaller nice (never negative: that needs an operator), or a QOS."""
    nice = SlurmBackend(tmp_path, settings_from({"slurm_nice_base": 50}))
    assert [nice.priority_options(p) for p in (0, 10, 50, 99, -20)] == [
        ["--nice=50"], ["--nice=40"], ["--nice=0"], ["--nice=0"], ["--nice=70"],
    ]  # fmt: skip
    qos = SlurmBackend(
        tmp_path,
        settings_from(
            {"slurm_priority": "qos", "slurm_qos_by_priority": {"0": "normal", "10": "high"}}
        ),
    )
    assert [qos.priority_options(p) for p in (-1, 0, 9, 10, 500)] == [
        [], ["--qos=normal"], ["--qos=normal"], ["--qos=high"], ["--qos=high"],
    ]  # fmt: skip
    off = SlurmBackend(tmp_path, settings_from({"slurm_priority": "none"}))
    assert off.priority_options(100) == []


def test_queued_jobs_held_for_reasons_that_cannot_clear_are_marked_stuck() -> None:
    queued = parse_squeue(
        "1|PENDING|Resources|debug\n2|PENDING|PartitionTimeLimit|short\n"
        "3|PENDING|InvalidAccount|debug\n4|PENDING|Priority|debug\n"
        "5|PENDING|ReqNodeNotAvail, UnavailableNodes:vm|debug\n"
    )
    assert {k: v.stuck for k, v in queued.items()} == {
        "1": False, "2": True, "3": True, "4": False, "5": False,
    }  # fmt: skip
    assert queued["2"].reason == "PartitionTimeLimit [partition short]"


def test_jobs_waiting_for_nodes_are_stuck_only_when_every_node_of_their_partition_is_dead(
    tmp_path: Path,
) -> None:
    """sinfo's answer is given as text here (draining the test cluster's only node would stop
    every other test); the parsing is what is checked."""
    backend = SlurmBackend(tmp_path, settings_from({}))
    sinfo = "a|drained\na|down*\nb|drained\nb|mixed\ndebug*|idle\n"  # %P|%T per node
    backend._run = lambda argv: sinfo  # type: ignore[method-assign]
    queued = parse_squeue(
        "1|PENDING|ReqNodeNotAvail, UnavailableNodes:n1|a\n"
        "2|PENDING|Nodes required for job are DOWN, DRAINED or reserved for jobs in higher "
        "priority partitions|b\n3|PENDING|Resources|a\n"
    )
    marked = backend._mark_dead_partitions(queued)
    assert {k: v.stuck for k, v in marked.items()} == {"1": True, "2": False, "3": False}
    assert marked["1"].reason is not None and "every node of partition a" in marked["1"].reason


def test_sbatch_command_for_one_run_and_for_an_array(tmp_path: Path) -> None:
    backend = SlurmBackend(tmp_path / "jobs", settings_from({}))
    batch = tmp_path / "jobs" / "slurm" / "b%1"
    single = backend.sbatch_command(batch, ["ccat-run-7-a0-calibrate"], ["--time=5"])
    launcher = str(tmp_path / "jobs" / "slurm" / "launch.sh")
    assert single == [
        "sbatch", "--parsable", "--export=NONE", f"--chdir={batch}",
        "--job-name=ccat-run-7-a0-calibrate", f"--output={str(batch).replace('%', '%%')}/0/slurm.out",
        "--time=5", launcher, str(batch),
    ]  # fmt: skip
    array = backend.sbatch_command(batch, ["ccat-run-7-a0-x", "ccat-run-8-a0-x", "y"], [])
    assert array[4:7] == [
        "--job-name=ccat-run-7-a0-x+2",
        "--array=0-2",
        f"--output={str(batch).replace('%', '%%')}/%a/slurm.out",
    ]


def test_settings_errors_name_the_setting() -> None:
    with pytest.raises(BackendError, match="slurm_poll_interval_s: Input should be greater"):
        settings_from({"slurm_poll_interval_s": 0})
    with pytest.raises(BackendError, match=r"slurm_extra_args.*--name=value"):
        settings_from({"slurm_extra_args": ["-q hi"]})


def test_accounting_output_is_parsed_into_states_and_metrics() -> None:
    output = "\n".join(
        [
            "12|COMPLETED|0:0|75|01:02.500||2G",
            "12.batch|COMPLETED|0:0|75|01:02.500|1048576K|",
            "13_2|FAILED|0:9|3|00:00.431||52M",
            "13_2.batch|CANCELLED by 0|0:9|3|00:00.431|320664K|",
            "14|TIMEOUT|0:0|61|1-00:00:01||1G",
            "14.batch|CANCELLED|0:15|61|1-00:00:01|1000K|",
            "15|FAILED|3:0|1|00:00.010||1G",
            "16|CANCELLED by 0|0:0|0|00:00:00||1G",
            "17|NODE_FAIL|0:0|5|00:01.000||1G",
            "18|OUT_OF_MEMORY|0:125|5|00:01.000||1G",
            "19|FAILED|0:9|2|00:00.400||16?",
            "19.batch|CANCELLED by 0|0:9|2|00:00.400|320668K|",
        ]
    )
    jobs = {k: info for k, (info, _) in parse_sacct(output).items()}
    assert jobs["12"].state is JobState.COMPLETED
    assert (jobs["12"].wall_time_s, jobs["12"].peak_memory_gb) == (75.0, 1.0)
    assert jobs["12"].cpu_hours == pytest.approx(62.5 / 3600)
    assert (jobs["13_2"].state, jobs["13_2"].reason) == (JobState.FAILED, "OUT_OF_MEMORY")
    assert jobs["14"].reason == "TIMEOUT" and jobs["14"].cpu_hours == pytest.approx(24.0 + 1 / 3600)
    assert (jobs["15"].exit_code, jobs["15"].reason) == (3, "exit code 3")
    assert jobs["16"].state is JobState.CANCELLED
    assert (jobs["17"].reason, jobs["18"].reason) == ("NODE_FAIL", "OUT_OF_MEMORY")
    assert {k for k, (_, complete) in parse_sacct(output).items() if complete} == {
        "12",
        "13_2",
        "14",
    }
    queued = parse_squeue("20|PENDING|Resources\n21_3|RUNNING|None\n22|COMPLETING|None\n")
    assert {k: v.state for k, v in queued.items()} == {
        "20": JobState.PENDING, "21_3": JobState.RUNNING, "22": JobState.RUNNING,
    }  # fmt: skip
    assert (parse_memory("1.5G"), parse_memory("4000Mn"), parse_memory("")) == (
        1610612736, 4194304000, 0,
    )  # fmt: skip
    assert parse_duration("02:03:04") == 7384.0


@pytest.mark.usefixtures("slurm_cluster")
def test_runs_submitted_together_go_out_as_one_job_array(tmp_path: Path) -> None:
    backend = SlurmBackend(tmp_path / ".jobs", settings_from(SLURM_TEST_SETTINGS))
    specs = [job(tmp_path, f"ccat-run-{i}-a0-wide", "sh", "-c", f"echo task {i}") for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        ids = list(pool.map(backend.submit, specs))
    assert backend.calls["sbatch"] == 1
    array_id = ids[0].split("_")[0]
    assert ids == [f"{array_id}_{i}" for i in range(6)]
    for i, job_id in enumerate(ids):
        assert wait(backend, job_id).state is JobState.COMPLETED
        assert f"task {i}" in backend.logs(job_id)
    polls = backend.calls["squeue"]
    assert polls < 60 and backend.calls["sacct"] <= polls  # one refresh per cycle, not per job


@pytest.mark.usefixtures("slurm_cluster")
def test_a_job_over_its_memory_fails_as_out_of_memory(tmp_path: Path) -> None:
    backend = SlurmBackend(tmp_path / ".jobs", settings_from(SLURM_TEST_SETTINGS))
    hog = "b = bytearray(300 * 1024 * 1024)\nimport time; time.sleep(10)"
    job_id = backend.submit(job(tmp_path, "hog", sys.executable, "-c", hog, memory_gb=0.05))
    info = wait(backend, job_id, timeout_s=60)
    assert (info.state, info.reason) == (JobState.FAILED, "OUT_OF_MEMORY")
    assert info.peak_memory_gb is not None and info.peak_memory_gb > 0.05
    assert "memory limit" in backend.logs(job_id)
    accounted = subprocess.run(
        ["sacct", "-n", "-P", "-j", job_id, "--format=JobName"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert accounted[0] == "hog"  # the job name carries the run's name


@pytest.mark.usefixtures("slurm_cluster")
def test_submission_errors_name_the_command(tmp_path: Path) -> None:
    backend = SlurmBackend(tmp_path / ".jobs", settings_from({"slurm_partition": "nosuch"}))
    started = time.monotonic()
    with pytest.raises(BackendError, match=r"`sbatch` failed.*[Pp]artition"):
        backend.submit(job(tmp_path, "x", "true"))
    assert time.monotonic() - started < 30


@pytest.mark.usefixtures("slurm_cluster")
def test_submit_many_sends_one_array_per_set_of_options_and_fails_only_what_sbatch_refuses(
    tmp_path: Path,
) -> None:
    backend = SlurmBackend(tmp_path / ".jobs", settings_from(SLURM_TEST_SETTINGS))
    small = [job(tmp_path, f"ccat-run-{i}-a0-many", "sh", "-c", f"echo many {i}") for i in range(3)]
    larger = job(tmp_path, "ccat-run-9-a0-larger", "sh", "-c", "echo larger", memory_gb=0.6)
    huge = job(tmp_path, "ccat-run-10-a0-huge", "true", memory_gb=100_000)  # no node has it

    results = backend.submit_many([small[0], larger, small[1], huge, small[2]])

    assert backend.calls["sbatch"] == 3  # one array, one plain job, one refused
    array_id = str(results[0]).split("_")[0]
    assert [results[0], results[2], results[4]] == [f"{array_id}_{i}" for i in range(3)]
    assert isinstance(results[1], str) and results[1].isdigit()
    assert isinstance(results[3], BackendError) and "sbatch" in str(results[3])
    for job_id, text in [(results[0], "many 0"), (results[4], "many 2"), (results[1], "larger")]:
        assert isinstance(job_id, str)
        assert wait(backend, job_id).state is JobState.COMPLETED
        assert text in backend.logs(job_id)
