"""Checks across objects and files, and against what the ops DB already holds.

Runs after every file passed its pydantic models, and before anything is written. A
reference may point at an object in any of the files being applied or in the DB.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ccat_ops_db.models import Backend, ImageKind, LocationType, Runtime
from ccat_wm.errors import SpecError
from ccat_wm.selection.dimensions import finer_dimensions
from ccat_wm.spec.loader import LoadedSpec, Loc
from ccat_wm.spec.models import ConfigSpec, PipelineSpec, StepSpec


@dataclass
class DbCatalog:
    """Names the ops DB already holds, for resolving references (loaded by `apply`)."""

    sites: set[str] = field(default_factory=set)
    locations: dict[str, LocationType] = field(default_factory=dict)
    software_versions: dict[str, dict[str, bool]] = field(default_factory=dict)
    """Software name -> version tag -> is_latest."""
    groupings: set[str] = field(default_factory=set)
    instrument_modules: set[str] = field(default_factory=set)
    """`INSTRUMENT/MODULE` names."""
    step_run_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    """(pipeline, step) -> number of runs, for the steps that exist."""
    used_images: dict[str, UsedImage] = field(default_factory=dict)
    """Software name -> its image repository and the digests of versions runs used."""
    location_runtimes: dict[str, tuple[Backend | None, Runtime | None]] = field(
        default_factory=dict
    )
    """Location name -> its backend and runtime."""
    version_kinds: dict[str, dict[str, ImageKind]] = field(default_factory=dict)
    """Software name -> version tag -> what its image is."""
    location_paths_with_runs: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Processing location name -> its stored path and how many runs it has (runs > 0)."""


@dataclass(frozen=True, slots=True)
class UsedImage:
    """A software's image as runs used it: these never change (docs/concepts.md 6)."""

    repository: str
    digests: dict[str, str | None]
    """Version tag -> digest, for the versions at least one run used."""
    kinds: dict[str, tuple[ImageKind, str | None]] = field(default_factory=dict)
    """Version tag -> image kind and SIF file, for the same versions."""


def topological_order(steps: Sequence[StepSpec]) -> list[str]:
    """Return step names upstream first, file order among independent steps.

    Raises ValueError naming a cycle when there is one.
    """
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    by_name = {s.name: s for s in steps}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*path[path.index(name) :], name]
            raise ValueError(f"depends_on forms a cycle: {' -> '.join(cycle)}")
        state[name] = 1
        for upstream in by_name[name].depends_on:
            if upstream in by_name:
                visit(upstream, [*path, name])
        state[name] = 2
        order.append(name)

    for step in steps:
        visit(step.name, [])
    return order


