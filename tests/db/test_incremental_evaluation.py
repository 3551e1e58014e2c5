"""Incremental evaluation (trigger ticks) equals the full evaluation after every change.

A randomized sequence of the changes a survey sees (new scans, late data, version bumps,
config edits, runs created, finishing and failing, packages and runs invalidated and
un-invalidated, runs rejected and accepted again by a quality decision), on the three-step pipeline of the gap scenarios with a cooldown and a
maximum wait; after every change the incremental gaps must be the full evaluation's.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, insert, select
from sqlalchemy.orm import Session

from ccat_ops_db import migrate
from ccat_ops_db import models as m
from ccat_wm.db import normalize_db_url
from ccat_wm.embedded_pg import ensure_embedded_server, stop_embedded_server
from ccat_wm.execution.invalidation import Target, TargetKind, invalidate, undo_invalidation
from ccat_wm.gaps.create import CreatedRun
from ccat_wm.gaps.evaluate import evaluate
from ccat_wm.gaps.incremental import IncrementalResult, evaluate_incremental
from ccat_wm.gaps.model import GapReason
from ccat_wm.gaps.snapshot import load_snapshot
from ccat_wm.quality.people import decide
from tests.gapkit import PIPELINE, GapKit

RUN = m.ExecutedReductionStep


class Survey:
    """The gap kit, driven by a seeded random generator."""

    def __init__(self, kit: GapKit, seed: int) -> None:
        self.kit = kit
        self.rng = random.Random(seed)
        self.major = 1
        self.mode = 0
        spec = kit.edited()
        kit.step(spec, "calibrate").update(cooldown_seconds=1, max_wait_seconds=30)
        kit.step(spec, "grid")["cooldown_seconds"] = 2
        kit.apply(spec)

    def new_scans(self) -> str:
        count = self.rng.randint(1, 3)
        sources = tuple(self.rng.sample(["NGC253", "M83", "NGC4945"], self.rng.randint(1, 2)))
        self.kit.simulate(count, sources=sources, seed=self.rng.randint(1, 10**6))
        return f"{count} new scan(s) of {sources}"

    def late_data(self) -> str:
        with Session(self.kit.engine) as session, session.begin():
            packages = session.scalars(select(m.RawDataPackage)).all()
            if not packages:
                return "no data yet"
            base = self.rng.choice(packages)
            if self.rng.random() < 0.3:  # delivered again, with different content
                base.checksum = f"{self.rng.getrandbits(64):016x}"
                return f"package {base.id} delivered again"
            module = m.InstrumentModule(
                instrument_id=session.get_one(
                    m.InstrumentModule, base.instrument_module_id
                ).instrument_id,
                name=f"LATE-{self.rng.getrandbits(32)}",
                description="a module whose data came late",
            )
            session.add(module)
            session.flush()
            session.execute(
                insert(m.RawDataPackage).values(
                    name=f"{base.name}-late-{module.id}",
                    executed_obs_unit_id=base.executed_obs_unit_id,
                    instrument_module_id=module.id,
                    size=base.size,
                    checksum=f"{self.rng.getrandbits(64):016x}",
                    metadata_=base.metadata_,
                    state=base.state,
                )
            )
            return f"late package for scan {base.executed_obs_unit_id}"

    def version_bump(self) -> str:
        spec = self.kit.edited()
        software = self.rng.choice(spec["software"])
        compatible = self.rng.random() < 0.5
        for version in software["versions"]:
            version.pop("is_latest", None)
        if compatible:
            tag = f"{self.major}.{len(software['versions']) + 10}.0"
        else:
            self.major += 1
            tag = f"{self.major}.0.0"
        software["versions"].append({"tag": tag, "is_latest": True})
        self.kit.apply(spec)
        return f"{software['name']} {tag}"

    def config_edit(self) -> str:
        spec = self.kit.edited()
        step = self.rng.choice(["calibrate", "grid", "summary"])
        self.mode += 1
        config = self.kit.step(spec, step)["config"]
        config["parameters"] = {"mode": f"m{self.mode}"}
        config["name"] = f"{step}-config-{self.mode}"
        self.kit.apply(spec)
        return f"config of {step}"

    def create_runs(self) -> str:
        return f"{len(self.kit.create(self.kit.later(60)))} run(s) created"

    def _pending(self) -> list[CreatedRun]:
        with Session(self.kit.engine) as session:
            rows = session.execute(
                select(RUN.id, RUN.sub_group_key).where(RUN.status == m.RunStatus.PENDING)
            ).all()
        return [CreatedRun(r.id, "", r.sub_group_key, GapReason.NEW) for r in rows]

    def finish_runs(self) -> str:
        pending = self._pending()
        self.rng.shuffle(pending)
        done = pending[: self.rng.randint(min(1, len(pending)), len(pending))]
        failed = [r for r in done if self.rng.random() < 0.3]
        completed = [r for r in done if r not in failed]
        self.kit.finish(completed)
        if failed:
            self.kit.finish(failed, m.RunStatus.FAILED, retry_count=self.rng.randint(0, 2))
        return f"{len(completed)} completed, {len(failed)} failed"

    def invalidate_data(self) -> str:
        with Session(self.kit.engine) as session, session.begin():
            active = session.scalars(
                select(m.Invalidation).where(m.Invalidation.undone_at.is_(None))
            ).all()
            if active and self.rng.random() < 0.4:
                mark = self.rng.choice(active)
                kind = TargetKind.RAW_PACKAGE if mark.raw_data_package_id else TargetKind.RUN
                target = Target(kind, mark.raw_data_package_id or mark.executed_reduction_step_id)
                undo_invalidation(session, [target], "was fine", user="tester", dry_run=False)
                return f"undid {target}"
            runs = session.scalars(
                select(RUN.id).where(RUN.status == m.RunStatus.COMPLETED, RUN.is_current)
            ).all()
            packages = session.scalars(select(m.RawDataPackage.id)).all()
            marked = {i.raw_data_package_id for i in active} | {
                i.executed_reduction_step_id for i in active
            }
            if runs and self.rng.random() < 0.5:
                target = Target(TargetKind.RUN, self.rng.choice(runs))
            elif packages:
                target = Target(TargetKind.RAW_PACKAGE, self.rng.choice(packages))
            else:
                return "nothing to invalidate"
            if target.id in marked:
                return "already invalidated"
            invalidate(session, [target], "bad", user="tester", dry_run=False)
            return f"invalidated {target}"

    def quality_decision(self) -> str:
        """A person rejects a current run, accepts it again, or takes a decision back
        (`ccat-wm qa`): its products leave or rejoin the inputs downstream, whose gaps
        then say `qa_changed`."""
        with Session(self.kit.engine) as session, session.begin():
            runs = session.execute(
                select(RUN.id, RUN.qa_rejected)
                .where(RUN.is_current, RUN.status == m.RunStatus.COMPLETED)
                .order_by(RUN.id)
            ).all()
            if not runs:
                return "no current run to decide on"
            run_id, rejected = self.rng.choice(runs)
            undo = rejected and self.rng.random() < 0.3
            decide(
                session, [run_id], rejected=not rejected, reason="looked", user="tester",
                undo=undo,
            )  # fmt: skip
        return f"run {run_id} {'undone' if undo else 'accepted' if rejected else 'rejected'}"

    def step(self) -> str:
        change = self.rng.choices(
            [self.new_scans, self.late_data, self.version_bump, self.config_edit,
             self.create_runs, self.finish_runs, self.invalidate_data, self.quality_decision],
            weights=[3, 2, 0.7, 0.7, 5, 5, 1, 1.5],
        )[0]  # fmt: skip
        return change()


def _compare(kit: GapKit) -> IncrementalResult:
    now = kit.later(kit_offset := 3)
    del kit_offset
    with Session(kit.engine) as session, session.begin():
        pipeline = session.scalars(select(m.Pipeline).where(m.Pipeline.name == PIPELINE)).one()
        result = evaluate_incremental(session, pipeline, now)
    with Session(kit.engine) as session:
        pipeline = session.scalars(select(m.Pipeline).where(m.Pipeline.name == PIPELINE)).one()
        full = evaluate(load_snapshot(session, pipeline), now)
    assert result.gaps == full
    return result


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_incremental_equals_full_after_every_random_change(
    engine: Engine, tmp_path: Path, seed: int
) -> None:
    survey = Survey(GapKit(engine, tmp_path), seed)
    survey.new_scans()
    history = []
    incremental = 0
    for _ in range(60):
        what = survey.step()
        history.append(what)
        try:
            result = _compare(survey.kit)
        except AssertionError as exc:
            raise AssertionError(f"after {history}: {exc}") from exc
        incremental += not result.rebuilt
    assert incremental >= 40, "most ticks must read only what changed, not rebuild"


@pytest.fixture
def own_server_engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated database on a PostgreSQL server of its own (the embedded one).

    A tick's watermark is the oldest transaction still running on the whole server
    (`transaction_watermark`): on a server shared with tests running in parallel, another
    database's open transaction makes a tick re-read more than its change touched
    (correct, but not the exact count this test asserts).
    """
    home = tmp_path / "own-server"
    url = normalize_db_url(ensure_embedded_server(home))
    engine = create_engine(url)
    try:
        migrate.upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        stop_embedded_server(home)


@pytest.mark.embedded
def test_a_tick_reads_only_the_sub_groups_a_change_touches(
    own_server_engine: Engine, tmp_path: Path
) -> None:
    """One new scan makes three sub-groups dirty (its scan, its source+line, all data)."""
    engine = own_server_engine
    kit = GapKit(engine, tmp_path)
    kit.simulate(6, sources=("NGC253", "M83", "NGC4945"), seed=3)
    kit.wave()
    assert _compare(kit).rebuilt  # the first tick builds what it keeps
    unchanged = _compare(kit)
    assert (unchanged.rebuilt, unchanged.dirty, unchanged.gaps) == (False, 0, [])
    kit.simulate(1, sources=("M83",), seed=9)
    result = _compare(kit)
    assert (result.rebuilt, result.dirty) == (False, 3)
    assert {g.step for g in result.gaps} == {"calibrate", "grid", "summary"}
    with Session(engine) as session:
        changes = session.scalar(select(func.count()).select_from(m.EvaluationChange))
    assert changes and changes > 0
