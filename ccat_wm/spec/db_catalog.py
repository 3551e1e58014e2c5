"""What the ops DB already holds that a spec may refer to, read for its validation."""

from __future__ import annotations

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from ccat_ops_db import models as m
from ccat_wm.spec.validate import DbCatalog, UsedImage


def load_catalog(session: Session) -> DbCatalog:
    """Load the names the spec validation resolves references against."""
    catalog = DbCatalog()
    catalog.sites = set(session.scalars(select(m.Site.name)))
    catalog.locations = {
        name: kind
        for name, kind in session.execute(select(m.DataLocation.name, m.DataLocation.location_type))
    }
    for name, backend, runtime in session.execute(
        select(m.DataLocation.name, m.DataLocation.backend, m.DataLocation.runtime)
    ):
        catalog.location_runtimes[name] = (backend, runtime)
    for sw_name, tag, latest, kind in session.execute(
        select(
            m.ReductionSoftware.name,
            m.ReductionSoftwareVersion.tag,
            m.ReductionSoftwareVersion.is_latest,
            m.ReductionSoftwareVersion.image_kind,
        ).outerjoin(m.ReductionSoftwareVersion)
    ):
        tags = catalog.software_versions.setdefault(sw_name, {})
        if tag is not None:
            tags[tag] = latest
            catalog.version_kinds.setdefault(sw_name, {})[tag] = kind
    catalog.groupings = set(session.scalars(select(m.DataGrouping.name)))
    catalog.instrument_modules = {
        f"{i}/{mod}"
        for i, mod in session.execute(
            select(m.Instrument.name, m.InstrumentModule.name).join(
                m.InstrumentModule, m.InstrumentModule.instrument_id == m.Instrument.id
            )
        )
    }
    _load_run_counts(session, catalog)
    _load_used_images(session, catalog)
    return catalog


def _load_run_counts(session: Session, catalog: DbCatalog) -> None:
    """Count runs per step, and per location with runs keep its path (it must not move)."""
    run = m.ExecutedReductionStep
    runs = (
        select(m.Pipeline.name, m.ReductionStep.name, func.count(run.id))
        .select_from(m.ReductionStep)
        .join(m.ReductionStep.pipeline)
        .outerjoin(run, run.reduction_step_id == m.ReductionStep.id)
        .group_by(m.Pipeline.name, m.ReductionStep.name)
    )
    catalog.step_run_counts = {(p, s): n for p, s, n in session.execute(runs)}
    place = m.DataLocation
    with_runs = (
        select(place.name, place.path, func.count(run.id))
        .select_from(run)
        .join(run.reduction_step)
        .join(m.ReductionStep.pipeline)
        .join(m.Pipeline.processing_location)
        .group_by(place.name, place.path)
    )
    catalog.location_paths_with_runs = {
        name: (path, n) for name, path, n in session.execute(with_runs)
    }


def _load_used_images(session: Session, catalog: DbCatalog) -> None:
    """Record the images runs used, by software and tag (digest and kind must not change)."""
    sw, version, run = m.ReductionSoftware, m.ReductionSoftwareVersion, m.ExecutedReductionStep
    used = (
        select(
            sw.name, sw.ghcr_url, version.tag, version.digest, version.image_kind, version.sif_path
        )
        .join(version, version.reduction_software_id == sw.id)
        .where(exists().where(run.reduction_software_version_id == version.id))
    )
    for name, url, tag, digest, kind, path in session.execute(used):
        image = catalog.used_images.setdefault(name, UsedImage(url, {}))
        image.digests[tag] = digest
        image.kinds[tag] = (kind, path)
