"""The package layout of docs/design.md ("Package layout") holds, and an extension point is one file.

* Every import between rooms (top-level subpackages and modules of ``simulator``) points down the documented
  order, so the package graph is acyclic. Imports inside functions count too: a deferred import may keep
  start-up cheap, never hide a cycle. Type-only imports (``if TYPE_CHECKING:``) are not run and do not count.
* A pipeline schedule registered by a test alone (no other file touched) is accepted by the scenario schema,
  owns the placement of its chunks on the stages, and runs end to end.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

import simulator
from simulator.parallel.schedules.base import Pass, Schedule, Task
from simulator.registry import SCHEDULES
from simulator.scenario import scenario_from_dict
from simulator.simulate import simulate

# The rooms in data-flow order (docs/design.md): a room imports only rooms before it. Rooms on one line are
# peers that do not import each other.
ORDER: list[tuple[str, ...]] = [
    ("units", "errors"),
    ("limits", "files", "registry"),
    ("models", "hardware"),
    ("topology",),
    ("scenario",),
    ("workload",),
    ("frameworks",),
    ("parallel",),
    ("network",),
    ("build",),
    ("engine",),
    ("report",),
    ("simulate",),
    ("batch",),
    ("planning",),
    ("validation",),
    ("calibrate",),
    ("commands",),
    ("cli", "__init__", "__main__"),
]
RANK = {room: i for i, rooms in enumerate(ORDER) for room in rooms}
PACKAGE = Path(simulator.__file__).parent


def _room(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _type_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:``."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for n in ast.walk(node))
    return out


def import_edges() -> set[tuple[str, str, str]]:
    """(importing room, imported room, file) for every run-time import of one room by another."""
    edges = set()
    for path in PACKAGE.rglob("*.py"):
        if "_shipped" in path.parts:
            continue
        src = _room(path)
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_only(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "simulator" and len(parts) > 1 and parts[1] != src:
                    edges.add((src, parts[1], str(path.relative_to(PACKAGE))))
    return edges


def test_every_room_has_a_place_in_the_order() -> None:
    rooms = {_room(p) for p in PACKAGE.rglob("*.py") if "_shipped" not in p.parts}
    assert rooms <= set(RANK), f"rooms missing from docs/design.md's order: {sorted(rooms - set(RANK))}"


def test_imports_point_down_the_data_flow() -> None:
    upward = sorted(
        f"{file}: {src} imports {dst}" for src, dst, file in import_edges() if RANK[dst] >= RANK[src]
    )
    assert not upward, "imports against docs/design.md's order:\n" + "\n".join(upward)


def test_package_import_graph_is_acyclic() -> None:
    graph = nx.DiGraph((src, dst) for src, dst, _ in import_edges())
    assert nx.is_directed_acyclic_graph(graph), f"import cycles: {list(nx.simple_cycles(graph))}"


def test_the_checker_sees_a_cycle_and_a_deferred_import(tmp_path: Path) -> None:
    """The graph test can fail: a function-level import of a later room is an upward edge."""
    tree = ast.parse("def f():\n    from simulator.cli import main\n")
    found = [
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and id(n) not in _type_only(tree)
    ]
    assert found == ["simulator.cli"] and RANK["cli"] > RANK["workload"]
    typed = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from simulator.cli import main\n")
    assert all(id(n) in _type_only(typed) for n in ast.walk(typed) if isinstance(n, ast.ImportFrom)
               and n.module == "simulator.cli")  # fmt: skip
    assert not nx.is_directed_acyclic_graph(nx.DiGraph([("workload", "parallel"), ("parallel", "workload")]))


# ------------------------------------------------------------------------------------ a schedule in one file
class _ChunkMajor(Schedule):
    """A toy schedule: every forward of one chunk, then the next chunk; backwards in reverse. Chunk ``c`` of
    stage ``s`` is virtual stage ``c·P + s`` (the default placement)."""

    name = "toy-chunk-major"
    chunked = True

    def order(self, chunks: int) -> list[int]:
        return list(range(chunks))

    def tasks(self, stage: int, stages: int, micro_batches: int, chunks: int) -> list[Task]:
        order = self.order(chunks)
        fwd = [Task(Pass.F, mb, c) for c in order for mb in range(micro_batches)]
        return fwd + [Task(Pass.B, mb, c) for c in reversed(order) for mb in range(micro_batches)]

    def in_flight(self, stage: int, stages: int, micro_batches: int, chunks: int) -> float:
        return float(micro_batches)


class _ChunkMajorMirrored(_ChunkMajor):
    """The same execution with the chunk numbers mirrored: chunk ``c`` of stage ``s`` holds virtual stage
    ``(C-1-c)·P + s`` and the chunks run in the order C-1 … 0. Only the placement differs from
    ``_ChunkMajor``, so a builder that honours the schedule's placement times both identically, and one that
    assumed ``c·P + s`` would run the model's chunks out of order."""

    name = "toy-chunk-major-mirrored"
    _chunks = 1

    def order(self, chunks: int) -> list[int]:
        self._chunks = chunks
        return list(reversed(range(chunks)))

    def virtual_stage(self, stage: int, chunk: int, stages: int) -> int:
        return (self._chunks - 1 - chunk) * stages + stage

    def stage_of(self, virtual_stage: int, stages: int) -> int:
        return virtual_stage % stages


@pytest.fixture
def toy_schedules():  # type: ignore[no-untyped-def]
    for cls in (_ChunkMajor, _ChunkMajorMirrored):
        SCHEDULES.register(cls.name)(cls)
    yield
    for cls in (_ChunkMajor, _ChunkMajorMirrored):
        SCHEDULES._items.pop(cls.name)


def _toy_run(schedule: str) -> float:
    doc = {
        "model": {"layers": 8, "hidden": 1024, "heads": 16, "ffn_hidden": 4096, "vocab": 32000},
        "cluster": {"topology": "dgx-a100-superpod", "nodes": 1},
        "training": {"seq_len": 1024, "global_batch": 4, "micro_batch": 1, "precision": "bf16"},
        "parallelism": {"tp": 1, "pp": 2, "dp": 4, "schedule": schedule, "virtual_stages": 2},
    }
    return simulate(scenario_from_dict(doc)).report.step_time_s


@pytest.mark.usefixtures("toy_schedules")
def test_a_schedule_registered_in_one_place_owns_its_placement() -> None:
    default = _toy_run(_ChunkMajor.name)
    assert default > 0
    assert _toy_run(_ChunkMajorMirrored.name) == pytest.approx(default, rel=1e-9)
