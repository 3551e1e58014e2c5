"""Bad spec input gets a clear error naming the place and the problem, and writes nothing."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ccat_wm.errors import SpecError
from ccat_wm.spec.apply import apply_specs
from ccat_wm.spec.loader import MAX_SPEC_BYTES, load_spec_files
from tests.helpers import demo_spec_data, locations_data, snapshot, write_yaml

Spec = dict[str, Any]


def _full_spec(root: Path) -> Spec:
    return {**locations_data(root), **demo_spec_data()}


def _step(spec: Spec, index: int) -> dict[str, Any]:
    step: dict[str, Any] = spec["pipelines"][0]["steps"][index]
    return step


def _set(path: tuple[Any, ...], value: Any) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        node = spec
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return mutate


def _delete(path: tuple[Any, ...]) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        node = spec
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]

    return mutate


def _both(*mutations: Callable[[Spec], None]) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        for one in mutations:
            one(spec)

    return mutate


def _pin(tag: str | None) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        _step(spec, 0)["version_policy"] = "exact"
        if tag is not None:
            _step(spec, 0)["pinned_version"] = tag

    return mutate


def _cycle(spec: Spec) -> None:
    _step(spec, 0)["depends_on"] = ["grid"]


def _coarser_upstream(spec: Spec) -> None:
    _step(spec, 1)["group_by"] = []


def _duplicate_pipeline(spec: Spec) -> None:
    spec["pipelines"].append(copy.deepcopy(spec["pipelines"][0]))


def _duplicate_step(spec: Spec) -> None:
    spec["pipelines"][0]["steps"][2]["name"] = "baseline"


def _rule(**rule: Any) -> Callable[[Spec], None]:
    base = {"table": "Source", "column": "name", "operator": "eq", "value": "NGC253"}
    return _set(("data_groupings", 0, "filter_rules", 0), {**base, **rule})


def _add_location(**fields: Any) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        location = {
            "name": "k8s", "site": "test", "location_type": "PROCESSING",
            "backend": "kubernetes", "path": "/data/k",
        }  # fmt: skip
        spec["locations"].append(location | fields)

    return mutate


P = ("pipelines", 0)
S0 = (*P, "steps", 0)
_S0 = "pipelines[0].steps[0]"
CASES: list[tuple[str, Callable[[Spec], None], list[str]]] = [
    (
        "qa gate: unknown operator",
        _set((*S0, "qa_gate"), [{"metric": "tsys_k", "operator": "below", "value": 400}]),
        ["pipelines[0].steps[0].qa_gate[0].operator", "'below'"],
    ),
    (
        "qa gate: a list where one number is expected",
        _set((*S0, "qa_gate"), [{"metric": "tsys_k", "operator": "lt", "value": [400]}]),
        ["pipelines[0].steps[0].qa_gate[0]", "operator 'lt' takes one number, not a list"],
    ),
    (
        "qa gate: a rule without its metric",
        _set((*S0, "qa_gate"), [{"operator": "lt", "value": 400}]),
        ["pipelines[0].steps[0].qa_gate[0].metric", "missing required key 'metric'"],
    ),
    (
        "unknown key",
        _set((*S0, "cooldown"), 5),
        ["pipelines[0].steps[0].cooldown", "unknown key 'cooldown'"],
    ),
    (
        "missing key",
        _delete((*P, "steps", 1, "software")),
        ["pipelines[0].steps[1].software", "missing required key 'software'"],
    ),
    (
        "unknown software",
        _set((*S0, "software"), "chai-calibrashun"),
        ["pipelines[0].steps[0].software", "unknown software 'chai-calibrashun'"],
    ),
    (
        "unknown pinned version",
        _pin("9.9.9"),
        [
            "pipelines[0].steps[0].pinned_version",
            "unknown version '9.9.9' of software 'chai-calibration'",
        ],
    ),
    (
        "exact without pin",
        _pin(None),
        ["pipelines[0].steps[0]", "version_policy exact but no pinned_version"],
    ),
    (
        "unknown grouping",
        _set((*P, "data_grouping"), "nope"),
        ["pipelines[0].data_grouping", "unknown data grouping 'nope'"],
    ),
    (
        "kubernetes location on the host runtime",
        _add_location(runtime="host"),
        ["locations[2]", "a kubernetes location runs each step's image in its pods"],
    ),
    (
        "kubernetes location without volumes",
        _add_location(settings={"k8s_namespace": "ccat"}),
        ["locations[2]", "needs settings.k8s_volumes"],
    ),
    (
        "kubernetes volume of two sources",
        _add_location(
            settings={"k8s_volumes": {"/data/k": {"emptyDir": {}, "nfs": {"path": "/"}}}}
        ),
        ["locations[2]", "must be one volume source", "got keys ['emptyDir', 'nfs']"],
    ),
    (
        "unknown location",
        _set((*P, "processing_location"), "ramses"),
        ["pipelines[0].processing_location", "unknown location 'ramses'"],
    ),
    (
        "archive as processing location",
        _set((*P, "processing_location"), "archive"),
        ["pipelines[0].processing_location", "expected a PROCESSING location"],
    ),
    (
        "cycle",
        _cycle,
        [
            "pipelines[0].steps",
            "depends_on forms a cycle: calibrate -> grid -> baseline -> calibrate",
        ],
    ),
    (
        "unknown dependency",
        _set((*P, "steps", 2, "depends_on"), ["basline"]),
        ["pipelines[0].steps[2].depends_on[0]", "unknown step 'basline'"],
    ),
    (
        "unknown dimension",
        _set((*S0, "group_by"), ["scan"]),
        ["pipelines[0].steps[0].group_by[0]", "unknown group_by dimension 'scan'"],
    ),
    (
        "finer than upstream",
        _coarser_upstream,
        [
            "pipelines[0].steps[2].group_by",
            "finer than upstream step 'baseline'",
            "source, line not determined",
        ],
    ),
    (
        "invalid cron",
        _set((*P, "trigger"), {"type": "CRON", "cron": "0 25 * * *"}),
        ["pipelines[0].trigger.cron", "invalid cron expression '0 25 * * *'"],
    ),
    (
        "invalid timezone",
        _set((*P, "trigger"), {"type": "CRON", "cron": "0 4 * * *", "timezone": "Mars/Olympus"}),
        ["pipelines[0].trigger.timezone", "unknown timezone 'Mars/Olympus'"],
    ),
    (
        "invalid step schedule",
        _set((*S0, "schedule"), "every day"),
        ["pipelines[0].steps[0].schedule", "invalid cron expression 'every day'"],
    ),
    (
        "unknown trigger type",
        _set((*P, "trigger"), {"type": "HOURLY"}),
        ["pipelines[0].trigger", "'HOURLY'"],
    ),
    (
        "negative cooldown",
        _set((*S0, "cooldown_seconds"), -1),
        ["pipelines[0].steps[0].cooldown_seconds", "greater than or equal to 0, got -1"],
    ),
    (
        "negative retries",
        _set((*S0, "max_retries"), -2),
        ["pipelines[0].steps[0].max_retries", "greater than or equal to 0, got -2"],
    ),
    (
        "negative resources",
        _set((*S0, "config", "resources", "memory_gb"), -16),
        ["pipelines[0].steps[0].config.resources.memory_gb", "greater than or equal to 0, got -16"],
    ),
    (
        "zero concurrency",
        _set((*S0, "max_concurrent_runs"), 0),
        ["pipelines[0].steps[0].max_concurrent_runs", "greater than or equal to 1, got 0"],
    ),
    (
        "placeholder without parameter",
        _set((*S0, "config", "command"), ["chai-calibrate", "--mode", "{mode}"]),
        ["pipelines[0].steps[0].config", "command[2] placeholder {mode} has no parameter 'mode'"],
    ),
    (
        "unknown filter table",
        _rule(table="Sauce"),
        ["data_groupings[0].filter_rules[0]", "unknown table 'Sauce'"],
    ),
    (
        "unknown filter column",
        _rule(column="nmae"),
        ["data_groupings[0].filter_rules[0]", "unknown column 'nmae' of table Source"],
    ),
    (
        "unknown filter operator",
        _rule(operator="gte "),
        ["data_groupings[0].filter_rules[0]", "unknown operator 'gte '"],
    ),
    (
        "bad json_path",
        _rule(
            table="RawDataPackage",
            column="metadata",
            json_path="observation..frequency",
            operator="gt",
            value=1,
        ),
        ["data_groupings[0].filter_rules[0]", "bad json_path 'observation..frequency'"],
    ),
    (
        "json_path on a plain column",
        _rule(json_path="a.b"),
        ["data_groupings[0].filter_rules[0]", "not a JSON column"],
    ),
    (
        "value of the wrong type",
        _rule(column="ra_deg", operator="gt", value="north"),
        [
            "data_groupings[0].filter_rules[0]",
            "value 'north' does not fit Source.ra_deg; expected float",
        ],
    ),
    (
        "in without a list",
        _rule(operator="in"),
        ["data_groupings[0].filter_rules[0]", "operator 'in' expects a list"],
    ),
    (
        "unknown instrument module",
        _set(("data_groupings", 0, "instrument_module"), "CHAI/XFA"),
        ["data_groupings[0].instrument_module", "unknown instrument module 'CHAI/XFA'"],
    ),
    (
        "processing location without backend",
        _delete(("locations", 1, "backend")),
        ["locations[1]", "processing location 'local' has no backend"],
    ),
    (
        "backend on an archive",
        _set(("locations", 0, "backend"), "slurm"),
        ["locations[0]", "only PROCESSING locations take a backend"],
    ),
    (
        "duplicate pipeline",
        _duplicate_pipeline,
        ["pipelines[1].name", "duplicate name 'chai-demo' in pipelines"],
    ),
    (
        "duplicate step",
        _duplicate_step,
        ["pipelines[0].steps[2].name", "duplicate step name 'baseline'"],
    ),
    (
        "bad digest",
        _set(("software", 0, "versions", 0, "digest"), "sha256:xyz"),
        ["software[0].versions[0].digest", "invalid image digest 'sha256:xyz'"],
    ),
    (
        "bad version tag",
        _set(("software", 0, "versions", 0, "tag"), "latest"),
        ["software[0].versions[0].tag", "not a semantic version"],
    ),
    # Anything that cannot work downstream is refused here, not at run time.
    *[
        (
            f"step name with {char!r}",
            _set((*S0, "name"), f"cal{char}ibrate"),
            [f"{_S0}.name", "should match pattern '^[A-Za-z0-9][A-Za-z0-9_-]*$'"],
        )
        for char in ("/", "&", ">", " ", ".")
    ],
    (
        "location name with a slash",
        _set(("locations", 1, "name"), "gpu/a100"),
        ["locations[1].name", "should match pattern"],
    ),
    (
        "pipeline named ..",
        _set((*P, "name"), ".."),
        ["pipelines[0].name", "should match pattern"],
    ),
    (
        "cron that never fires",
        _set((*P, "trigger"), {"type": "CRON", "cron": "0 0 31 2 *"}),
        ["pipelines[0].trigger.cron", "'0 0 31 2 *' never fires"],
    ),
    (
        "six-field cron",
        _set((*S0, "schedule"), "*/5 * * * * *"),
        [f"{_S0}.schedule", "expected five fields (minute hour day month weekday)"],
    ),
    (
        "cpu 1e308",
        _set((*S0, "config", "resources"), {"cpu": 1e308}),
        [f"{_S0}.config.resources.cpu", "less than or equal to 4096"],
    ),
    (
        "gpu 1e30",
        _set((*S0, "config", "resources"), {"gpu": 10**30}),
        [f"{_S0}.config.resources.gpu", "less than or equal to 64"],
    ),
    (
        "memory .inf",
        _set((*S0, "config", "resources"), {"memory_gb": float("inf")}),
        [f"{_S0}.config.resources.memory_gb", "finite number"],
    ),
    (
        "huge format width",
        _set((*S0, "config", "command"), ["chai-calibrate", "{calibration_mode:20000000}"]),
        [f"{_S0}.config", "asks for a width or precision of 20000000; expected at most 1000"],
    ),
    (
        "environment key with =",
        _set((*S0, "config", "environment"), {"A=B": "1"}),
        [f"{_S0}.config.environment.A=B", "should match pattern '^[A-Za-z_][A-Za-z0-9_]*$'"],
    ),
    (
        "relative location path",
        _set(("locations", 1, "path"), "pipelines/../runs"),
        ["locations[1].path", "relative; expected an absolute path"],
    ),
    (
        "huge priority",
        _set((*P, "priority"), 10**30),
        ["pipelines[0].priority", "less than or equal to 2147483647"],
    ),
    # Images: what runs where, and always pinned.
    (
        "a SIF image at a podman location",
        _both(
            _set(("locations", 1, "runtime"), "podman"),
            _set(("software", 0, "versions", 0, "image_kind"), "sif"),
        ),
        [
            f"{_S0}.software",
            "would run chai-calibration 1.4.0, a SIF image, at location 'local', whose "
            "runtime (podman) runs OCI images only",
        ],
    ),
    (
        "a SIF without a digest",
        _both(
            _set(("software", 0, "versions", 0, "image_kind"), "sif"),
            _delete(("software", 0, "versions", 0, "digest")),
        ),
        ["software[0].versions[0]", "a SIF image without a digest; a SIF is always pinned"],
    ),
    (
        "sif_path on an OCI version",
        _set(("software", 0, "versions", 0, "sif_path"), "/data/sif/chai.sif"),
        ["software[0].versions[0]", "expected image_kind: sif with it"],
    ),
    (
        "unknown image kind",
        _set(("software", 0, "versions", 0, "image_kind"), "docker"),
        ["software[0].versions[0].image_kind", "'oci' or 'sif'"],
    ),
    *(
        (
            f"unbounded {name}",
            _set(("locations", 1, "settings"), {name: value}),
            [f"locations[1].settings.{name}", expected],
        )
        for name, value, expected in (
            ("failed_run_retention_days", 1e300, "less than or equal to 36500"),
            ("failed_run_retention_days", float("nan"), "a finite number"),
            ("max_cpu", 10**12, "less than or equal to 4096"),
            ("max_memory_gb", 1e7, "less than or equal to 65536"),
            ("max_time_hours", 1e9, "less than or equal to 8784"),
            ("max_gpu", 10**6, "less than or equal to 64"),
        )
    ),
    (
        "podman option that is not --name=value",
        _set(("locations", 1, "settings"), {"podman_extra_args": ["--privileged", "x"]}),
        ["locations[1].settings.podman_extra_args", "'--privileged' is not of the form"],
    ),
]


@pytest.fixture
def baseline(engine: Engine, tmp_path: Path) -> Engine:
    """An ops DB holding the valid demo spec, so rejected edits have something to spoil."""
    path = write_yaml(tmp_path / "good.yaml", _full_spec(tmp_path))
    with Session(engine) as session:
        apply_specs(session, load_spec_files([path]), user="tester")
        session.commit()
    return engine


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_with_place_and_problem_and_writes_nothing(
    baseline: Engine, tmp_path: Path, mutate: Callable[[Spec], None], expected: list[str]
) -> None:
    spec = _full_spec(tmp_path)
    spec["pipelines"][0]["priority"] = 99  # a valid edit that must not land either
    mutate(spec)
    path = write_yaml(tmp_path / "bad.yaml", spec)
    before = snapshot(baseline)
    with pytest.raises(SpecError) as info, Session(baseline) as session:
        apply_specs(session, load_spec_files([path]), user="tester")
        session.commit()
    message = str(info.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert snapshot(baseline) == before


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    spec = _full_spec(tmp_path)
    _set((*S0, "cooldown_seconds"), -1)(spec)
    _set((*P, "steps", 1, "group_by"), ["scann"])(spec)
    _rule(operator="~")(spec)
    path = write_yaml(tmp_path / "bad.yaml", spec)
    with pytest.raises(SpecError) as info:
        load_spec_files([path])
    assert len(info.value.problems) == 3
    assert str(info.value).startswith("3 problems in the pipeline spec; nothing was written")


def test_yaml_that_does_not_parse_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("pipelines:\n  - name: a\n    steps: [x, y\n  - name: b\n")
    with pytest.raises(
        SpecError,
        match=r"broken.yaml: line 4, column 9: YAML does not parse: .*expected .,. or .\].",
    ):
        load_spec_files([path])


def test_problem_names_the_line_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "lines.yaml"
    path.write_text(
        "pipelines:\n"
        "  - name: p\n"
        "    data_grouping: g\n"
        "    processing_location: l\n"
        "    steps:\n"
        "      - name: a\n"
        "        software: s\n"
        "        group_by: [executed_obs_unit, sourse]\n"
        "        config: {name: c, command: [x]}\n"
    )
    with pytest.raises(SpecError) as info:
        load_spec_files([path])
    assert (
        f"{path}:8: pipelines[0].steps[0].group_by[1]: unknown group_by dimension 'sourse'"
        in str(info.value)
    )


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("sites:\n  - name: a\n    name: b\n")
    with pytest.raises(SpecError, match=r"dup.yaml:3: sites\[0\].name: duplicate key 'name'"):
        load_spec_files([path])


def test_a_used_version_keeps_its_image_kind(baseline: Engine, tmp_path: Path) -> None:
    from tests.db.test_apply import add_run

    add_run(baseline, "chai-demo", "calibrate", key="executed_obs_unit=scan-000001")
    spec = _full_spec(tmp_path)
    spec["software"][0]["versions"][0]["image_kind"] = "sif"
    path = write_yaml(tmp_path / "sif.yaml", spec)
    before = snapshot(baseline)
    with pytest.raises(SpecError) as info, Session(baseline) as session:
        apply_specs(session, load_spec_files([path]), user="tester")
    assert "software[0].versions[0].image_kind" in str(info.value)
    assert "chai-calibration 1.4.0 was used by runs as image kind oci" in str(info.value)
    assert snapshot(baseline) == before


def test_removing_a_step_with_runs_is_refused(baseline: Engine, tmp_path: Path) -> None:
    from tests.db.test_apply import add_run

    add_run(baseline, "chai-demo", "grid")
    spec = _full_spec(tmp_path)
    spec["pipelines"][0]["steps"].pop()
    path = write_yaml(tmp_path / "fewer.yaml", spec)
    before = snapshot(baseline)
    with (
        pytest.raises(
            SpecError,
            match=r"step 'grid' of pipeline 'chai-demo' is missing from the file but has 1 run",
        ),
        Session(baseline) as session,
    ):
        apply_specs(session, load_spec_files([path]), user="tester")
    assert snapshot(baseline) == before


BILLION_LAUGHS = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)),
        "sites: *i",
    ]
)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (BILLION_LAUGHS.encode(), ":7: aliases expand this document to more than 5,000,000"),
        (b"sites:\n" + b"- " * 5000 + b"x\n", ":2: nested more than 50 levels deep"),
        # libyaml's scanner stops flow nesting at 1000 itself, with the place
        (b"sites: " + b"[" * 5000 + b"]" * 5000, ": line 1, column 1007: YAML does not parse"),
        (b"sites:\n  - name: caf\xe9\n", ":2: not UTF-8 text (byte 0xe9)"),
        (b'sites:\n  - name: "a\\0b"\n', ":2: sites[0].name: the NUL character"),
    ],
    ids=["billion laughs", "5000 deep", "5000 deep flow", "not UTF-8", "NUL"],
)
def test_hostile_yaml_is_refused_quickly_with_a_place_and_writes_nothing(
    baseline: Engine, tmp_path: Path, content: bytes, expected: str
) -> None:
    """These once took 42 s and 2.3 GB, raised RecursionError, UnicodeDecodeError, DataError."""
    path = tmp_path / "hostile.yaml"
    path.write_bytes(content)
    before = snapshot(baseline)
    started = time.monotonic()
    with pytest.raises(SpecError) as info, Session(baseline) as session:
        apply_specs(session, load_spec_files([path]), user="tester")
        session.commit()
    assert time.monotonic() - started < 5
    assert f"{path}{expected}" in str(info.value)
    assert snapshot(baseline) == before


def test_a_spec_over_the_size_bound_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as handle:
        handle.truncate(MAX_SPEC_BYTES + 1)
    with pytest.raises(SpecError, match=r"huge.yaml: larger than 64 MB; split it"):
        load_spec_files([path])
