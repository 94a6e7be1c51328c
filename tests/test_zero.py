"""ZeRO stages on the timeline: communication volumes against the ZeRO paper's closed forms (stages 1-2: one
all-reduce's worth, stage 3: 1.5×; Rajbhandari et al. 2020, Sec. 7), ZeRO-3's per-layer gathers
prefetched under compute alongside sequence parallelism's overlapped collectives, and the distributed
optimizer's parameter gather issued at the step start."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.build.program_builder import ProgramFactory
from simulator.build.setup import Setup
from simulator.scenario import Scenario
from simulator.simulate import simulate
from simulator.topology.loader import build_cluster
from simulator.workload.ops import Collective, CollectiveKind, CommKind
from simulator.workload.program import Program

MODEL = {"layers": 4, "hidden": 1024, "heads": 16, "vocab": 4096}
# bytes each rank sends per byte of buffer (ring; Thakur et al. 2005): all-reduce 2(n−1)/n, the others (n−1)/n
WIRE = {CollectiveKind.ALL_REDUCE: 2.0, CollectiveKind.ALL_GATHER: 1.0, CollectiveKind.REDUCE_SCATTER: 1.0}


def program(scenario: Scenario, rank: int = 0) -> tuple[Program, Setup]:
    """The program of ``rank`` and the setup it came from."""
    setup = Setup(scenario, build_cluster(scenario.topology, file="<test>"), "symmetric")
    return ProgramFactory(setup.workload, setup.inline_comm).build(rank), setup


def dp_ops(prog: Program) -> list[Collective]:
    return [op for op in prog.ops if isinstance(op, Collective) and op.comm is CommKind.DP]


def wire_bytes(prog: Program, n: int) -> float:
    """Bytes one rank sends for data parallelism in one step."""
    return sum(WIRE[op.kind] * (n - 1) / n * op.bytes for op in dp_ops(prog))


@pytest.mark.parametrize("d", [2, 4, 8])
@pytest.mark.parametrize("m", [1, 3])
def test_zero_volumes_match_closed_forms(make_scenario, d, m):
    """fp16, d ranks, P parameters: DDP all-reduces 2(d−1)/d·2P bytes per step; ZeRO-1/2 reduce-scatter and
    all-gather the same; ZeRO-3 gathers twice and reduce-scatters once per micro-batch, 1.5·m times that."""
    params = None
    volumes = {}
    for zero in range(4):
        prog, setup = program(
            make_scenario(
                gpus_per_host=d, model=MODEL, zero=zero, micro_batches=m, training__precision="fp16"
            )
        )
        volumes[zero] = wire_bytes(prog, d)
        params = setup.workload.chunk_params(0)
    assert params is not None
    ddp = 2 * (d - 1) / d * 2 * params
    assert volumes[0] == pytest.approx(ddp, rel=1e-9)
    assert volumes[1] == pytest.approx(ddp, rel=1e-9)
    assert volumes[2] == pytest.approx(ddp, rel=1e-9)
    assert volumes[3] == pytest.approx(1.5 * m * ddp, rel=1e-9)


def test_zero3_gathers_every_layer_twice_per_micro_batch(make_scenario):
    """Per micro-batch: one gather per unit (embedding, layers, output layer) before its forward and one
    before its backward, one reduce-scatter after its backward; nothing left for the end of the step."""
    m, units = 3, MODEL["layers"] + 2
    prog, _ = program(make_scenario(gpus_per_host=4, model=MODEL, zero=3, micro_batches=m))
    kinds = [op.kind for op in dp_ops(prog)]
    assert kinds.count(CollectiveKind.ALL_GATHER) == 2 * m * units
    assert kinds.count(CollectiveKind.REDUCE_SCATTER) == m * units
    assert CollectiveKind.ALL_REDUCE not in kinds


def intervals(trace, rank: int, pred) -> np.ndarray:
    rows = [i for i in trace.select(rank) if pred(i)]
    return np.stack([trace.start_s[rows], trace.end_s[rows]], axis=1) if rows else np.zeros((0, 2))


def overlap_s(a: np.ndarray, b: np.ndarray) -> float:
    """Total time both interval sets are active together (each set's intervals are disjoint)."""
    return float(sum(max(0.0, min(x1, y1) - max(x0, y0)) for x0, x1 in a for y0, y1 in b))


def test_zero3_prefetch_hides_gathers_next_to_sequence_parallel_overlap(make_scenario):
    """ZeRO-3 with SP's overlapped TP collectives run as engine ops: the next layer's gather runs while
    the current layer computes and its TP collectives run, and prefetching beats gathering on demand."""
    common = dict(
        gpus_per_host=4, nodes=2, model=dict(MODEL, layers=8), tp=2, zero=3, micro_batches=2, seq_len=2048,
        parallelism__sequence_parallel=True, parallelism__tp_comm_overlap=True, engine__fuse_local_comm=False,
    )  # fmt: skip
    on = simulate(make_scenario(**common, parallelism__param_gather_overlap=True))
    off = simulate(make_scenario(**common, parallelism__param_gather_overlap=False))
    tr = on.trace
    gathers = intervals(tr, 0, lambda i: tr.name[i].startswith("param_allgather"))
    tp = intervals(tr, 0, lambda i: tr.comm[i] == "tp")
    compute = intervals(tr, 0, lambda i: tr.stream[i] == "compute")
    assert len(gathers) and len(tp)
    assert overlap_s(gathers, tp) > 0
    assert overlap_s(gathers, compute) > 0.5 * float((gathers[:, 1] - gathers[:, 0]).sum())
    assert on.report.exposed_comm.dp_s < 0.5 * off.report.exposed_comm.dp_s
    assert on.report.step_time_s < off.report.step_time_s


def test_overlapped_param_gather_starts_with_the_step(make_scenario):
    """ZeRO-1 with ``param_gather_overlap``: the updated parameters are gathered at the start of the step,
    on the network with everything else, and the first forward of each layer waits for its gather."""
    common = dict(gpus_per_host=4, nodes=2, model=MODEL, zero=1, micro_batches=2)
    on = simulate(make_scenario(**common, parallelism__param_gather_overlap=True))
    off = simulate(make_scenario(**common, parallelism__param_gather_overlap=False))
    for res, at_start in ((on, True), (off, False)):
        tr = res.trace
        rows = [i for i in tr.select(0) if tr.name[i].startswith("param_allgather")]
        assert rows
        first = min(float(tr.start_s[i]) for i in rows)
        assert (first == 0.0) == at_start
    assert on.report.comm.dp_s > 0
    assert on.report.step_time_s <= off.report.step_time_s
