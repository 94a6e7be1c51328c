"""The two topology extension points (host builders, fabric builders), their shared schemas, and the
``GraphBuilder`` every builder writes nodes and links into.

A host builder turns one ``host:`` mapping into the nodes and links of one server (GPUs, NVSwitch, PCIe
switches, NICs); a fabric builder joins the hosts (switches and their links, or direct chip-to-chip
links). Each is one module in this package that registers itself, so adding one is adding a file.
Graph conventions (node kinds and attributes, per-direction edge capacity) are those of
``simulator/topology/cluster.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simulator.errors import ScenarioError
from simulator.units import GB

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]

# Default one-way latency of one link, by link-type prefix (longest prefix wins). A topology file may
# override each of them with a ``*_latency_s`` / ``latency_s`` key. Fabric figures are switch port-to-port
# latencies (a cable adds ~5 ns/m). NVLink and PCIe figures split NCCL's per-step hardware latency
# (NVIDIA/nccl src/graph/tuning.cc, NCCL 2.20.3, hwLat[NVLINK|PCI][Ring][LL] = 0.6 | 1.0 us per GPU-to-GPU
# step, which includes the LL protocol's flag/poll cost) over the two links such a step crosses
# (GPU -> NVSwitch -> GPU, GPU -> PCIe switch -> NIC); the same figures as simulator/hardware/links.yaml.
DEFAULT_LATENCY_S: dict[str, tuple[float, str]] = {
    "nvlink": (0.3e-6, "NCCL 2.20.3 tuning.cc hwLat NVLink ring/LL 0.6 us per step, halved"),
    "pcie": (0.5e-6, "NCCL 2.20.3 tuning.cc hwLat PCI ring/LL 1.0 us per step, halved"),
    "qpi": (0.5e-6, "taken equal to a PCIe hop (unverified)"),
    "upi": (0.5e-6, "taken equal to a PCIe hop (unverified)"),
    "ib-edr": (90e-9, "Mellanox Switch-IB 2 SB7800 product brief, 90 ns port-to-port (unverified)"),
    "ib-hdr": (130e-9, "Mellanox Quantum QM8790/QM8700 product brief, sub-130 ns port-to-port"),
    "ib-ndr": (130e-9, "Quantum-2 QM9700: no datasheet figure; taken equal to HDR (unverified)"),
    "ib-xdr": (
        130e-9,
        "Quantum-X800: datasheet says only 'ultra-low latency'; taken equal to HDR (unverified)",
    ),
    "opa": (110e-9, "Intel Omni-Path Edge Switch 100 Series product brief: 100-110 ns port-to-port"),
    "roce": (0.6e-6, "no vendor port-to-port figure for 400G RoCE switches found; placeholder (unverified)"),
    "ici": (1.0e-6, "TPU ICI: no published per-hop figure; placeholder (unverified)"),
}

# NVLink SHARP (in-switch reduction) exists from the third-generation NVSwitch with NVLink4 (H100) on:
# NVIDIA H100 Tensor Core GPU Architecture whitepaper, "NVLink Switch System" / SHARP in NVSwitch.
NVLS_LINK_TYPES = frozenset({"nvlink4", "nvlink5"})


@lru_cache(maxsize=256)
def _latency_prefix(link_type: str) -> str | None:
    """The longest prefix of ``DEFAULT_LATENCY_S`` that ``link_type`` starts with (memoised: a fat-tree asks
    once per NIC, 65,536 times at 65,536 GPUs)."""
    return max((p for p in DEFAULT_LATENCY_S if link_type.startswith(p)), key=len, default=None)


def default_latency_s(link_type: str, *, file: str, field: str) -> float:
    """The default one-way latency of a ``link_type``; an unknown type must give its latency explicitly."""
    best = _latency_prefix(link_type)
    if best is None:
        known = ", ".join(sorted(DEFAULT_LATENCY_S))
        raise ScenarioError(
            f"no default latency for link type {link_type!r} (known prefixes: {known}); give the latency_s key",
            file=file,
            field=field,
        )
    return DEFAULT_LATENCY_S[best][0]


def gbps(value: float) -> float:
    """GB/s (1e9 B/s, the ``_gbps`` unit of topology files) → bytes per second."""
    return float(value) * GB


# ------------------------------------------------------------------------------------------- schemas
class Strict(BaseModel):
    """Base of every topology schema: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class HostSpec(Strict):
    """Keys every host builder accepts: which GPU, how many."""

    builder: str
    gpu: str
    gpus: PosInt


