"""Batch sources: sweep files (a base scenario plus axes of overrides), scenario folders, scenario files.

A sweep is validated as a whole before any point runs: unknown, empty or ill-typed axes, zip lists of
unequal length and a missing base are ``ScenarioError`` naming the sweep file and the axis. Points that
are well-formed but cannot run surface later, at simulate time, as ``InfeasibleConfig``.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import functools
import hashlib
import itertools
import json
import math
import operator
import os
import re
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from simulator.errors import ScenarioError
from simulator.files import is_bare_name
from simulator.scenario import (
    Scenario,
    ScenarioConfig,
    apply_override,
    load_scenario,
    read_yaml,
    scenario_from_dict,
)

SWEEP_KEYS = ("name", "description", "base", "mode", "axes", "filter")
# At most this many points in one batch (before filtering): each is resolved and checked up front, and
# even at the analytical model's ~0.1 s a point, 100,000 points are hours of work on a machine. A 4-axis
# sweep of 100 values each (10^8 points) expanded for ever (issue #12); split it into several sweeps.
MAX_SWEEP_POINTS = 100_000
# A filter expression: short, shallow, arithmetic on numbers only (no "x" * 10**9 strings or lists).
MAX_FILTER_CHARS = 1000
MAX_FILTER_DEPTH = 32
PATH_AXES = ("cluster", "cluster.topology")  # axes whose string values are paths relative to the sweep file
_LABEL_MAX_CHARS = 120


@dataclass(frozen=True)
class Point:
    """One scenario of a batch: a label unique in the batch, the resolved scenario, the swept values."""

    label: str
    scenario: Scenario
    swept: dict[str, Any]  # axis → value as written in the sweep file
    file: str = ""  # the sweep or scenario file the point comes from (for errors)


@dataclass(frozen=True)
class Sweep:
    """A parsed and validated sweep file (its points are produced by ``sweep_points``)."""

    file: Path
    name: str
    base_file: Path
    base_doc: dict[str, Any]
    mode: Literal["grid", "zip"]
    axes: dict[str, list[Any]]  # values as written
    filters: tuple[Filter, ...]

    @property
    def size(self) -> int:
        """Number of combinations before filtering."""
        lengths = [len(v) for v in self.axes.values()]
        return lengths[0] if self.mode == "zip" else math.prod(lengths)


# ------------------------------------------------------------------------------------------ schema walk
def _flatten_annotation(t: Any) -> list[Any]:
    """The alternatives of a (possibly Annotated, Optional or union) type annotation."""
    origin = get_origin(t)
    if origin is Annotated:
        return _flatten_annotation(get_args(t)[0])
    if origin is Union or origin is types.UnionType:
        return [x for a in get_args(t) for x in _flatten_annotation(a)]
    return [t]


def axis_problem(parts: list[str], model: type[BaseModel] = ScenarioConfig) -> str | None:
    """Why the dotted scenario key ``parts`` cannot be set, or None when the schema has it."""
    head, rest = parts[0], parts[1:]
    fields = model.model_fields
    if head not in fields:
        near = difflib.get_close_matches(head, list(fields), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return f"unknown key {head!r}{hint}; valid here: {', '.join(fields)}"
    if not rest:
        return None
    for alt in _flatten_annotation(fields[head].annotation):
        if isinstance(alt, type) and issubclass(alt, BaseModel):
            return axis_problem(rest, alt)
        if alt is dict or get_origin(alt) is dict:
            return None  # free-form mapping (topology document, overrides)
    return f"{head!r} is a single value, it has no key {rest[0]!r}"


# ------------------------------------------------------------------------------------------- loading
def is_sweep_doc(doc: Any) -> bool:
    """Whether a YAML document is a sweep (it has ``base`` or ``axes``) rather than a scenario."""
    return isinstance(doc, dict) and ("axes" in doc or "base" in doc)


def load_sweep(path: Path) -> Sweep:
    """Read and validate a sweep file (keys, base scenario, mode, axes, values, filters)."""
    return sweep_from_doc(read_yaml(path, "sweep file"), path)


def sweep_from_doc(doc: Any, path: Path) -> Sweep:
    """Validate the parsed sweep document of the file ``path`` (relative paths start from its folder)."""
    file = str(path)
    if not isinstance(doc, dict):
        raise ScenarioError("a sweep must be a YAML mapping (base, mode, axes)", file=file)
    for key in doc:
        if key not in SWEEP_KEYS:
            raise ScenarioError(f"unknown key; valid: {', '.join(SWEEP_KEYS)}", file=file, field=str(key))
    base_file, base_doc = _load_base(doc.get("base"), path)
    mode = doc.get("mode", "grid")
    if mode not in ("grid", "zip"):
        raise ScenarioError(f"mode must be 'grid' or 'zip' (got {mode!r})", file=file, field="mode")
    axes = _check_axes(doc.get("axes"), mode, file)
    filters = _parse_filters(doc.get("filter"), list(axes), file)
    name = str(doc.get("name") or path.stem)
    sweep = Sweep(path, name, base_file, base_doc, mode, axes, filters)
    if sweep.size > MAX_SWEEP_POINTS:
        lengths = " x ".join(str(len(v)) for v in axes.values())
        raise ScenarioError(
            f"{lengths} = {sweep.size:,} points; at most {MAX_SWEEP_POINTS:,} in one batch (split the sweep)",
            file=file,
            field="axes",
        )
    _check_axis_values(sweep)
    return sweep


def _load_base(ref: Any, path: Path) -> tuple[Path, dict[str, Any]]:
    file = str(path)
    if ref is None:
        raise ScenarioError("required key is missing (the base scenario file)", file=file, field="base")
    if not isinstance(ref, str) or not ref.strip():
        raise ScenarioError(f"base must be a scenario file path (got {ref!r})", file=file, field="base")
    base_file = (path.parent / ref).resolve()
    if not base_file.is_file():
        raise ScenarioError(
            f"base scenario {ref!r} not found (relative to {path.parent})", file=file, field="base"
        )
    base_doc = read_yaml(base_file, "scenario file")
    if not isinstance(base_doc, dict):
        raise ScenarioError("the base scenario must be a YAML mapping", file=str(base_file))
    try:
        scenario_from_dict(copy.deepcopy(base_doc), file=str(base_file), base_dir=base_file.parent)
    except ScenarioError as e:
        raise ScenarioError(
            f"the base scenario is not valid: {e.one_line()}", file=file, field="base"
        ) from None
    return base_file, base_doc


def _check_axes(raw: Any, mode: str, file: str) -> dict[str, list[Any]]:
    if not isinstance(raw, dict) or not raw:
        raise ScenarioError(
            "axes must be a non-empty mapping of scenario keys to lists", file=file, field="axes"
        )
    axes: dict[str, list[Any]] = {}
    for key, values in raw.items():
        axis = str(key)
        parts = [p for p in axis.split(".") if p]
        problem = axis_problem(parts) if parts else "empty key"
        if problem is not None:
            raise ScenarioError(f"unknown axis: {problem}", file=file, field=axis)
        if not isinstance(values, list):
            raise ScenarioError(f"an axis must be a list of values (got {values!r})", file=file, field=axis)
        if not values:
            raise ScenarioError("empty axis: give at least one value", file=file, field=axis)
        axes[".".join(parts)] = values
    lengths = {axis: len(v) for axis, v in axes.items()}
    if mode == "zip" and len(set(lengths.values())) > 1:
        shown = ", ".join(f"{a}: {n}" for a, n in lengths.items())
        raise ScenarioError(f"zip axes must have equal lengths ({shown})", file=file, field=", ".join(axes))
    return axes


def _parse_filters(raw: Any, axes: list[str], file: str) -> tuple[Filter, ...]:
    if raw is None:
        return ()
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ScenarioError(
            "filter must be an expression or a list of expressions", file=file, field="filter"
        )
    return tuple(parse_filter(text, axes, file=file, field=f"filter[{i}]") for i, text in enumerate(texts))


# ------------------------------------------------------------------------------------ point documents
def _rebase(axis: str, value: Any, sweep_dir: Path, base_dir: Path) -> Any:
    """A path value of the sweep file (relative to it) made relative to the base scenario's folder."""
    if axis == "cluster" and isinstance(value, dict) and isinstance(value.get("topology"), str):
        return {**value, "topology": _rebase("cluster.topology", value["topology"], sweep_dir, base_dir)}
    if axis not in PATH_AXES or not isinstance(value, str):
        return value
    cand = sweep_dir / value
    if cand.is_file():
        return os.path.relpath(cand.resolve(), base_dir)
    # A path that is not there stays a path (relative to the sweep file), so the point fails naming it;
    # only a bare name may go on to the base scenario's folder or the shipped topologies (files.py).
    return value if is_bare_name(value) else os.path.abspath(cand)


