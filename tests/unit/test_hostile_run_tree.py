"""A run's directories as a hostile job leaves them: nothing it planted is followed (no DB).

Each case plants what a step program could (a link to a host file or directory, a
FIFO, a file where a directory belongs) and checks that the manager names it and that
the host file or directory outside the run's tree is neither read, written, moved into
nor chmodded. The same cases through a real run are in tests/db/test_hostile_steps.py
(host runtime) and tests/containers/test_isolation.py (podman).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from ccat_ops_db.models import DataProductType as T
from ccat_wm.execution.collect import (
    ContractViolationError,
    checksum_outputs,
    preserve_failed_logs,
    reset_output,
    scan_outputs,
)
from ccat_wm.execution.failure import FailedRun, failure_markdown, failure_message, log_tail
from ccat_wm.execution.layout import RunLayout
from ccat_wm.execution.runtree import (
    UnsafeEntryError,
    create_log,
    make_read_only,
    open_regular,
    unexpected_kind,
)
from ccat_wm.execution.staging import StagingError, copy_verified
from infra.backends.base import BackendError
from infra.backends.local_launch import append_log as _append_log


@pytest.fixture
def run(tmp_path: Path) -> RunLayout:
    layout = RunLayout.for_run(tmp_path / "runs", "p", "k=v", 7, "grid", is_final=True)
    layout.create()
    return layout


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A host directory outside every run tree, holding one file (mode 0644)."""
    victim = tmp_path / "host"
    victim.mkdir()
    (victim / "secret.txt").write_text("host secret")
    (victim / "secret.txt").chmod(0o644)
    return victim


def _untouched(host: Path) -> None:
    assert sorted(p.name for p in host.iterdir()) == ["secret.txt"]
    assert (host / "secret.txt").read_text() == "host secret"
    assert stat.S_IMODE((host / "secret.txt").stat().st_mode) == 0o644


def test_an_output_directory_replaced_by_a_link_to_a_host_directory_is_not_collected(
    run: RunLayout, host: Path
) -> None:
    os.rmdir(run.output)
    run.output.symlink_to(host)
    with pytest.raises(ContractViolationError) as info:
        scan_outputs(run)
    assert f"the output directory {run.output}: was replaced by a symlink" in str(info.value)
    _untouched(host)


def test_a_class_directory_linked_to_a_host_directory_leaves_the_output(
    run: RunLayout, host: Path
) -> None:
    (run.output / "science").symlink_to(host)
    (run.output / "qa").mkdir()
    (run.output / "qa" / "via").symlink_to(host / "secret.txt")
    with pytest.raises(ContractViolationError) as info:
        scan_outputs(run)
    problems = info.value.problems
    assert any("science: symlink leaves the output directory" in p for p in problems), problems
    assert any("qa/via: symlink leaves the output directory" in p for p in problems), problems
    _untouched(host)


def test_hashing_never_follows_a_directory_swapped_for_a_link_after_the_scan(
    run: RunLayout, host: Path
) -> None:
    science = run.output / "science"
    science.mkdir()
    (science / "secret.txt").write_text("product")
    outputs = scan_outputs(run)
    (science / "secret.txt").unlink()
    science.rmdir()
    science.symlink_to(host)  # a process the job left behind swaps the directory
    with pytest.raises(ContractViolationError, match=r"science: was replaced by a symlink"):
        checksum_outputs(outputs)
    with pytest.raises(UnsafeEntryError, match="was replaced by a symlink"):
        make_read_only(run.root, science / "secret.txt")
    _untouched(host)


def test_failed_logs_are_not_moved_into_a_link_the_job_planted_at_their_target(
    run: RunLayout, host: Path
) -> None:
    (run.output / "logs").mkdir()
    (run.output / "logs" / "tool.log").write_text("the software's own log")
    (run.logs / "grid-attempt-1").symlink_to(host)
    moved, problems = preserve_failed_logs(run, 0)
    assert moved == []
    assert len(problems) == 1 and "grid-attempt-1: was replaced by a symlink" in problems[0]
    assert (run.output / "logs" / "tool.log").exists()  # left where it was
    _untouched(host)


def test_failed_logs_are_not_moved_through_a_link_below_a_real_target(
    run: RunLayout, host: Path
) -> None:
    (run.output / "logs" / "sub").mkdir(parents=True)
    (run.output / "logs" / "sub" / "deep.log").write_text("x")
    (run.output / "logs" / "top.log").write_text("y")
    (run.logs / "grid-attempt-1").mkdir()
    (run.logs / "grid-attempt-1" / "sub").symlink_to(host)
    moved, problems = preserve_failed_logs(run, 0)
    assert problems and "grid-attempt-1/sub: was replaced by a symlink" in problems[0]
    _untouched(host)
    assert all(run.root in p.path.parents for p in moved)