class NicHostSpec(HostSpec):
    """A host with NICs reached over PCIe. GPU ``g`` uses NIC ``g * nics // gpus`` (its PCIe neighbour)."""

    nics: NonNegInt = 0
    nic_gbps: PosFloat | None = None  # per NIC per direction, GB/s (HDR 200 Gb/s = 25 GB/s)
    nic_type: str | None = None  # link type of the NIC's fabric link, e.g. ib-hdr
    pcie_gbps: PosFloat | None = None  # GPU/NIC <-> PCIe per direction, GB/s
    pcie_type: str = "pcie"
    pcie_latency_s: NonNegFloat | None = None
    pcie_switches: PosInt | None = None  # None: each GPU has a direct PCIe link to its NIC

    @model_validator(mode="after")
    def _nic_fields(self) -> NicHostSpec:
        if self.nics:
            if self.gpus % self.nics:
                valid = ", ".join(str(d) for d in range(1, self.gpus + 1) if self.gpus % d == 0)
                raise _FieldError("nics", f"{self.nics} does not divide gpus={self.gpus}; valid: {valid}")
            for key in ("nic_gbps", "nic_type", "pcie_gbps"):
                if getattr(self, key) is None:
                    raise _FieldError(key, f"required when nics > 0 (nics={self.nics})")
        if self.pcie_switches is not None:
            if self.pcie_gbps is None:
                raise _FieldError("pcie_gbps", f"required with pcie_switches ({self.pcie_switches})")
            for what, count in (("gpus", self.gpus), ("nics", self.nics)):
                if count % self.pcie_switches:
                    raise _FieldError("pcie_switches", f"{self.pcie_switches} does not divide {what}={count}")
        return self


class CpuHostSpec(NicHostSpec):
    """A host whose GPUs can also reach each other over PCIe through the CPUs' root complexes."""

    cpus: PosInt = 2
    cpu_link_gbps: PosFloat | None = None  # CPU <-> CPU (QPI/UPI) per direction, GB/s
    cpu_link_type: str = "upi"
    cpu_link_latency_s: NonNegFloat | None = None

    @model_validator(mode="after")
    def _pcie_tree(self) -> CpuHostSpec:
        if self.pcie_gbps is None:
            raise _FieldError("pcie_gbps", "required: GPUs reach NICs and each other over PCIe")
        if self.cpus > 1 and self.cpu_link_gbps is None:
            raise _FieldError("cpu_link_gbps", f"required when cpus > 1 (cpus={self.cpus})")
        if self.pcie_switches is not None and self.pcie_switches % self.cpus:
            raise _FieldError("pcie_switches", f"{self.pcie_switches} is not a multiple of cpus={self.cpus}")
        return self


class FabricSpec(Strict):
    """Keys every fabric builder accepts."""

    builder: str


class RoutedFabricSpec(FabricSpec):
    """A fabric with several equal-cost paths between hosts, and how flows spread over them."""

    ecmp: str = "destination"  # destination: D-mod-k like InfiniBand; hash: 5-tuple-like hash per flow

    @model_validator(mode="after")
    def _ecmp(self) -> RoutedFabricSpec:
        if self.ecmp not in ("destination", "hash"):
            raise _FieldError("ecmp", f"{self.ecmp!r} is not supported; valid: destination, hash")
        return self


class SwitchedFabricSpec(RoutedFabricSpec):
    """A fabric of switches with uniform links."""

    link_gbps: PosFloat  # per link per direction, GB/s
    link_type: str
    latency_s: NonNegFloat | None = None  # per link; default from the link type (switch port-to-port)


