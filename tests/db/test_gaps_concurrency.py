"""Run creation is idempotent and safe when several evaluators run at once."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from tests.gapkit import PIPELINE, GapKit


def _evaluator(url: str, barrier: mp.synchronize.Barrier, out: mp.Queue) -> None:  # type: ignore[type-arg]
    from ccat_wm.gaps.create import create_runs
    from ccat_wm.gaps.evaluate import evaluate
    from ccat_wm.gaps.snapshot import load_snapshot

    engine = create_engine(url)
    import datetime as dt

    with Session(engine) as session, session.begin():
        pipeline = session.scalars(select(m.Pipeline).where(m.Pipeline.name == PIPELINE)).one()
        snapshot = load_snapshot(session, pipeline)
        gaps = evaluate(snapshot, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
        barrier.wait(timeout=60)  # all four have evaluated the same state; now race
        created = create_runs(session, snapshot, gaps)
    out.put(len(created))
    engine.dispose()


def test_four_processes_creating_runs_at_once_make_no_duplicates(
    engine: Engine, tmp_path: Path
) -> None:
    kit = GapKit(engine, tmp_path)
    kit.simulate(40, sources=("NGC253", "M83", "Orion-KL"), lines=("CO43", "CI10"), seed=9)
    expected = sum(1 for g in kit.gaps() if g.eligible)
    assert expected == 40
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    url = engine.url.render_as_string(hide_password=False)
    workers = [ctx.Process(target=_evaluator, args=(url, barrier, out)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    counts = sorted(out.get(timeout=5) for _ in workers)
    assert sum(counts) == expected  # each gap created by exactly one of them
    with Session(engine) as session:
        per_key = session.execute(
            select(m.ExecutedReductionStep.sub_group_key, func.count())
            .group_by(m.ExecutedReductionStep.sub_group_key)
            .having(func.count() > 1)
        ).all()
        assert per_key == []
        inputs = session.scalar(select(func.count()).select_from(m.ExecutedReductionStepInput))
        assert inputs == 80  # two packages per scan, recorded once