def _point_doc(sweep: Sweep, swept: dict[str, Any], name: str | None) -> dict[str, Any]:
    doc = dict(sweep.base_doc)  # copy only the sections the overrides write into
    for section in {axis.split(".")[0] for axis in swept} & doc.keys():
        doc[section] = copy.deepcopy(doc[section])
    for axis, value in swept.items():
        rebased = _rebase(axis, copy.deepcopy(value), sweep.file.parent, sweep.base_file.parent)
        apply_override(doc, axis.split("."), rebased, file=str(sweep.file))
    if name is not None and "name" not in swept:
        doc["name"] = name
    return doc


def _resolve(sweep: Sweep, swept: dict[str, Any], name: str | None = None) -> Scenario:
    doc = _point_doc(sweep, swept, name)
    return scenario_from_dict(doc, file=str(sweep.base_file), base_dir=sweep.base_file.parent)


def _check_axis_values(sweep: Sweep) -> None:
    """Validate the base with each single axis value applied: a value of the wrong type fails here.

    A failure in a section another axis also sets (``model`` for ``model.top_k`` and ``model.experts``)
    may be fixed by the combination, so it is left to the check of the points themselves.
    """
    for axis, values in sweep.axes.items():
        others = [a for a in sweep.axes if a != axis]
        for value in _distinct(values):
            try:
                _resolve(sweep, {axis: value})
            except ScenarioError as e:
                shared = e.field is not None and any(_within(o, e.field) for o in others)
                if not shared:
                    raise ScenarioError(
                        f"value {value!r}: {e.one_line()}", file=str(sweep.file), field=axis
                    ) from None


