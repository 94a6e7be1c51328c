"""Bounded work: how much a step will simulate, estimated before the engine starts, and the limits past
which it refuses (issue #12, "Bounded work").

A rank's program holds, for every micro-batch and every layer it owns, the forward and backward passes of
that layer: at least one op each (host-local collectives fold into compute), 4 to 24 on the shipped
scenarios, and ring context parallelism repeats the attention exchange per ``cp`` step. So *layer passes*
= ranks x micro-batches x layers per rank x cp counts the work before any program is built, and
``MAX_LAYER_PASSES`` stops a step whose programs alone would take minutes and gigabytes to build (2 x 10^6
passes are up to 5 x 10^7 ops at 24 a pass; the 1,024-GPU GPT-3 under ``--full`` is 1.2 x 10^6). Once built, the exact op count is held to ``MAX_SIMULATED_OPS``: the
engine processes about 60,000 ops a second (BENCHMARKS.md: the 1,024-GPU GPT-3 step, 8 ranks of 4,354 ops,
in 0.6 s), so 5 x 10^7 ops is some 15 minutes of engine time. Past either, the step is refused with an
``InfeasibleConfig`` saying what to change, before the engine starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sized
from dataclasses import dataclass

from simulator.errors import InfeasibleConfig
from simulator.scenario import Scenario
from simulator.topology.cluster import Cluster

MAX_LAYER_PASSES = 2_000_000
# ``run --dry-run`` builds the programs to count their ops exactly only up to this many passes (seconds).
DRY_RUN_BUILD_PASSES = 100_000
MAX_SIMULATED_OPS = 50_000_000
# networkx keeps about 340 bytes per node or edge of the cluster graph once built, 590 at the peak of the
# build (tracemalloc on dgx-h100-superpod with 512 hosts: 9,024 nodes, 16,640 edges, 8.6 MB, 15.1 MB peak).
GRAPH_BYTES_PER_ELEMENT = 590
_ADVICE = (
    "use engine.mode symmetric, a larger micro_batch or a smaller global_batch, fewer layers or a smaller "
    "cluster (clustersim run --dry-run shows the estimate)"
)


@dataclass(frozen=True)
class WorkEstimate:
    """What a step will simulate: ranks, layer passes (before building), ops (exact, once built), the
    flows of one collective phase (every GPU of the cluster sends), and the memory of the cluster graph."""

    gpus: int
    simulated_ranks: int
    micro_batches: int
    layers_per_rank: int
    layer_passes: int
    graph_nodes: int
    graph_edges: int
    ops: int | None = None  # exact: the representatives' programs, counted
    collectives: int | None = None  # collectives among them

    @property
    def graph_bytes(self) -> int:
        """Peak memory of building the cluster graph, bytes."""
        return (self.graph_nodes + self.graph_edges) * GRAPH_BYTES_PER_ELEMENT

    @property
    def flows_per_phase(self) -> int:
        """Flows a collective phase puts on the fabric at once: one per GPU (the network model instantiates
        every group's flows, because contention is a property of the whole fabric)."""
        return self.gpus


def estimate_work(
    *,
    gpus: int,
    simulated_ranks: int,
    micro_batches: int,
    layers_per_rank: int,
    cp: int,
    graph_nodes: int,
    graph_edges: int,
) -> WorkEstimate:
    """The layer passes of ``simulated_ranks`` programs of ``micro_batches x layers_per_rank x cp``."""
    passes = simulated_ranks * micro_batches * max(1, layers_per_rank) * cp
    return WorkEstimate(
        gpus, simulated_ranks, micro_batches, layers_per_rank, passes, graph_nodes, graph_edges
    )


def check_work(estimate: WorkEstimate) -> None:
    """Refuse, before building any program, a step past ``MAX_LAYER_PASSES``."""
    if estimate.layer_passes <= MAX_LAYER_PASSES:
        return
    raise InfeasibleConfig(
        f"the step would simulate {estimate.layer_passes:,} layer passes ({estimate.simulated_ranks:,} ranks x "
        f"{estimate.micro_batches:,} micro-batches x {estimate.layers_per_rank:,} layers x cp); the engine's "
        f"limit is {MAX_LAYER_PASSES:,}: {_ADVICE}",
        field="training.global_batch",
    )


def check_ops(programs: Iterable[Sized]) -> int:
    """The exact op count of the built programs, refused past ``MAX_SIMULATED_OPS`` before the engine runs."""
    ops = sum(len(p) for p in programs)
    if ops > MAX_SIMULATED_OPS:
        raise InfeasibleConfig(
            f"the step would simulate {ops:,} ops; the engine's limit is {MAX_SIMULATED_OPS:,}: {_ADVICE}",
            field="training.global_batch",
        )
    return ops


def step_estimate(
    scenario: Scenario, cluster: Cluster, simulated_ranks: int, micro_batches: int, pp: int
) -> WorkEstimate:
    """The estimate of one step of ``scenario`` on ``cluster`` (layers per rank: the largest stage)."""
    split = scenario.parallelism.pp_layers
    per_rank = max(split) if split else -(-scenario.model.layers // pp)
    return estimate_work(
        gpus=cluster.num_gpus,
        simulated_ranks=simulated_ranks,
        micro_batches=micro_batches,
        layers_per_rank=per_rank,
        cp=scenario.parallelism.cp,
        graph_nodes=cluster.graph.number_of_nodes(),
        graph_edges=cluster.graph.number_of_edges(),
    )
