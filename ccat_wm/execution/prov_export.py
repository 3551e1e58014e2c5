"""A product's provenance as a W3C PROV document (`ccat-wm lineage PRODUCT --prov`).

The mapping (docs/provenance.md):

- entities: the product, every upstream product a run of its chain used, and every
  raw data package, each with path or name, size and SHA-256;
- activities: the runs of the chain (start and end time, pipeline, step, sub-group,
  status, reason, the recorded command and parameters);
- agents: each software version (a `prov:SoftwareAgent` with image and digest), and
  the person who applied the pipeline (`prov:Person`), on whose behalf the software acted;
- relations: `used` (run -> input, with the checksum the run was given),
  `wasGeneratedBy` (product -> run, at the run's end), `wasDerivedFrom` (product ->
  each input of its run), `wasAssociatedWith` (run -> software version and person).

The values come from each run's snapshot (what it really used), as `lineage` shows.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from prov.model import ProvDocument
from sqlalchemy import select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.execution.control import LineageRun, product_lineage

NAMESPACE = "https://ccat.cornell.edu/ops-db/"
"""URI of the `ccat:` identifiers (ids of the ops DB's rows)."""


def _time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def _run_attributes(run: LineageRun) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "prov:type": "ccat:Run",
        "ccat:pipeline": run.pipeline,
        "ccat:step": run.step,
        "ccat:sub_group_key": run.sub_group_key,
        "ccat:status": run.status,
        "ccat:config": run.config,
        "ccat:snapshot": run.snapshot,
    }
    optional = {
        "ccat:execution_command": run.execution_command,
        "ccat:parameters": json.dumps(run.parameters, sort_keys=True)
        if run.parameters is not None
        else None,
        "ccat:location": run.location,
        "ccat:runtime": run.runtime,
    }
    return attributes | {k: v for k, v in optional.items() if v is not None}


class _Document:
    """A PROV document that declares each entity and agent once."""

    def __init__(self) -> None:
        self.doc = ProvDocument()
        self.doc.add_namespace("ccat", NAMESPACE)
        self.declared: set[str] = set()

    def entity(self, ident: str, attributes: dict[str, Any]) -> str:
        if ident not in self.declared:
            self.declared.add(ident)
            self.doc.entity(ident, attributes)
        return ident

    def agent(self, ident: str, attributes: dict[str, Any]) -> str:
        if ident not in self.declared:
            self.declared.add(ident)
            self.doc.agent(ident, attributes)
        return ident

    def product(self, pid: int, path: str, size: int, sha: str, kind: str) -> str:
        return self.entity(
            f"ccat:product/{pid}",
            {"prov:type": "ccat:DataProduct", "ccat:path": path, "ccat:size": size,
             "ccat:sha256": sha, "ccat:data_product_type": kind},
        )  # fmt: skip

    def run(self, run: LineageRun, person: str | None) -> None:
        """Declare the run as an activity, with its software and the pipeline's person."""
        activity = f"ccat:run/{run.run_id}"
        self.doc.activity(activity, _time(run.started_at), _time(run.finished_at),
                          _run_attributes(run))  # fmt: skip
        software = self.agent(
            f"ccat:software/{run.software}/{run.version}",
            {"prov:type": "prov:SoftwareAgent", "ccat:software": run.software,
             "ccat:tag": run.version, "ccat:image": run.image_repository or "",
             "ccat:digest": run.digest or ""},
        )  # fmt: skip
        self.doc.wasAssociatedWith(activity, software)
        if person:
            agent = self.agent(
                f"ccat:user/{person}", {"prov:type": "prov:Person", "ccat:username": person}
            )
            self.doc.wasAssociatedWith(activity, agent)
            self.doc.actedOnBehalfOf(software, agent, activity)


def _inputs(session: Session, run_ids: list[int]) -> list[Any]:
    """Every input of the runs: the checksum given, and the product or raw package used."""
    inp, prod, pkg = m.ExecutedReductionStepInput, m.DataProduct, m.RawDataPackage
    return list(
        session.execute(
            select(
                inp.executed_reduction_step_id, inp.checksum, prod.id, prod.file_path,
                prod.file_size, prod.checksum, prod.data_product_type,
                prod.executed_reduction_step_id, pkg.id, pkg.name, pkg.size, pkg.checksum,
            )
            .outerjoin(prod, prod.id == inp.data_product_id)
            .outerjoin(pkg, pkg.id == inp.raw_data_package_id)
            .where(inp.executed_reduction_step_id.in_(run_ids))
        ).all()
    )  # fmt: skip


def product_prov(session: Session, product: str) -> ProvDocument:
    """Return the PROV document of a product (by id or path) back to its raw data."""
    lineage = product_lineage(session, product)
    prov = _Document()
    runs = {run.run_id: run for run in lineage.runs}
    people = dict(
        session.execute(
            select(m.Pipeline.name, m.User.username).join(
                m.User, m.User.id == m.Pipeline.created_by_user_id
            )
        ).all()
    )
    for run in lineage.runs:
        prov.run(run, people.get(run.pipeline))
    generated: dict[str, int] = {}  # product entity -> the run of the chain that made it
    used: dict[int, list[str]] = {}
    for (run_id, given, pid, path, size, sha, kind, made_by, raw_id, name, raw_size,
         raw_sha) in _inputs(session, list(runs)):  # fmt: skip
        if pid is not None:
            entity = prov.product(pid, path, size, sha, kind.value)
            if made_by in runs:
                generated[entity] = made_by
        else:
            entity = prov.entity(
                f"ccat:raw/{raw_id}",
                {"prov:type": "ccat:RawDataPackage", "ccat:name": name, "ccat:size": raw_size,
                 "ccat:sha256": raw_sha},
            )  # fmt: skip
        prov.doc.used(f"ccat:run/{run_id}", entity, None, None, {"ccat:sha256": given})
        used.setdefault(run_id, []).append(entity)
    final = prov.product(
        lineage.product_id, lineage.file_path, lineage.file_size, lineage.checksum,
        lineage.data_product_type,
    )  # fmt: skip
    generated[final] = lineage.runs[0].run_id
    for entity, run_id in generated.items():
        activity = f"ccat:run/{run_id}"
        prov.doc.wasGeneratedBy(entity, activity, _time(runs[run_id].finished_at))
        for source in used.get(run_id, []):  # a product derives from its run's inputs
            prov.doc.wasDerivedFrom(entity, source, activity)
    return prov.doc