def _within(axis: str, field: str) -> bool:
    return axis == field or axis.startswith(field + ".")


def _distinct(values: list[Any]) -> Iterator[Any]:
    seen: set[str] = set()
    for v in values:
        token = json.dumps(v, sort_keys=True, default=str)
        if token not in seen:
            seen.add(token)
            yield v


# ------------------------------------------------------------------------------------------- expanding
def combinations(sweep: Sweep) -> Iterator[dict[str, Any]]:
    """Every combination of axis values (grid: cartesian product; zip: position by position)."""
    names = list(sweep.axes)
    values = list(sweep.axes.values())
    rows = zip(*values, strict=True) if sweep.mode == "zip" else itertools.product(*values)
    for row in rows:
        yield dict(zip(names, row, strict=True))


def sweep_points(sweep: Sweep) -> list[Point]:
    """The validated points of a sweep, filters applied, in axis order; a malformed point raises."""
    kept = []
    for swept in combinations(sweep):
        scenario = functools.cache(
            functools.partial(_resolve_point, sweep, swept)
        )  # resolved once, if needed
        if all(f.keep(swept, scenario) for f in sweep.filters):
            kept.append(swept)
    labels = unique_labels([point_label(sweep.name, sweep.axes, s) for s in kept])
    return [Point(label, _resolve_point(sweep, s, label), s) for label, s in zip(labels, kept, strict=True)]


def _resolve_point(sweep: Sweep, swept: dict[str, Any], label: str | None = None) -> Scenario:
    """The scenario of one combination, named ``label``; a malformed combination names its values."""
    try:
        return _resolve(sweep, swept, label)
    except ScenarioError as e:
        values = ", ".join(f"{a}={v!r}" for a, v in swept.items())
        raise ScenarioError(
            f"point {values}: {e.one_line()}", file=str(sweep.file), field=", ".join(swept)
        ) from None


