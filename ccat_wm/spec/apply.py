"""Write validated spec files to the ops DB: create or update in place, all or nothing.

Objects are matched by name, so ids and run history survive edits. Applying the same
files twice changes nothing. Nothing is ever deleted except a pipeline's steps that
vanished from its definition and have no runs (steps with runs are history; removing
them is a validation error). Pipelines absent from the files are left alone: apply
takes any subset of a site's files; retire a pipeline with `enabled: false`.
The caller owns the transaction: commit to apply, roll back for `--dry-run`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from sqlalchemy import (
    delete,
    insert,
    select,
    text,
)
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.quality.downstream import DownstreamChanges
from ccat_wm.quality.redecide import redecide_step
from ccat_wm.spec.apply_sites import write_sites
from ccat_wm.spec.changes import Change, short_value
from ccat_wm.spec.db_catalog import load_catalog
from ccat_wm.spec.loader import LoadedSpec
from ccat_wm.spec.location_models import LocationSpec
from ccat_wm.spec.models import (
    ConfigSpec,
    CronTrigger,
    DataGroupingSpec,
    InstrumentSpec,
    PipelineSpec,
    SoftwareSpec,
    StepSpec,
)
from ccat_wm.spec.validate import topological_order, validate_bundle

APPLY_LOCK_ID = 0x0CCA7A99
"""Advisory lock serializing concurrent `apply` calls."""

ModelT = TypeVar("ModelT", bound=m.Base)


class _Writer:
    """Creates or updates rows section by section, recording every change."""

    def __init__(self, session: Session, user: str) -> None:
        self.session = session
        self.user = user
        self.changes: list[Change] = []
        self.regated: list[tuple[m.Pipeline, m.ReductionStep, StepSpec]] = []
        """Existing steps whose `qa_gate` changed: their current runs are re-decided."""

    def sync(
        self, model: type[ModelT], key: dict[str, Any], values: dict[str, Any], kind: str, name: str
    ) -> ModelT:
        obj = self.session.scalars(select(model).filter_by(**key)).one_or_none()
        if obj is None:
            obj = model(**key, **values)
            self.session.add(obj)
            self.session.flush()
            self.changes.append(Change("create", kind, name))
            return obj
        details = []
        for attr, new in values.items():
            old = getattr(obj, attr)
            if old != new:
                setattr(obj, attr, new)
                details.append(f"{attr}: {short_value(old)} -> {short_value(new)}")
        if details:
            self.session.flush()
            self.changes.append(Change("update", kind, name, tuple(details)))
        return obj

    def id_of(self, model: type[m.Base], **key: Any) -> int:
        found: int = self.session.scalars(select(model.id).filter_by(**key)).one()  # type: ignore[attr-defined]
        return found

    def instrument(self, spec: InstrumentSpec) -> None:
        inst = self.sync(
            m.Instrument,
            {"name": spec.name},
            {"description": spec.description},
            "instrument",
            spec.name,
        )
        for module in spec.modules:
            self.sync(
                m.InstrumentModule,
                {"instrument_id": inst.id, "name": module},
                {},
                "instrument module",
                f"{spec.name}/{module}",
            )

    def location(self, spec: LocationSpec) -> None:
        values = {
            "site_id": self.id_of(m.Site, name=spec.site),
            "location_type": spec.location_type,
            "storage_type": spec.storage_type,
            "path": spec.path,
            "backend": spec.backend,
            "runtime": spec.effective_runtime,
            "settings": spec.settings.model_dump(
                mode="json", exclude_none=True, exclude_defaults=True
            ),
        }
        self.sync(m.DataLocation, {"name": spec.name}, values, "location", spec.name)

    def software(self, spec: SoftwareSpec) -> None:
        values = {
            "ghcr_url": spec.ghcr_url,
            "github_repo_url": spec.github_repo_url,
            "description": spec.description,
        }
        sw = self.sync(m.ReductionSoftware, {"name": spec.name}, values, "software", spec.name)
        if not spec.versions:
            return
        latest = next(v.tag for v in spec.versions if v.is_latest)
        # Clear the old latest first: a partial unique index allows one latest per software.
        stale = self.session.scalars(
            select(m.ReductionSoftwareVersion).where(
                m.ReductionSoftwareVersion.reduction_software_id == sw.id,
                m.ReductionSoftwareVersion.is_latest,
                m.ReductionSoftwareVersion.tag != latest,
            )
        ).all()
        for old in stale:
            old.is_latest = False
            self.changes.append(
                Change(
                    "update",
                    "software version",
                    f"{spec.name}:{old.tag}",
                    ("is_latest: True -> False",),
                )
            )
        self.session.flush()
        for v in sorted(spec.versions, key=lambda v: v.is_latest):
            self.sync(
                m.ReductionSoftwareVersion,
                {"reduction_software_id": sw.id, "tag": v.tag},
                {
                    "digest": v.digest,
                    "is_latest": v.is_latest,
                    "image_kind": v.image_kind,
                    "sif_path": v.sif_path,
                },
                "software version",
                f"{spec.name}:{v.tag}",
            )

    def grouping(self, spec: DataGroupingSpec) -> None:
        module_id = None
        if spec.instrument_module is not None:
            inst, module = spec.instrument_module.split("/")
            module_id = self.session.scalars(
                select(m.InstrumentModule.id)
                .join(m.Instrument, m.Instrument.id == m.InstrumentModule.instrument_id)
                .where(m.Instrument.name == inst, m.InstrumentModule.name == module)
            ).one()
        rules = [r.model_dump(mode="json", exclude_none=True) for r in spec.filter_rules]
        self.sync(
            m.DataGrouping,
            {"name": spec.name},
            {"filter_rules": rules, "instrument_module_id": module_id},
            "data grouping",
            spec.name,
        )

    def pipeline(self, spec: PipelineSpec) -> None:
        trigger_config = (
            {"cron": spec.trigger.cron, "timezone": spec.trigger.timezone}
            if isinstance(spec.trigger, CronTrigger)
            else {}
        )
        values: dict[str, Any] = {
            "data_grouping_id": self.id_of(m.DataGrouping, name=spec.data_grouping),
            "processing_location_id": self.id_of(m.DataLocation, name=spec.processing_location),
            "trigger_type": m.TriggerType(spec.trigger.type),
            "trigger_config": trigger_config,
            "enabled": spec.enabled,
            "priority": spec.priority,
        }
        existing = self.session.scalars(select(m.Pipeline).filter_by(name=spec.name)).one_or_none()
        if existing is None:
            values["created_by_user_id"] = self.user_id()
        pipeline = self.sync(m.Pipeline, {"name": spec.name}, values, "pipeline", spec.name)
        order = topological_order(spec.steps)
        step_ids = {
            step.name: self.step(pipeline, step, order.index(step.name)).id for step in spec.steps
        }
        self.remove_steps(pipeline, set(step_ids))
        self.dependencies(pipeline, spec, step_ids)

    def user_id(self) -> int:
        user = self.session.scalars(select(m.User).filter_by(username=self.user)).one_or_none()
        if user is None:
            user = m.User(username=self.user)
            self.session.add(user)
            self.session.flush()
            self.changes.append(Change("create", "user", self.user))
        return user.id

    def step_config(self, config: ConfigSpec) -> m.ReductionStepConfig:
        return self.sync(
            m.ReductionStepConfig,
            {"name": config.name},
            {
                "config_parameters": config.parameters,
                "environment_variables": config.environment,
                "secret_env": list(config.secret_env),
                "command_template": list(config.command),
                "resource_requirements": config.resources.model_dump(mode="json"),
            },
            "config",
            config.name,
        )

    def step(self, pipeline: m.Pipeline, spec: StepSpec, order: int) -> m.ReductionStep:
        config_row = self.step_config(spec.config)
        software_id = self.id_of(m.ReductionSoftware, name=spec.software)
        pinned = (
            self.id_of(
                m.ReductionSoftwareVersion,
                reduction_software_id=software_id,
                tag=spec.pinned_version,
            )
            if spec.pinned_version is not None
            else None
        )
        values = {
            "step_order": order,
            "reduction_software_id": software_id,
            "reduction_step_config_id": config_row.id,
            "group_by": list(spec.group_by),
            "cooldown_seconds": spec.cooldown_seconds,
            "max_wait_seconds": spec.max_wait_seconds,
            "schedule": spec.schedule,
            "max_concurrent_runs": spec.max_concurrent_runs,
            "pinned_version_id": pinned,
            "version_policy": spec.version_policy,
            "max_retries": spec.max_retries,
            "retry_memory_factor": spec.retry_memory_factor,
            "retry_time_factor": spec.retry_time_factor,
            "qa_gate": [rule.model_dump(mode="json") for rule in spec.qa_gate],
        }
        gate_before = self.session.scalar(
            select(m.ReductionStep.qa_gate).filter_by(pipeline_id=pipeline.id, name=spec.name)
        )
        row = self.sync(
            m.ReductionStep,
            {"pipeline_id": pipeline.id, "name": spec.name},
            values,
            "step",
            f"{pipeline.name}.{spec.name}",
        )
        if gate_before is not None and gate_before != values["qa_gate"]:
            self.regated.append((pipeline, row, spec))
        return row

    def remove_steps(self, pipeline: m.Pipeline, keep: set[str]) -> None:
        gone = self.session.scalars(
            select(m.ReductionStep).where(
                m.ReductionStep.pipeline_id == pipeline.id, m.ReductionStep.name.not_in(keep)
            )
        ).all()
        for step in gone:
            self.session.delete(step)
            self.changes.append(Change("delete", "step", f"{pipeline.name}.{step.name}"))
        self.session.flush()

    def dependencies(
        self, pipeline: m.Pipeline, spec: PipelineSpec, step_ids: dict[str, int]
    ) -> None:
        dep = m.reduction_step_dependency
        names = {v: k for k, v in step_ids.items()}
        existing = set(
            self.session.execute(
                select(dep.c.reduction_step_id, dep.c.depends_on_step_id).where(
                    dep.c.reduction_step_id.in_(step_ids.values())
                )
            ).all()
        )
        wanted = {(step_ids[s.name], step_ids[u]) for s in spec.steps for u in s.depends_on}
        for step_id, upstream_id in sorted(existing - wanted):
            self.session.execute(
                delete(dep).where(
                    dep.c.reduction_step_id == step_id, dep.c.depends_on_step_id == upstream_id
                )
            )
        if wanted - existing:
            self.session.execute(
                insert(dep),
                [
                    {"reduction_step_id": a, "depends_on_step_id": b}
                    for a, b in sorted(wanted - existing)
                ],
            )
        created = {c.name: i for i, c in enumerate(self.changes)
                   if c.action == "create" and c.kind == "step"}  # fmt: skip
        for step in spec.steps:
            sid = step_ids[step.name]
            before = sorted(names[b] for a, b in existing if a == sid)
            after = sorted(names[b] for a, b in wanted if a == sid)
            name = f"{pipeline.name}.{step.name}"
            if name in created:  # a new step: its upstream steps are part of its creation
                if after:
                    change = self.changes[created[name]]
                    self.changes[created[name]] = replace(
                        change, details=(*change.details, f"depends_on: {after}")
                    )
            elif before != after:
                self.changes.append(
                    Change(
                        "update",
                        "step",
                        f"{pipeline.name}.{step.name}",
                        (f"depends_on: {before} -> {after}",),
                    )
                )


def apply_specs(session: Session, loaded: Sequence[LoadedSpec], *, user: str) -> list[Change]:
    """Validate `loaded` against the DB, then write it; return the changes made.

    Raises SpecError (writing nothing) when any file is invalid. Does not commit.
    """
    session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": APPLY_LOCK_ID})
    validate_bundle(loaded, load_catalog(session))
    writer = _Writer(session, user)
    writer.changes.extend(write_sites(session, loaded))
    # Order matters: each section refers only to sections written before it.
    sections: list[tuple[str, Callable[[Any], None]]] = [
        ("instruments", writer.instrument),
        ("locations", writer.location),
        ("software", writer.software),
        ("data_groupings", writer.grouping),
        ("pipelines", writer.pipeline),
    ]
    for section, write in sections:
        for f in loaded:
            for item in getattr(f.spec, section):
                write(item)
    session.flush()
    downstream = DownstreamChanges(session)
    for pipeline, step, spec in writer.regated:  # after every step and dependency is written
        redecision = redecide_step(session, pipeline, step, spec.qa_gate, downstream)
        name = f"{pipeline.name}.{step.name}"
        writer.changes.append(Change("update", "qa decisions", name, (redecision.describe(),)))
    return writer.changes