def test_failed_logs_move_into_the_run_log_directory(run: RunLayout) -> None:
    (run.output / "logs" / "sub").mkdir(parents=True)
    (run.output / "logs" / "sub" / "deep.log").write_text("x")
    (run.output / "logs" / "fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(run.output / "logs" / "fifo")
    moved, problems = preserve_failed_logs(run, 2)
    assert problems == []
    assert [p.path for p in moved] == [run.logs / "grid-attempt-3" / "sub" / "deep.log"]
    assert all(p.data_product_type is T.LOG for p in moved)
    assert (run.output / "logs" / "fifo").exists()  # not a file: stays, unread


def test_an_attempt_log_planted_as_a_link_or_fifo_is_refused_before_a_job_starts(
    run: RunLayout, host: Path
) -> None:
    link = run.attempt_log(1)
    link.symlink_to(host / "secret.txt")
    with pytest.raises(UnsafeEntryError, match=r"grid-attempt-2\.log: was replaced by a symlink"):
        create_log(run.root, link)
    with pytest.raises(BackendError, match="cannot open the log"):
        _append_log(link, "job-1")
    fifo = run.attempt_log(2)
    os.mkfifo(fifo)
    with pytest.raises(UnsafeEntryError, match="was replaced by a named pipe"):
        create_log(run.root, fifo)
    with pytest.raises(BackendError, match=r"grid-attempt-3\.log of job job-2"):
        _append_log(fifo, "job-2")
    create_log(run.root, run.attempt_log(0))  # a regular file is created (or kept)
    assert run.attempt_log(0).is_file()
    _untouched(host)


def test_a_replaced_attempt_log_is_named_and_never_read(run: RunLayout, host: Path) -> None:
    log = run.attempt_log(0)
    log.symlink_to(host / "secret.txt")
    assert unexpected_kind(run.root, log) == "a symlink"
    assert log_tail(log) == []
    message = failure_message(FailedRun(7, "grid[k=v]", 1, "exit code 1", log))
    assert f"its log {log} was replaced by a symlink; it was not read" in message
    assert "was replaced by a symlink" in failure_markdown(FailedRun(7, "g", 1, "x", log))
    assert "host secret" not in message
    with pytest.raises(UnsafeEntryError, match="was replaced by a symlink"):
        open_regular(run.root, log)


def test_reset_removes_a_planted_output_link_not_what_it_names(run: RunLayout, host: Path) -> None:
    os.rmdir(run.output)
    run.output.symlink_to(host)
    reset_output(run)
    assert run.output.is_dir() and not run.output.is_symlink()
    _untouched(host)


def test_a_contract_directory_replaced_by_a_link_stops_the_next_attempt(
    run: RunLayout, host: Path
) -> None:
    os.rmdir(run.logs)
    run.logs.symlink_to(host)
    with pytest.raises(UnsafeEntryError, match=r"/logs: was replaced by a symlink"):
        run.create()
    _untouched(host)


def test_staging_never_copies_a_linked_source_nor_writes_through_a_planted_link(
    run: RunLayout, host: Path, tmp_path: Path
) -> None:
    """An upstream product swapped for a link is not copied downstream; a link an earlier
    attempt planted in `workspace/` does not redirect the copy to the host."""
    product = tmp_path / "upstream.npz"
    product.write_text("upstream product")
    digest = hashlib.sha256(b"upstream product").hexdigest()
    linked = tmp_path / "swapped.npz"
    linked.symlink_to(host / "secret.txt")
    target = run.root / "workspace" / "calibrate" / "run-1" / "science" / "upstream.npz"
    with pytest.raises(StagingError, match=r"swapped\.npz \(product\) was replaced by a symlink"):
        copy_verified(linked, target, digest, "product", root=run.root)
    (run.root / "workspace" / "calibrate").symlink_to(host)
    with pytest.raises(UnsafeEntryError, match=r"workspace/calibrate: was replaced by a symlink"):
        copy_verified(product, target, digest, "product", root=run.root)
    _untouched(host)
    (run.root / "workspace" / "calibrate").unlink()
    copy_verified(product, target, digest, "product", root=run.root)
    assert target.read_text() == "upstream product"
    assert stat.S_IMODE(target.stat().st_mode) == 0o444