# ----------------------------------------------------------------------------------------------- filters
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_NODES: tuple[type[ast.AST], ...] = (
    *(ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.BinOp),
    *(ast.Compare, ast.Constant, ast.Name, ast.Attribute, ast.Load, ast.Tuple, ast.List),
    *_BINARY,
    *_COMPARE,
)


@dataclass(frozen=True)
class Filter:
    """A boolean expression over axis values and scenario keys; points where it is false are skipped.

    Names are axis keys (``parallelism.tp``), an axis's last part when unique (``tp``), or any scenario
    key (``model.heads``, ``training.global_batch``, ``cluster.<topology key>``). Only arithmetic,
    comparisons, ``in``, ``and``/``or``/``not`` and literals are allowed.
    """

    text: str
    tree: ast.Expression
    names: dict[str, str]  # name in the expression → axis key, or "" for a key of the resolved scenario
    file: str
    field: str

    def keep(self, swept: dict[str, Any], scenario: Callable[[], Scenario]) -> bool:
        """Whether the point with these axis values passes (``scenario`` is resolved only if needed)."""

        def lookup(name: str) -> Any:
            axis = self.names[name]
            return swept[axis] if axis else _scenario_value(scenario(), name, self.file, self.field)

        try:
            return bool(_evaluate(self.tree.body, lookup))
        except (TypeError, ValueError, ZeroDivisionError, OverflowError) as e:
            values = ", ".join(f"{a}={v!r}" for a, v in swept.items())
            msg = f"{self.text!r} fails on point {values}: {e.__class__.__name__}: {e}"
            raise ScenarioError(msg, file=self.file, field=self.field) from None


def parse_filter(text: str, axes: list[str], *, file: str, field: str) -> Filter:
    """Parse and check one filter expression against the sweep's axes and the scenario schema."""
    if len(text) > MAX_FILTER_CHARS:
        raise ScenarioError(
            f"a filter of {len(text):,} characters; at most {MAX_FILTER_CHARS:,}", file=file, field=field
        )
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ScenarioError(f"not a valid expression: {e.msg}", file=file, field=field) from None
    except (RecursionError, MemoryError, ValueError):  # nested past the parser's stack, or NUL bytes
        raise ScenarioError("not a valid expression (nested too deeply)", file=file, field=field) from None
    if _depth(tree) > MAX_FILTER_DEPTH:
        raise ScenarioError(f"nested deeper than {MAX_FILTER_DEPTH} levels", file=file, field=field)
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            raise ScenarioError(
                f"{node.__class__.__name__} is not allowed in a filter", file=file, field=field
            )
    axis_of = {short: axis for axis, short in _short_names(axes).items()} | {a: a for a in axes}
    names: dict[str, str] = {}
    try:
        found = list(_names(tree.body))
    except ValueError as e:  # an attribute of something that is not a name: (1).real
        raise ScenarioError(f"{e}; e.g. parallelism.tp or tp", file=file, field=field) from None
    for name in found:
        parts = name.split(".")
        if name in axis_of:
            names[name] = axis_of[name]
        elif parts[0] == "cluster" or (problem := axis_problem(parts)) is None:
            names[name] = ""
        else:
            raise ScenarioError(f"unknown name {name!r}: {problem}", file=file, field=field)
    return Filter(text, tree, names, file, field)


def _depth(node: ast.AST) -> int:
    """How deeply ``node``'s tree nests (iteratively: the tree may be deeper than Python's stack)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        current, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > MAX_FILTER_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in ast.iter_child_nodes(current))
    return deepest


def _names(node: ast.AST) -> Iterator[str]:
    if isinstance(node, ast.Name | ast.Attribute):
        yield _dotted(node)
        return
    for child in ast.iter_child_nodes(node):
        yield from _names(child)


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise ValueError("only names and dotted keys may be used")


def _evaluate(node: ast.AST, lookup: Callable[[str], Any]) -> Any:
    """The value of an allowed expression node (see ``Filter``)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name | ast.Attribute):
        return lookup(_dotted(node))
    if isinstance(node, ast.Tuple | ast.List):
        return [_evaluate(e, lookup) for e in node.elts]
    if isinstance(node, ast.BoolOp):
        values = (bool(_evaluate(v, lookup)) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, lookup)
        return (
            not value
            if isinstance(node.op, ast.Not)
            else (-value if isinstance(node.op, ast.USub) else +value)
        )
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left, lookup), _evaluate(node.right, lookup)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (left, right)):
            # Arithmetic on numbers only: "x" * 10**9 or [0] * 10**9 would fill the memory.
            raise TypeError(f"arithmetic needs numbers, not {type(left).__name__} and {type(right).__name__}")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, lookup)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(comp, lookup)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    raise ValueError(f"{node.__class__.__name__} is not allowed")


