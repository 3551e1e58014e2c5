"""Load spec files: YAML with line numbers, then the pydantic models, all problems at once."""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ccat_wm.errors import SpecError
from ccat_wm.spec.models import SpecFile

Loc = tuple[str | int, ...]


def format_loc(loc: Loc) -> str:
    """Render a location as users read it: `pipelines[0].steps[2].group_by[0]`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "<top level>"


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec file and where each of its values sits in the file."""

    path: Path
    spec: SpecFile
    lines: dict[Loc, int] = field(default_factory=dict, repr=False)

    def where(self, loc: Loc) -> str:
        """Return `file:line: path` for a location in this file (nearest known line)."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return f"{self.path}:{line}: {format_loc(loc)}"
        return f"{self.path}: {format_loc(loc)}"


def _walk(
    node: yaml.Node, loc: Loc, lines: dict[Loc, int], problems: list[str], path: Path
) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                problems.append(
                    f"{path}:{key_node.start_mark.line + 1}: {format_loc((*loc, key))}: "
                    f"duplicate key {key!r}"
                )
            seen.add(key)
            lines[(*loc, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*loc, key), lines, problems, path)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*loc, index), lines, problems, path)


def _parse_yaml(path: Path, text: str) -> tuple[Any, dict[Loc, int], list[str]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
        raise SpecError(
            [f"{path}: {where}: YAML does not parse: {exc.problem or exc.context}"]
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError([f"{path}: YAML does not parse: {exc}"]) from None
    lines: dict[Loc, int] = {}
    problems: list[str] = []
    if node is not None:
        _walk(node, (), lines, problems, path)
    return data, lines, problems


def _unwrap_models(annotation: Any) -> list[type[BaseModel]]:
    """Return the pydantic models an annotation may hold (through lists, unions, Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap_models(typing.get_args(annotation)[0])
    if origin in (list, typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _unwrap_models(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """Return the spec model that a location points into, for listing its keys."""
    candidates: list[type[BaseModel]] = [SpecFile]
    for part in loc:
        if isinstance(part, int):
            continue
        narrowed = [
            c
            for c in candidates
            if c.model_fields.get("type") is not None
            and typing.get_args(c.model_fields["type"].annotation) == (part,)
        ]
        if narrowed:
            candidates = narrowed
            continue
        nxt = [
            m
            for c in candidates
            if part in c.model_fields
            for m in _unwrap_models(c.model_fields[part].annotation)
        ]
        if not nxt:
            return candidates[0] if len(candidates) == 1 else None
        candidates = nxt
    return candidates[0] if len(candidates) == 1 else None


def _clean_loc(loc: Sequence[str | int], data: Any) -> Loc:
    """Drop union tags pydantic inserts (`trigger.CRON.cron` -> `trigger.cron`)."""
    out: list[str | int] = []
    node = data
    for part in loc:
        is_tag = part in ("CONTINUOUS", "CRON", "MANUAL") or "[" in str(part)
        if isinstance(node, dict) and isinstance(part, str) and part not in node and is_tag:
            continue
        out.append(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return tuple(out)


def _describe(error: Any, loc: Loc, raw_loc: Loc) -> str:
    kind = error["type"]
    if kind == "missing":
        return f"missing required key {loc[-1]!r}"
    if kind == "extra_forbidden":
        model = _model_at(raw_loc[:-1])
        expected = f"; expected one of: {', '.join(model.model_fields)}" if model else ""
        return f"unknown key {loc[-1]!r}{expected}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "value_error":
        return message
    return f"{message}, got {error.get('input')!r}"


def _line_of(problem: str) -> int:
    """Sort key: the line number in `file:line: ...`, problems without one first."""
    parts = problem.split(":", 2)
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 0


def load_spec_file(path: Path) -> LoadedSpec:
    """Read and validate one spec file; raise SpecError listing every problem with its place."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError([f"{path}: cannot read the file: {exc.strerror}"]) from None
    data, lines, problems = _parse_yaml(path, text)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError([f"{path}:1: expected a mapping of sections at the top level"])
    try:
        spec = SpecFile.model_validate(data)
    except ValidationError as exc:
        loaded = LoadedSpec(path, SpecFile(), lines)
        for error in exc.errors():
            loc = _clean_loc(error["loc"], data)
            problems.append(f"{loaded.where(loc)}: {_describe(error, loc, tuple(error['loc']))}")
        raise SpecError(sorted(problems, key=_line_of)) from None
    if problems:
        raise SpecError(problems)
    return LoadedSpec(path, spec, lines)


def load_spec_files(paths: Sequence[Path]) -> list[LoadedSpec]:
    """Load every file, collecting the problems of all of them before raising."""
    loaded: list[LoadedSpec] = []
    problems: list[str] = []
    for path in paths:
        try:
            loaded.append(load_spec_file(path))
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError(problems)
    return loaded
