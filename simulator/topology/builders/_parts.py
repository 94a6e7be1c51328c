"""Pieces shared by host builders: GPU nodes, NICs and the PCIe tree that joins them.

Node order inside a host is fixed (GPUs, scale-up switch, PCIe switches, CPUs, NICs) and hosts are added
one after the other, so every host is a contiguous block of graph nodes with the same layout as the
other hosts of its group; the router relies on that to route one host template for all of them.
"""

from __future__ import annotations

from simulator.topology.builders.base import (
    BuildContext,
    CpuHostSpec,
    GraphBuilder,
    NicHostSpec,
    default_latency_s,
    gbps,
)


def add_gpus(g: GraphBuilder, gpu: str, count: int, host: int, first_gpu: int) -> tuple[str, ...]:
    """GPU nodes ``h{host}/gpu{k}`` with the attributes of the graph conventions."""
    names = []
    for k in range(count):
        names.append(
            g.node(f"h{host}/gpu{k}", kind="gpu", gpu_id=first_gpu + k, host=host, local=k, gpu_type=gpu)
        )
    return tuple(names)


def pcie_latency(spec: NicHostSpec, ctx: BuildContext, field: str) -> float:
    """The PCIe link latency of a host spec (explicit, or the default for its PCIe type)."""
    if spec.pcie_latency_s is not None:
        return spec.pcie_latency_s
    return default_latency_s(spec.pcie_type, file=ctx.file, field=f"{field}.pcie_latency_s")


def add_pcie_and_nics(
    g: GraphBuilder,
    spec: NicHostSpec,
    host: int,
    gpus: tuple[str, ...],
    cpus: tuple[str, ...],
    ctx: BuildContext,
    field: str,
) -> tuple[str, ...]:
    """PCIe switches (if any) and NICs of a host; returns the NIC names by rail.

    Without ``pcie_switches`` each GPU gets a direct PCIe link to its NIC (GPU ``g`` → NIC
    ``g * nics // gpus``), which carries the same bandwidth as the real switch path, or, in hosts with
    CPU nodes, GPUs and NICs sit on the CPUs' root ports; with switches, GPU ``g`` and NIC ``k`` hang off
    switch ``g * P // gpus`` and ``k * P // nics``, and switches off CPUs.
    """
    lat = pcie_latency(spec, ctx, field) if (spec.nics or cpus) else 0.0
    bw = gbps(spec.pcie_gbps) if spec.pcie_gbps is not None else 0.0
    switches: list[str] = []
    if spec.pcie_switches is not None:
        for p in range(spec.pcie_switches):
            switches.append(g.node(f"h{host}/pcie{p}", kind="pcie", host=host))
        for k, gpu in enumerate(gpus):
            g.link(gpu, switches[k * len(switches) // len(gpus)], bw, lat, spec.pcie_type)
        for p, sw in enumerate(switches):
            if cpus:
                g.link(sw, cpus[p * len(cpus) // len(switches)], bw, lat, spec.pcie_type)
    nics = []
    for k in range(spec.nics):
        nics.append(g.node(f"h{host}/nic{k}", kind="nic", host=host, rail=k))
    for k, nic in enumerate(nics):
        if switches:
            g.link(nic, switches[k * len(switches) // len(nics)], bw, lat, spec.pcie_type)
    if not switches:
        _direct_pcie(g, gpus, tuple(nics), cpus, bw, lat, spec.pcie_type)
    return tuple(nics)


def _direct_pcie(
    g: GraphBuilder,
    gpus: tuple[str, ...],
    nics: tuple[str, ...],
    cpus: tuple[str, ...],
    bw: float,
    lat: float,
    kind: str,
) -> None:
    """PCIe without switches: GPUs and NICs on the CPUs' root ports, or each GPU straight to its NIC."""
    if cpus:
        for k, gpu in enumerate(gpus):
            g.link(gpu, cpus[k * len(cpus) // len(gpus)], bw, lat, kind)
        for k, nic in enumerate(nics):
            g.link(nic, cpus[k * len(cpus) // len(nics)], bw, lat, kind)
    elif nics:
        for k, gpu in enumerate(gpus):
            g.link(gpu, nics[k * len(nics) // len(gpus)], bw, lat, kind)


def add_cpus(g: GraphBuilder, spec: CpuHostSpec, host: int, ctx: BuildContext, field: str) -> tuple[str, ...]:
    """CPU root-complex nodes ``h{host}/cpu{k}`` (kind ``pcie``), joined in a chain by QPI/UPI links."""
    cpus = tuple(g.node(f"h{host}/cpu{k}", kind="pcie", host=host) for k in range(spec.cpus))
    if len(cpus) > 1:
        lat = spec.cpu_link_latency_s
        if lat is None:
            lat = default_latency_s(spec.cpu_link_type, file=ctx.file, field=f"{field}.cpu_link_latency_s")
        for a, b in zip(cpus, cpus[1:], strict=False):
            g.link(a, b, gbps(spec.cpu_link_gbps or 0.0), lat, spec.cpu_link_type)
    return cpus