class _FieldError(ValueError):
    """A validator's error about one named key of its model (so the message names that key)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"@{key}@{message}")


def validate(schema: type[Strict], raw: Any, *, file: str, field: str) -> Any:
    """``schema.model_validate(raw)``; errors become one-line ``ScenarioError`` naming file and field."""
    if not isinstance(raw, dict):
        raise ScenarioError(f"must be a mapping (got {type(raw).__name__})", file=file, field=field)
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc: list[str | int] = list(err.get("loc", ()))
        msg = _describe(err, schema)
        if msg.startswith("@"):  # a _FieldError: the model validator names the key it is about
            key, msg = msg[1:].split("@", 1)
            loc.append(key)
        where = field
        for part in loc:  # fabric.links[2].gbps
            where = f"{where}[{part}]" if isinstance(part, int) else ".".join(p for p in (where, part) if p)
        raise ScenarioError(msg, file=file, field=where or None) from None


def _describe(err: Any, schema: type[Strict]) -> str:
    """Words for one pydantic error."""
    kind = err.get("type", "")
    loc = err.get("loc", ())
    if kind == "extra_forbidden":
        valid = ", ".join(schema.model_fields) if len(loc) == 1 else ""
        return "unknown key" + (f"; valid: {valid}" if valid else "")
    if kind == "missing":
        return "required key is missing"
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :]
    value = err.get("input")
    shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    return f"{msg} (got {shown})"


# ------------------------------------------------------------------------------------------- graph
@dataclass
class GraphBuilder:
    """Collects nodes and links; parallel links between one pair add up into one edge."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def node(self, name: str, **attrs: Any) -> str:
        """Add a node; a duplicate name is a builder bug."""
        assert name not in self.nodes, f"duplicate node {name}"
        self.nodes[name] = attrs
        return name

    def link(self, a: str, b: str, bandwidth_bytes_per_s: float, latency_s: float, link_type: str) -> None:
        """Add a full-duplex link (capacity per direction); a second link a-b adds its capacity."""
        assert a in self.nodes and b in self.nodes and a != b, f"bad link {a} - {b}"
        key = (a, b) if a < b else (b, a)
        prev = self.edges.get(key)
        if prev is not None:
            prev["bandwidth_bytes_per_s"] += bandwidth_bytes_per_s
            return
        self.edges[key] = {
            "bandwidth_bytes_per_s": float(bandwidth_bytes_per_s),
            "latency_s": float(latency_s),
            "link_type": link_type,
        }


@dataclass(frozen=True)
class HostPorts:
    """What a host builder made: its GPUs (by local index) and NICs (by rail), as node names."""

    host: int
    gpus: tuple[str, ...]
    nics: tuple[str, ...]
    nic_bytes_per_s: float = 0.0
    nic_type: str = ""


@dataclass(frozen=True)
class BuildContext:
    """Where the topology came from, for error messages."""

    file: str
    total_gpus: int
    host_field: str = "host"  # where the host spec sits in the file (host, host_groups[1].host)


class HostBuilder(ABC):
    """Builds the nodes and links of one host from its validated spec."""

    schema: ClassVar[type[HostSpec]]

    @abstractmethod
    def build(self, spec: Any, g: GraphBuilder, host: int, first_gpu: int, ctx: BuildContext) -> HostPorts:
        """Add host ``host`` (GPUs ``first_gpu ...``) to ``g``; return its GPU and NIC node names."""

    def facts(self, spec: Any) -> dict[str, object]:
        """Builder facts for ``Cluster.meta`` (scale-up link kind, in-switch reduction ...)."""
        return {}


class FabricBuilder(ABC):
    """Joins the hosts: switches and their links, or direct links between chips."""

    schema: ClassVar[type[FabricSpec]]

    @abstractmethod
    def build(
        self, spec: Any, g: GraphBuilder, hosts: list[HostPorts], ctx: BuildContext
    ) -> dict[str, object]:
        """Add the fabric to ``g``; return facts for ``Cluster.meta`` (tiers, switch counts ...)."""


def fabric_edge(spec: SwitchedFabricSpec, ctx: BuildContext, field: str = "fabric") -> tuple[float, float]:
    """(bytes/s per direction, latency in s) of one fabric link of ``spec``."""
    lat = spec.latency_s
    if lat is None:
        lat = default_latency_s(spec.link_type, file=ctx.file, field=f"{field}.latency_s")
    return gbps(spec.link_gbps), lat


def attach_nic(
    g: GraphBuilder, nic: str, host: HostPorts, switch: str, spec: SwitchedFabricSpec, ctx: BuildContext
) -> None:
    """Link a host NIC to its switch at the slower of the NIC rate and the switch port rate."""
    bw, lat = fabric_edge(spec, ctx)
    g.link(nic, switch, min(bw, host.nic_bytes_per_s or bw), lat, host.nic_type or spec.link_type)