class _Checker:
    """Collects problems with their places across all loaded files."""

    def __init__(self, loaded: Sequence[LoadedSpec], db: DbCatalog) -> None:
        self.loaded = loaded
        self.db = db
        self.problems: list[str] = []

    def add(self, spec: LoadedSpec, loc: Loc, message: str) -> None:
        self.problems.append(f"{spec.where(loc)}: {message}")

    def each(self, section: str) -> Iterable[tuple[LoadedSpec, int, Any]]:
        for spec in self.loaded:
            for index, item in enumerate(getattr(spec.spec, section)):
                yield spec, index, item

    def check_duplicates(self) -> None:
        for section in (
            "sites",
            "instruments",
            "locations",
            "software",
            "data_groupings",
            "pipelines",
        ):
            counts = Counter(item.name for _, _, item in self.each(section))
            for spec, index, item in self.each(section):
                name = item.name
                if counts[name] > 1:
                    self.add(
                        spec, (section, index, "name"), f"duplicate name {name!r} in {section}"
                    )
        for spec, index, pipeline in self.each("pipelines"):
            assert isinstance(pipeline, PipelineSpec)
            steps = Counter(s.name for s in pipeline.steps)
            for s_index, step in enumerate(pipeline.steps):
                if steps[step.name] > 1:
                    loc = ("pipelines", index, "steps", s_index, "name")
                    self.add(spec, loc, f"duplicate step name {step.name!r} in {pipeline.name!r}")

    def check_configs(self) -> None:
        first: dict[str, ConfigSpec] = {}
        for spec, index, pipeline in self.each("pipelines"):
            assert isinstance(pipeline, PipelineSpec)
            for s_index, step in enumerate(pipeline.steps):
                seen = first.setdefault(step.config.name, step.config)
                if seen != step.config:
                    loc = ("pipelines", index, "steps", s_index, "config", "name")
                    self.add(
                        spec,
                        loc,
                        f"config name {step.config.name!r} is used with different contents; "
                        "give each distinct config its own name",
                    )

    def known_modules(self) -> set[str]:
        names = set(self.db.instrument_modules)
        for _, _, inst in self.each("instruments"):
            names.update(f"{inst.name}/{m}" for m in inst.modules)
        return names

    def check_groupings(self) -> None:
        modules = self.known_modules()
        for spec, index, grouping in self.each("data_groupings"):
            module = grouping.instrument_module
            if module is not None and module not in modules:
                self.add(
                    spec,
                    ("data_groupings", index, "instrument_module"),
                    f"unknown instrument module {module!r}; known: "
                    f"{', '.join(sorted(modules)) or 'none'} (declare it under instruments)",
                )

    def software_versions(self) -> dict[str, dict[str, bool]]:
        merged = {name: dict(tags) for name, tags in self.db.software_versions.items()}
        for _, _, sw in self.each("software"):
            tags = merged.setdefault(sw.name, {})
            versions = sw.versions
            if versions:
                for tag in tags:
                    tags[tag] = False
            for v in versions:
                tags[v.tag] = v.is_latest
        return merged

    def check_location_paths(self) -> None:
        """Refuse moving a location that has runs: their records name files under its path.

        A respelling that resolves to the same directory (a symlink alias) is accepted;
        so is a move done as the refusal describes (the old path left as a link to the new
        directory), since both spellings then resolve to the same place.
        """
        for spec, index, location in self.each("locations"):
            known = self.db.location_paths_with_runs.get(location.name)
            if known is None or location.path is None or location.path == known[0]:
                continue
            old, runs = known
            if same_directory(old, location.path):
                continue
            self.add(
                spec,
                ("locations", index, "path"),
                f"location {location.name!r} has {runs} run(s) whose files and records are "
                f"under {old!r}; path {location.path!r} is a different directory. To move a "
                f"location: stop its pipelines, move the directory, leave a symlink at {old!r} "
                "pointing to the new one, then change `path` (accepted once both resolve to "
                "the same directory); or add a new location for new runs",
            )

    def check_used_images(self) -> None:
        """Refuse an edit of a used version's image (repository or digest): it never changes."""
        for spec, index, sw in self.each("software"):
            used = self.db.used_images.get(sw.name)
            if used is None:
                continue
            if sw.ghcr_url != used.repository:
                self.add(
                    spec,
                    ("software", index, "ghcr_url"),
                    f"software {sw.name!r} has versions that runs used "
                    f"({', '.join(sorted(used.digests))}) with image repository "
                    f"{used.repository!r}; an image reference never changes once used: keep "
                    f"ghcr_url {used.repository!r}, or register the new repository as a new "
                    "software",
                )
            for v_index, version in enumerate(sw.versions):
                was = used.kinds.get(version.tag)
                if was is not None and was != (version.image_kind, version.sif_path):
                    self.add(
                        spec,
                        ("software", index, "versions", v_index, "image_kind"),
                        f"software version {sw.name} {version.tag} was used by runs as image "
                        f"kind {was[0].value}" + (f" (file {was[1]})" if was[1] else "") + "; a "
                        "used version's image never changes: publish a new version (a new tag)",
                    )
                if version.tag in used.digests and version.digest != used.digests[version.tag]:
                    self.add(
                        spec,
                        ("software", index, "versions", v_index, "digest"),
                        f"software version {sw.name} {version.tag} was used by runs with digest "
                        f"{used.digests[version.tag]}; a used version's image never changes: "
                        f"publish a new version (a new tag) with digest {version.digest} and "
                        "mark it is_latest",
                    )

    def check_pipelines(self) -> None:
        locations = dict(self.db.locations)
        for _, _, loc_spec in self.each("locations"):
            locations[loc_spec.name] = loc_spec.location_type
        groupings = self.db.groupings | {g.name for _, _, g in self.each("data_groupings")}
        software = self.software_versions()
        for spec, index, pipeline in self.each("pipelines"):
            assert isinstance(pipeline, PipelineSpec)
            base: Loc = ("pipelines", index)
            if pipeline.data_grouping not in groupings:
                self.add(
                    spec,
                    (*base, "data_grouping"),
                    f"unknown data grouping {pipeline.data_grouping!r}; known: "
                    f"{', '.join(sorted(groupings)) or 'none'}",
                )
            kind = locations.get(pipeline.processing_location)
            if kind is None:
                self.add(
                    spec,
                    (*base, "processing_location"),
                    f"unknown location {pipeline.processing_location!r}; known: "
                    f"{', '.join(sorted(locations)) or 'none'}",
                )
            elif kind is not LocationType.PROCESSING:
                self.add(
                    spec,
                    (*base, "processing_location"),
                    f"location {pipeline.processing_location!r} is {kind.value}; "
                    "expected a PROCESSING location",
                )
            self.check_steps(spec, base, pipeline, software)
            self.check_image_kinds(spec, base, pipeline)
            self.check_removed_steps(spec, base, pipeline)

    def check_image_kinds(self, spec: LoadedSpec, base: Loc, pipeline: PipelineSpec) -> None:
        """Refuse a SIF image where the location runs OCI images only (podman, Kubernetes)."""
        runtimes = dict(self.db.location_runtimes)
        for _, _, loc_spec in self.each("locations"):
            runtimes[loc_spec.name] = (loc_spec.backend, loc_spec.effective_runtime)
        backend, runtime = runtimes.get(pipeline.processing_location, (None, None))
        if backend is not Backend.KUBERNETES and runtime is not Runtime.PODMAN:
            return
        kinds = {name: dict(tags) for name, tags in self.db.version_kinds.items()}
        latest: dict[str, str] = {}
        for _, _, sw in self.each("software"):
            for v in sw.versions:
                kinds.setdefault(sw.name, {})[v.tag] = v.image_kind
                if v.is_latest:
                    latest[sw.name] = v.tag
        where = "kubernetes" if backend is Backend.KUBERNETES else "podman"
        for s_index, step in enumerate(pipeline.steps):
            tag = step.pinned_version or latest.get(step.software)
            if tag is None:
                db_latest = self.db.software_versions.get(step.software, {})
                tag = next((t for t, is_latest in db_latest.items() if is_latest), None)
            if tag is not None and kinds.get(step.software, {}).get(tag) is ImageKind.SIF:
                self.add(
                    spec,
                    (*base, "steps", s_index, "software"),
                    f"step {step.name!r} would run {step.software} {tag}, a SIF image, at "
                    f"location {pipeline.processing_location!r}, whose runtime ({where}) runs "
                    "OCI images only; publish an OCI image of it as a new version, or process "
                    "the pipeline at an apptainer location",
                )

    def check_steps(
        self,
        spec: LoadedSpec,
        base: Loc,
        pipeline: PipelineSpec,
        software: dict[str, dict[str, bool]],
    ) -> None:
        # long: one check per field of a step, in the order the spec declares them
        names = {s.name for s in pipeline.steps}
        by_name = {s.name: s for s in pipeline.steps}
        for s_index, step in enumerate(pipeline.steps):
            loc: Loc = (*base, "steps", s_index)
            tags = software.get(step.software)
            if tags is None:
                self.add(
                    spec,
                    (*loc, "software"),
                    f"unknown software {step.software!r}; known: "
                    f"{', '.join(sorted(software)) or 'none'}",
                )
            elif step.pinned_version is not None and step.pinned_version not in tags:
                self.add(
                    spec,
                    (*loc, "pinned_version"),
                    f"unknown version {step.pinned_version!r} of software {step.software!r}; "
                    f"known: {', '.join(sorted(tags)) or 'none'}",
                )
            elif step.pinned_version is None and not any(tags.values()):
                self.add(
                    spec,
                    (*loc, "software"),
                    f"software {step.software!r} has no version marked is_latest; "
                    "declare one, or pin a version with version_policy: exact",
                )
            for d_index, upstream in enumerate(step.depends_on):
                if upstream == step.name or upstream not in names:
                    what = "itself" if upstream == step.name else f"unknown step {upstream!r}"
                    self.add(
                        spec,
                        (*loc, "depends_on", d_index),
                        f"step {step.name!r} depends on {what}; expected one of the "
                        f"pipeline's other steps: {', '.join(sorted(names - {step.name}))}",
                    )
                    continue
                finer = finer_dimensions(by_name[upstream].group_by, step.group_by)
                if finer:
                    self.add(
                        spec,
                        (*loc, "group_by"),
                        f"group_by {step.group_by} is finer than upstream step "
                        f"{upstream!r} (group_by {by_name[upstream].group_by}): "
                        f"{', '.join(finer)} not determined by it; a downstream step may "
                        "only group by dimensions its upstream grouping determines",
                    )
        try:
            topological_order(pipeline.steps)
        except ValueError as exc:
            self.add(spec, (*base, "steps"), str(exc))

    def check_removed_steps(self, spec: LoadedSpec, base: Loc, pipeline: PipelineSpec) -> None:
        kept = {s.name for s in pipeline.steps}
        for (p_name, s_name), runs in sorted(self.db.step_run_counts.items()):
            if p_name == pipeline.name and s_name not in kept and runs > 0:
                self.add(
                    spec,
                    (*base, "steps"),
                    f"step {s_name!r} of pipeline {p_name!r} is missing from the file but "
                    f"has {runs} run(s) in the ops DB; keep it (runs are history) or "
                    "disable the pipeline",
                )


def validate_bundle(loaded: Sequence[LoadedSpec], db: DbCatalog) -> None:
    """Raise SpecError listing every cross-object problem; return quietly when none."""
    checker = _Checker(loaded, db)
    checker.check_duplicates()
    checker.check_configs()
    checker.check_groupings()
    checker.check_used_images()
    checker.check_location_paths()
    checker.check_pipelines()
    if checker.problems:
        raise SpecError(checker.problems)


def same_directory(a: str, b: str) -> bool:
    """Whether two spellings of a path resolve to the same existing directory."""
    try:
        return os.path.samefile(a, b) and os.path.isdir(a)
    except OSError:
        return False
