"""Scaffolding for gap-evaluation tests: a three-step pipeline, waves of runs, products."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.gaps.create import CreatedRun, create_runs
from ccat_wm.gaps.evaluate import evaluate
from ccat_wm.gaps.incremental import evaluate_incremental
from ccat_wm.gaps.model import Gap
from ccat_wm.gaps.snapshot import load_snapshot
from ccat_wm.simulate.register import SimulationRequest, register_simulation
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import load_spec_files
from tests.helpers import locations_data, write_yaml

PIPELINE = "gaps"


def _step(
    name: str, software: str, group_by: list[str], depends_on: list[str], **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "software": software,
        "group_by": group_by,
        "depends_on": depends_on,
        "max_retries": 2,
        "config": {
            "name": f"{name}-config",
            "parameters": {"mode": "a"},
            "command": [name, "{mode}"],
            "resources": {"cpu": 2, "time_hours": 0.5},
        },
        **extra,
    }


def base_spec(root: Path) -> dict[str, Any]:
    """Three steps: calibrate per scan -> grid per source+line -> summary over all data."""
    software = [
        {"name": n, "versions": [{"tag": "1.3.0"}, {"tag": "1.4.0", "is_latest": True}]}
        for n in ("calib-sw", "grid-sw", "summary-sw")
    ]
    return {
        **locations_data(root),
        "software": software,
        "data_groupings": [{"name": "all-chai", "filter_rules": []}],
        "pipelines": [
            {
                "name": PIPELINE,
                "data_grouping": "all-chai",
                "processing_location": "local",
                "trigger": {"type": "CONTINUOUS"},
                "steps": [
                    _step("calibrate", "calib-sw", ["executed_obs_unit"], []),
                    _step("grid", "grid-sw", ["source", "line"], ["calibrate"]),
                    _step("summary", "summary-sw", [], ["grid"]),
                ],
            }
        ],
    }


class GapKit:
    """A test's handle on one ops DB: apply specs, simulate, evaluate, run waves."""

    def __init__(self, engine: Engine, root: Path) -> None:
        self.engine = engine
        self.root = root
        self.spec = base_spec(root)
        self.apply()

    def apply(self, spec: dict[str, Any] | None = None) -> None:
        if spec is not None:
            self.spec = spec
        path = write_yaml(self.root / "spec.yaml", self.spec)
        with Session(self.engine) as session, session.begin():
            apply_specs(session, load_spec_files([path]), user="tester")

    def edited(self) -> dict[str, Any]:
        return copy.deepcopy(self.spec)

    def step(self, spec: dict[str, Any], name: str) -> dict[str, Any]:
        steps: list[dict[str, Any]] = spec["pipelines"][0]["steps"]
        return next(s for s in steps if s["name"] == name)

    def simulate(
        self,
        scans: int,
        sources: Sequence[str] = ("NGC253",),
        lines: Sequence[str] = ("CO43",),
        seed: int = 1,
    ) -> None:
        with Session(self.engine) as session, session.begin():
            register_simulation(
                session,
                SimulationRequest(
                    scans=scans, seed=seed, sources=tuple(sources), lines=tuple(lines)
                ),
            )

    def db_now(self) -> dt.datetime:
        with self.engine.connect() as conn:
            now: dt.datetime = conn.scalar(select(func.now()))  # type: ignore[assignment]
        return now

    def set_package_times(self, when: dt.datetime | Sequence[dt.datetime]) -> None:
        """Set packages' ingest times (in id order), one value for all or one per package."""
        with Session(self.engine) as session, session.begin():
            ids = session.scalars(select(m.RawDataPackage.id).order_by(m.RawDataPackage.id)).all()
            times = [when] * len(ids) if isinstance(when, dt.datetime) else list(when)
            for package_id, moment in zip(ids, times, strict=True):
                session.execute(
                    update(m.RawDataPackage)
                    .where(m.RawDataPackage.id == package_id)
                    .values(created_at=moment)
                )

    def gaps(self, now: dt.datetime | None = None, **kwargs: Any) -> list[Gap]:
        """Evaluate at `now`; the pruned (set-based) and the full snapshot must agree."""
        now = now or self.later()
        with Session(self.engine) as session:
            pipeline = session.scalars(select(m.Pipeline).where(m.Pipeline.name == PIPELINE)).one()
            full = evaluate(load_snapshot(session, pipeline, prune=False), now, **kwargs)
            if not kwargs.get("force"):
                assert evaluate(load_snapshot(session, pipeline), now, **kwargs) == full
        if not kwargs:  # what a trigger tick sees, reading only what changed since the last
            assert self.incremental(now) == full
        return full

    def incremental(self, now: dt.datetime) -> list[Gap]:
        """The trigger's incremental evaluation at `now` (committed, as a tick does)."""
        with Session(self.engine) as session, session.begin():
            pipeline = session.scalars(select(m.Pipeline).where(m.Pipeline.name == PIPELINE)).one()
            return evaluate_incremental(session, pipeline, now).gaps

    def later(self, seconds: float = 1) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)

    def create(self, now: dt.datetime | None = None, **kwargs: Any) -> list[CreatedRun]:
        with Session(self.engine) as session, session.begin():
            pipeline = session.scalars(select(m.Pipeline).where(m.Pipeline.name == PIPELINE)).one()
            snapshot = load_snapshot(session, pipeline, prune=not kwargs.get("force"))
            return create_runs(session, snapshot, evaluate(snapshot, now or self.later(), **kwargs))

    def finish(
        self,
        runs: Sequence[CreatedRun],
        status: m.RunStatus = m.RunStatus.COMPLETED,
        retry_count: int = 0,
    ) -> None:
        """End runs with `status`; completed runs get one INTERMEDIATE product and a LOG."""
        ids = [r.id for r in runs]
        with Session(self.engine) as session, session.begin():
            if status is m.RunStatus.COMPLETED and ids:
                rows = [
                    {
                        "executed_reduction_step_id": i,
                        "data_product_type": kind,
                        "file_path": f"/products/{i}/{kind.value}.dat",
                        "file_size": 10,
                        "checksum": hashlib.sha256(f"{i}{kind}".encode()).hexdigest(),
                        "metadata": {},
                    }
                    for i in ids
                    for kind in (m.DataProductType.INTERMEDIATE, m.DataProductType.LOG)
                ]
                session.execute(insert(m.DataProduct.__table__), rows)
            # After the products, as result collection does: the digest is taken now.
            session.execute(
                update(m.ExecutedReductionStep)
                .where(m.ExecutedReductionStep.id.in_(ids))
                .values(
                    status=status, retry_count=retry_count, finished_at=func.now(), cpu_hours=0.25
                )
            )

    def wave(self) -> int:
        """Run and complete everything that becomes eligible, step after step; return run count."""
        total = 0
        for _ in range(10):
            created = self.create()
            if not created:
                return total
            self.finish(created)
            total += len(created)
        raise AssertionError("the pipeline did not settle in 10 rounds")


def reasons(gaps: Sequence[Gap]) -> dict[tuple[str, str], str]:
    """(step, key) -> reason value."""
    return {(g.step, g.sub_group_key): g.reason.value for g in gaps}


def ready(gaps: Sequence[Gap]) -> dict[tuple[str, str], bool]:
    """(step, key) -> ready."""
    return {(g.step, g.sub_group_key): g.ready for g in gaps}
