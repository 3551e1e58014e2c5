"""Load spec files: YAML with line numbers, then the pydantic models, all problems at once.

Spec files come from people and scripts, so reading one is bounded before anything is
built from it: at most `MAX_SPEC_BYTES` of UTF-8 text, nesting at most `MAX_DEPTH`
levels deep, aliases (`*name`) that expand to at most `MAX_EXPANDED_NODES` values in
all (a 351-byte "billion laughs" document expands to a billion), and no NUL character
in any value (the ops DB cannot store it). Each breach is one `file:line: problem`
error, raised before the database is touched. The YAML is parsed once, and loading is
linear in the file's size.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ccat_wm.errors import SpecError
from ccat_wm.spec.expand import expand_environment
from ccat_wm.spec.models import SpecFile

Loc = tuple[str | int, ...]
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser where PyYAML was built with it (about 15 times faster), else Python's."""
MAX_SPEC_BYTES = 64 * 1024 * 1024
"""Largest spec file read (a spec of 100,000 sites is about 10 MB)."""
MAX_DEPTH = 50
"""Deepest nesting of mappings and lists (a spec needs about 8)."""
MAX_EXPANDED_NODES = 5_000_000
"""Most values a document may hold once its aliases are expanded."""


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
    node: yaml.Node | None = field(default=None, repr=False, compare=False)
    """The composed YAML document; line numbers are read from it when first needed."""

    @cached_property
    def lines(self) -> dict[Loc, int]:
        """Line of each location (the key's line for a mapping value)."""
        return _line_map(self.node) if self.node is not None else {}

    def where(self, loc: Loc) -> str:
        """Return `file:line: path` for a location in this file (nearest known line)."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return f"{self.path}:{line}: {format_loc(loc)}"
        return f"{self.path}: {format_loc(loc)}"


def _line_map(node: yaml.Node) -> dict[Loc, int]:
    """Map each location of a document to its line (linear: aliases are not re-entered)."""
    lines: dict[Loc, int] = {}
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, Loc]] = [(node, ())]
    while stack:
        current, loc = stack.pop()
        lines.setdefault(loc, current.start_mark.line + 1)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, yaml.MappingNode):
            for key_node, value_node in current.value:
                key = str(key_node.value)
                lines[(*loc, key)] = key_node.start_mark.line + 1
                stack.append((value_node, (*loc, key)))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend((item, (*loc, index)) for index, item in enumerate(current.value))
    return lines


@dataclass(slots=True)
class _Frame:
    """An open mapping or sequence while the event stream is checked."""

    loc: Loc
    is_mapping: bool
    keys: set[str] = field(default_factory=set)
    expect_key: bool = True
    key: str | int = "?"
    index: int = 0


@dataclass(slots=True)
class _Shape:
    """What one pass over the event stream found."""

    aliases: int = 0
    problems: list[str] = field(default_factory=list)


def _check_events(path: Path, text: str) -> _Shape:
    """One pass over the YAML events, before anything is built from them.

    Rejects nesting deeper than MAX_DEPTH (raised at once: deeper input would exhaust
    the stack of the composer) and collects duplicate keys and NUL characters with
    their lines. Counts aliases, so that only a document with aliases is measured for
    its expanded size. Syntax errors are left to the composer, which reports them.
    """
    shape = _Shape()
    stack: list[_Frame] = []
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            if isinstance(event, yaml.CollectionEndEvent):
                stack.pop()
                continue
            if not isinstance(event, yaml.NodeEvent):
                continue
            line = event.start_mark.line + 1 if event.start_mark else 0
            parent = stack[-1] if stack else None
            loc = _place(parent, event, line, path, shape.problems)
            if loc is None:
                continue  # a mapping key, checked
            if isinstance(event, yaml.AliasEvent):
                shape.aliases += 1
            elif isinstance(event, yaml.ScalarEvent):
                if "\x00" in event.value:
                    shape.problems.append(
                        f"{path}:{line}: {format_loc(loc)}: "
                        "the NUL character (\\0) is not allowed in a value"
                    )
            elif isinstance(event, yaml.CollectionStartEvent):
                if len(stack) >= MAX_DEPTH:
                    raise SpecError(
                        [
                            f"{path}:{line}: nested more than {MAX_DEPTH} levels deep; "
                            "a spec needs far fewer"
                        ]
                    )
                stack.append(_Frame(loc, isinstance(event, yaml.MappingStartEvent)))
    except yaml.YAMLError:
        pass  # reported with its place when the document is composed
    return shape


def _place(
    parent: _Frame | None, event: yaml.Event, line: int, path: Path, problems: list[str]
) -> Loc | None:
    """Return the location of a node event (None for a scalar mapping key, checked here)."""
    if parent is None:
        return ()
    if not parent.is_mapping:
        parent.index += 1
        return (*parent.loc, parent.index - 1)
    if not parent.expect_key:
        parent.expect_key = True
        return (*parent.loc, parent.key)
    parent.expect_key = False
    if not isinstance(event, yaml.ScalarEvent):
        parent.key = "?"
        return (*parent.loc, "?")  # a complex key: checked like a value
    key = event.value
    parent.key = key
    where = f"{path}:{line}: {format_loc((*parent.loc, key))}"
    if key in parent.keys:
        problems.append(f"{where}: duplicate key {key!r}")
    if "\x00" in key:
        problems.append(f"{where}: the NUL character (\\0) is not allowed in a key")
    parent.keys.add(key)
    return None


def _expanded_size(root: yaml.Node, path: Path) -> None:
    """Raise if the document, aliases expanded, holds more than MAX_EXPANDED_NODES values.

    Sizes are computed once per node (memoized), so an alias bomb is measured in time
    linear in the file, not in its expansion.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done or not children:
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_EXPANDED_NODES:
                raise SpecError(
                    [
                        f"{path}:{node.start_mark.line + 1}: aliases expand this document to "
                        f"more than {MAX_EXPANDED_NODES:,} values; write the values out "
                        "or use fewer nested aliases"
                    ]
                )
            continue
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _decode(path: Path, raw: bytes) -> str:
    """Return the file's text; raise naming the line of the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(
            [f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save it as UTF-8"]
        ) from None


def _parse_yaml(path: Path, text: str) -> tuple[Any, yaml.Node | None, list[str]]:
    """Return the document's data, its node graph, and the problems found on the way."""
    shape = _check_events(path, text)
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        if node is not None and shape.aliases:
            _expanded_size(node, path)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
        raise SpecError(
            [f"{path}: {where}: YAML does not parse: {exc.problem or exc.context}"]
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError([f"{path}: YAML does not parse: {exc}"]) from None
    finally:
        loader.dispose()
    return data, node, shape.problems


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
    """Read and validate one spec file; raise SpecError listing every problem with its place.

    `${VAR}` in a string value is the environment variable VAR (`ccat_wm.spec.expand`).
    """
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError([f"{path}: cannot read the file: {exc.strerror}"]) from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(
            [f"{path}: larger than {MAX_SPEC_BYTES // 2**20} MB; split it into several files"]
        )
    data, node, problems = _parse_yaml(path, _decode(path, raw))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError([f"{path}:1: expected a mapping of sections at the top level"])
    data, unset = expand_environment(data, os.environ)
    if unset:  # checked before the values: an empty path would only confuse what follows
        where = LoadedSpec(path, SpecFile(), node).where
        raise SpecError(sorted([*problems, *(f"{where(loc)}: {why}" for loc, why in unset)],
                               key=_line_of))  # fmt: skip
    try:
        spec = SpecFile.model_validate(data)
    except ValidationError as exc:
        loaded = LoadedSpec(path, SpecFile(), node)
        for error in exc.errors():
            loc = _clean_loc(error["loc"], data)
            problems.append(f"{loaded.where(loc)}: {_describe(error, loc, tuple(error['loc']))}")
        raise SpecError(sorted(problems, key=_line_of)) from None
    if problems:
        raise SpecError(sorted(problems, key=_line_of))
    return LoadedSpec(path, spec, node)


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
