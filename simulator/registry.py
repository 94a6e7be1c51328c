"""Name → implementation registries for every extension point (strategies, schedules, topology
builders, collective algorithms, network models, executors).

Each extension is one module that registers itself with a decorator; the registry imports every module
of its package on first lookup, so adding a variant is adding one file. The registries are declared here, at
the bottom of the package graph, so that the scenario schema can check a name against them without importing
a plugin (docs/design.md, "Package layout"); their element types are imported for the type checker only.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from simulator.errors import ScenarioError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named set of implementations of one extension point.

    ``package`` is the dotted name of the package whose modules register into this registry; they are
    imported lazily so that importing the registry itself stays cheap and free of cycles.
    """

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self._package = package
        self._items: dict[str, T] = {}
        self._discovered = package is None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name``; a duplicate name is a bug and raises."""

        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"duplicate {self.kind} {name!r}")
            self._items[name] = obj
            return obj

        return deco

    def _discover(self) -> None:
        if self._discovered or self._package is None:
            return
        self._discovered = True
        pkg = importlib.import_module(self._package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self._package}.{info.name}")

    def get(self, name: str, *, file: str | None = None, field: str | None = None) -> T:
        """The implementation called ``name``; an unknown name is a user error listing the valid ones."""
        self._discover()
        try:
            return self._items[name]
        except KeyError:
            raise ScenarioError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}", file=file, field=field
            ) from None

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._discover()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


if TYPE_CHECKING:  # types only: the extension points' base classes sit above this module
    from simulator.batch.executors.base import Executor
    from simulator.network.collectives.base import CollectiveAlgorithm
    from simulator.network.models.base import NetworkModel
    from simulator.parallel.schedules.base import Schedule
    from simulator.parallel.strategies.base import Strategy
    from simulator.topology.builders.base import FabricBuilder, HostBuilder

HOST_BUILDERS: Registry[type[HostBuilder]] = Registry("host builder", "simulator.topology.builders")
FABRIC_BUILDERS: Registry[type[FabricBuilder]] = Registry("fabric builder", "simulator.topology.builders")
STRATEGIES: Registry[type[Strategy]] = Registry("parallelism strategy", "simulator.parallel.strategies")
SCHEDULES: Registry[type[Schedule]] = Registry("pipeline schedule", "simulator.parallel.schedules")
ALGORITHMS: Registry[type[CollectiveAlgorithm]] = Registry("collective algorithm", "simulator.network.collectives")
NETWORK_MODELS: Registry[type[NetworkModel]] = Registry("network model", "simulator.network.models")
EXECUTORS: Registry[type[Executor]] = Registry("executor", "simulator.batch.executors")