def _scenario_value(scenario: Scenario, name: str, file: str, field: str) -> Any:
    """The value of a dotted key in a resolved scenario (model shape and topology document included)."""
    node: Any = {**scenario.config.model_dump(), "model": dataclasses.asdict(scenario.model)}
    node["cluster"] = scenario.topology
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ScenarioError(f"{name!r} is not set in scenario {scenario.name!r}", file=file, field=field)
        node = node[part]
    return node


# ---------------------------------------------------------------------------------------------- labels
def _short_names(axes: list[str]) -> dict[str, str]:
    lasts = [a.split(".")[-1] for a in axes]
    return {a: (last if lasts.count(last) == 1 else a) for a, last in zip(axes, lasts, strict=True)}


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        return Path(value).stem if value.endswith((".yaml", ".yml")) else value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:8]


def sanitize_label(text: str) -> str:
    """``text`` reduced to characters safe in a file name on every platform."""
    clean = re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("._") or "point"
    if len(clean) > _LABEL_MAX_CHARS:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        clean = f"{clean[: _LABEL_MAX_CHARS - 9]}-{digest}"
    return clean


def point_label(name: str, axes: dict[str, list[Any]], swept: dict[str, Any]) -> str:
    """``<sweep name>_tp=2_nodes=64``: the sweep name and the short name and value of every axis."""
    short = _short_names(list(axes))
    parts = [f"{short[a]}={_format_value(v)}" for a, v in swept.items()]
    return sanitize_label("_".join([name, *parts]))


def unique_labels(labels: list[str]) -> list[str]:
    """The labels with ``-2``, ``-3`` … appended to repeats, so that each names one point."""
    seen: dict[str, int] = {}
    taken = set(labels)
    out = []
    for label in labels:
        n = seen.get(label, 0) + 1
        seen[label] = n
        new = label
        while n > 1 and (new := f"{label}-{n}") in taken:
            n += 1
        taken.add(new)
        out.append(new)
    return out


# ---------------------------------------------------------------------------------------------- sources
def load_points(source: Path) -> list[Point]:
    """The points of a batch source: a sweep file, a scenario file, or a folder of either (``*.yaml``)."""
    if source.is_dir():
        files = sorted([*source.glob("*.yaml"), *source.glob("*.yml")])
        if not files:
            raise ScenarioError("no *.yaml scenario or sweep files in the folder", file=str(source))
        if len(files) > MAX_SWEEP_POINTS:
            raise ScenarioError(
                f"{len(files):,} files; at most {MAX_SWEEP_POINTS:,} points in one batch", file=str(source)
            )
        points = [p for f in files for p in _file_points(f)]
        if len(points) > MAX_SWEEP_POINTS:
            raise ScenarioError(
                f"{len(points):,} points; at most {MAX_SWEEP_POINTS:,} in one batch", file=str(source)
            )
    elif source.is_file():
        points = _file_points(source)
    else:
        raise ScenarioError(
            "batch source not found (a sweep file, a scenario file or a folder)", file=str(source)
        )
    labels = unique_labels([p.label for p in points])
    return [Point(label, p.scenario, p.swept, p.file) for label, p in zip(labels, points, strict=True)]


def _file_points(path: Path) -> list[Point]:
    doc = read_yaml(path, "file")
    if is_sweep_doc(doc):
        return [dataclasses.replace(p, file=str(path)) for p in sweep_points(sweep_from_doc(doc, path))]
    return [Point(sanitize_label(path.stem), load_scenario(path), {}, str(path))]
