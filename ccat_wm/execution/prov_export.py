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
  each input of its run), `wasAssociatedWith` (run -> software version and person);
- quality decisions: each decision in force on a run of the chain (as of the product
  run's creation), and each that kept a run out of it, is an activity
  (`ccat:QaDecision`: rejected, source, message, rules with the values seen) that
  `wasInformedBy` the judged run and `wasAssociatedWith` who took it (a `prov:Person`,
  or the step's gate as a `prov:SoftwareAgent`); a run that left a rejected run out
  `wasInformedBy` that decision (the left-out run is an activity too, without inputs).

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
from ccat_wm.execution.control import Lineage, LineageRun, product_lineage
from ccat_wm.quality.standing import decisions_in_force

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

    def decision(
        self, ident: int, judged: str, *, pipeline: str, step: str, details: dict[str, Any]
    ) -> str:
        """Declare a quality decision on run `judged` as an activity, with who took it."""
        activity = f"ccat:qa_decision/{ident}"
        if activity in self.declared:
            return activity
        self.declared.add(activity)
        when = details["decided_at"]
        attributes = {
            "prov:type": "ccat:QaDecision", "ccat:rejected": details["rejected"],
            "ccat:source": details["source"], "ccat:message": details["message"],
            "ccat:rules": json.dumps(details.get("rules", []), sort_keys=True),
        }  # fmt: skip
        self.doc.activity(activity, when, when, attributes)
        self.doc.wasInformedBy(activity, judged)
        who = details["decided_by"]
        if who:
            agent = self.agent(
                f"ccat:user/{who}", {"prov:type": "prov:Person", "ccat:username": who}
            )
        elif details["source"] == "gate":
            agent = self.agent(
                f"ccat:qa_gate/{pipeline}/{step}",
                {"prov:type": "prov:SoftwareAgent", "ccat:pipeline": pipeline, "ccat:step": step},
            )
        else:  # derived from its inputs' decisions: informed by them, no agent of its own
            return activity
        self.doc.wasAssociatedWith(activity, agent)
        return activity

    def left_out(self, row: dict[str, Any]) -> None:
        """Declare a run a quality decision kept out of a chain run, and that decision."""
        excluded = f"ccat:run/{row['run_id']}"
        if excluded not in self.declared:
            self.declared.add(excluded)
            self.doc.activity(
                excluded, None, None,
                {"prov:type": "ccat:Run", "ccat:pipeline": row["pipeline"],
                 "ccat:step": row["step"], "ccat:sub_group_key": row["sub_group_key"],
                 "ccat:qa_rejected": True},
            )  # fmt: skip
        if row["decision_id"] is None:
            return
        details = {**row, "rejected": True, "decided_at": _time(row["decided_at"])}
        decision = self.decision(
            row["decision_id"], excluded, pipeline=row["pipeline"], step=row["step"],
            details=details,
        )  # fmt: skip
        self.doc.wasInformedBy(f"ccat:run/{row['left_out_of']}", decision)


def _chain_decisions(session: Session, prov: _Document, lineage: Lineage) -> None:
    """Declare the decisions in force on the chain's runs when its last run was created."""
    top = lineage.runs[0].run_id
    created = session.scalar(
        select(m.ExecutedReductionStep.created_at).where(m.ExecutedReductionStep.id == top)
    )
    if created is None:
        return
    runs = {run.run_id: run for run in lineage.runs}
    for run_id, d in decisions_in_force(session, list(runs), created).items():
        details = {
            "rejected": d.rejected, "source": d.source.value, "message": d.message,
            "rules": d.rules, "decided_by": d.decided_by, "decided_at": d.created_at,
        }  # fmt: skip
        prov.decision(
            d.id, f"ccat:run/{run_id}", pipeline=runs[run_id].pipeline, step=runs[run_id].step,
            details=details,
        )  # fmt: skip
    for row in lineage.left_out:
        prov.left_out(row)


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
    _chain_decisions(session, prov, lineage)
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
