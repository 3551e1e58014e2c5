"""What each attempt asks for: escalation after OUT_OF_MEMORY/TIMEOUT, limits, failure kinds."""

from __future__ import annotations

import pytest

from ccat_ops_db.models import FailureKind
from ccat_wm.execution.sizing import (
    EscalationFactors,
    ImpossibleRequestError,
    check_request,
    classify_failure,
    combined_limits,
    escalate,
)
from infra.backends import ResourceLimits, Resources

SLURM = ResourceLimits(cpu=16, memory_gb=15.625, time_hours=None, source="SLURM partition debug")
START = Resources(cpu=2, memory_gb=4.0, time_hours=1.0)


def test_out_of_memory_multiplies_memory_and_timeout_multiplies_time_only() -> None:
    limits = combined_limits({}, SLURM)
    factors = EscalationFactors(memory=2.0, time=3.0)
    oom = escalate(START, FailureKind.OUT_OF_MEMORY, factors, limits)
    assert (oom.cpu, oom.memory_gb, oom.time_hours) == (2, 8.0, 1.0)
    slow = escalate(START, FailureKind.TIMEOUT, factors, limits)
    assert (slow.memory_gb, slow.time_hours) == (4.0, 3.0)
    for other in (FailureKind.EXIT_CODE, FailureKind.NODE_FAIL, FailureKind.SIGNAL, None):
        assert escalate(START, other, factors, limits) == START


def test_escalation_is_capped_by_the_limit_and_refused_once_at_it() -> None:
    limits = combined_limits({"max_time_hours": 2.5}, SLURM)
    capped = escalate(Resources(memory_gb=10.0), FailureKind.OUT_OF_MEMORY,
                      EscalationFactors(), limits)  # fmt: skip
    assert capped.memory_gb == 15.625
    with pytest.raises(ImpossibleRequestError, match=r"memory_gb 15.62 GB, already the limit"):
        escalate(capped, FailureKind.OUT_OF_MEMORY, EscalationFactors(), limits)
    longer = escalate(Resources(time_hours=2.0), FailureKind.TIMEOUT, EscalationFactors(), limits)
    assert longer.time_hours == 2.5
    with pytest.raises(ImpossibleRequestError, match="location setting max_time_hours"):
        escalate(longer, FailureKind.TIMEOUT, EscalationFactors(), limits)


def test_the_smaller_limit_wins_and_a_request_over_it_names_resource_request_and_limit() -> None:
    limits = combined_limits({"max_memory_gb": 64, "max_cpu": 8}, SLURM)
    assert (limits.of("cpu"), limits.of("memory_gb"), limits.of("time_hours")) == (8, 15.625, None)
    assert limits.sources == {
        "cpu": "location setting max_cpu", "memory_gb": "SLURM partition debug",
    }  # fmt: skip
    check_request(Resources(cpu=8, memory_gb=15.625, time_hours=1000), limits, "hpc")
    with pytest.raises(ImpossibleRequestError) as error:
        check_request(Resources(cpu=9, memory_gb=20), limits, "hpc")
    message = str(error.value)
    assert "location 'hpc'" in message
    assert "cpu 9 exceeds the limit 8 (location setting max_cpu)" in message
    assert "memory_gb 20 GB exceeds the limit 15.62 GB (SLURM partition debug)" in message
    assert error.value.request == Resources(cpu=9, memory_gb=20)


@pytest.mark.parametrize(
    ("reason", "exit_code", "kind"),
    [
        ("OUT_OF_MEMORY", -9, FailureKind.OUT_OF_MEMORY),
        ("TIMEOUT", 0, FailureKind.TIMEOUT),
        ("NODE_FAIL", None, FailureKind.NODE_FAIL),
        ("PREEMPTED", None, FailureKind.PREEMPTED),
        ("killed by SIGKILL (exit code 137)", 137, FailureKind.SIGNAL),
        ("exit code 3", 3, FailureKind.EXIT_CODE),
        ("backend lost the job: gone", None, FailureKind.LOST),
        ("STUCK_PENDING: job 5 was held", None, FailureKind.STUCK_PENDING),
        ("ErrImagePull: no such image", None, FailureKind.NOT_STARTED),
    ],
)
def test_failure_reasons_are_classified(
    reason: str, exit_code: int | None, kind: FailureKind
) -> None:
    assert classify_failure(reason, exit_code) is kind
