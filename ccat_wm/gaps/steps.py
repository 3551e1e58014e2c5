"""A pipeline's settings as gap evaluation reads them: steps, versions, configs, trigger."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.gaps.model import PipelineInfo, StepInfo, VersionRef
from ccat_wm.spec.versions import parse_major


def config_fingerprint(config: m.ReductionStepConfig, software: m.ReductionSoftware) -> str:
    """Fingerprint of what a step's results depend on besides inputs and version.

    Parameters, environment, command template and image repository; not resources
    (more memory does not change a result) and not the version (own reason).
    """
    payload = {
        "parameters": config.config_parameters,
        "environment": config.environment_variables,
        "command": config.command_template,
        "image": software.ghcr_url or software.name,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def _version_ref(version: m.ReductionSoftwareVersion | None) -> VersionRef | None:
    if version is None:
        return None
    return VersionRef(version.id, version.tag)


@lru_cache(maxsize=1)
def _settings_queries() -> tuple[Any, Any, Any]:
    """Statements of `load_steps`, built once (their construction costs more than running them)."""
    dep = m.reduction_step_dependency
    steps = (
        select(m.ReductionStep, m.ReductionStepConfig, m.ReductionSoftware)
        .join(
            m.ReductionStepConfig,
            m.ReductionStepConfig.id == m.ReductionStep.reduction_step_config_id,
        )
        .join(m.ReductionSoftware, m.ReductionSoftware.id == m.ReductionStep.reduction_software_id)
        .where(m.ReductionStep.pipeline_id == bindparam("pipeline_id"))
        .order_by(m.ReductionStep.step_order)
    )
    deps = select(dep.c.reduction_step_id, dep.c.depends_on_step_id).where(
        dep.c.reduction_step_id.in_(bindparam("step_ids", expanding=True))
    )
    versions = select(m.ReductionSoftwareVersion).where(
        m.ReductionSoftwareVersion.reduction_software_id.in_(
            bindparam("software_ids", expanding=True)
        )
    )
    return steps, deps, versions


def load_steps(session: Session, pipeline_id: int) -> list[StepInfo]:
    """Load the pipeline's steps in topological order (`step_order`), with their versions."""
    steps_query, deps_query, versions_query = _settings_queries()
    rows = session.execute(steps_query, {"pipeline_id": pipeline_id}).all()
    steps = [row[0] for row in rows]
    configs = {row[1].id: row[1] for row in rows}
    software = {row[2].id: row[2] for row in rows}
    names = {s.id: s.name for s in steps}
    deps: dict[int, list[str]] = {}
    for step_id, upstream_id in session.execute(deps_query, {"step_ids": list(names)}):
        deps.setdefault(step_id, []).append(names[upstream_id])
    versions = session.scalars(versions_query, {"software_ids": list(software)}).all()
    by_id = {v.id: v for v in versions}
    latest = {v.reduction_software_id: v for v in versions if v.is_latest}
    out = []
    for s in steps:
        pinned = by_id.get(s.pinned_version_id) if s.pinned_version_id is not None else None
        run_version = (
            pinned
            if s.version_policy is m.VersionPolicy.EXACT
            else latest.get(s.reduction_software_id)
        )
        out.append(
            StepInfo(
                id=s.id,
                name=s.name,
                group_by=tuple(s.group_by),
                upstream=tuple(sorted(deps.get(s.id, []))),
                cooldown_seconds=s.cooldown_seconds,
                max_wait_seconds=s.max_wait_seconds,
                schedule=s.schedule,
                max_retries=s.max_retries,
                version_policy=s.version_policy,
                run_version=_version_ref(run_version),
                config_fingerprint=config_fingerprint(
                    configs[s.reduction_step_config_id], software[s.reduction_software_id]
                ),
                configured_cpu_hours=_cpu_hours(configs[s.reduction_step_config_id]),
                valid_version_ids=_valid_versions(s, run_version, versions),
            )
        )
    return out


def _cpu_hours(config: m.ReductionStepConfig) -> float:
    resources = config.resource_requirements
    return float(resources.get("cpu", 1)) * float(resources.get("time_hours", 1))


def _valid_versions(
    step: m.ReductionStep,
    run_version: m.ReductionSoftwareVersion | None,
    versions: Sequence[m.ReductionSoftwareVersion],
) -> tuple[int, ...]:
    """Versions whose results stay valid: the pin under `exact`, the latest major otherwise."""
    if run_version is None:
        return ()
    if step.version_policy is m.VersionPolicy.EXACT:
        return (run_version.id,)
    major = parse_major(run_version.tag)
    return tuple(
        sorted(
            v.id
            for v in versions
            if v.reduction_software_id == step.reduction_software_id and parse_major(v.tag) == major
        )
    )


def pipeline_info(pipeline: m.Pipeline) -> PipelineInfo:
    """Trigger settings of a pipeline row."""
    config = pipeline.trigger_config or {}
    return PipelineInfo(
        pipeline.id, pipeline.name, pipeline.enabled, pipeline.trigger_type,
        pipeline.data_grouping_id, config.get("cron"), config.get("timezone", "UTC"),
    )  # fmt: skip
