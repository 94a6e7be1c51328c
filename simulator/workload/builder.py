"""The program builder: a scenario's model and layout → the program of each simulated rank.

The pipeline schedule orders forward and backward tasks per stage; each task expands into the compiled
steps of its model chunk (embedding, layers, head), framed by pipeline sends and receives; the data
strategy turns gradient-ready markers of the last micro-batch into bucketed reductions; the step ends with
the optimizer update.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from simulator.errors import InfeasibleConfig
from simulator.models.params import ParameterCount
from simulator.parallel.plan import ParallelPlan
from simulator.parallel.schedules.base import Pass, Schedule, Task
from simulator.parallel.strategies.base import BuildContext, DataStrategy
from simulator.parallel.strategies.data import grad_element_bytes
from simulator.workload.layer import (
    LayerBuilder,
    LayerStrategies,
    embedding_backward,
    embedding_forward,
    head_backward,
    head_forward,
)
from simulator.workload.ops import Category, Collective, CollectiveKind, CommKind, Compute, SendRecv
from simulator.workload.program import COMPUTE_STREAM, Program, ProgramBuilder
from simulator.workload.steps import (
    CommStep,
    CompiledStep,
    FusedCompute,
    GradReady,
    InlineTime,
    Step,
    compile_steps,
)

COMM_STREAM = {CommKind.TP: "tp-comm", CommKind.DP: "dp-comm", CommKind.CP: "cp-comm", CommKind.EP: "ep-comm"}
# Mixed-precision Adam touches ≈36 bytes per parameter: reads fp32 grad, master weight, m, v (16 B), writes
# master, m, v (12 B) and the 16-bit weight (2 B), plus the gradient-norm and inf checks reading the fp32
# gradient twice (8 B) (Megatron-LM optimizer; Rajbhandari et al. 2020 Sec. 3 for the 16 B/param of state).
ADAM_BYTES_PER_PARAM = 36.0


def stage_layers(layers: int, pp: int, chunks: int, pp_layers: list[int] | None) -> list[list[int]]:
    """Layer indices of each virtual stage (chunk c of stage s is virtual stage c·pp + s)."""
    virtual = pp * chunks
    if pp_layers is None:
        if layers % virtual:
            raise InfeasibleConfig(
                f"pp={pp} × virtual_stages={chunks} does not divide layers={layers}; give parallelism.pp_layers",
                field="parallelism.pp",
            )
        counts = [layers // virtual] * virtual
    else:
        if len(pp_layers) not in (pp, virtual):
            raise InfeasibleConfig(
                f"pp_layers has {len(pp_layers)} entries; need pp={pp} (or pp×virtual_stages={virtual})",
                field="parallelism.pp_layers",
            )
        if sum(pp_layers) != layers:
            raise InfeasibleConfig(
                f"pp_layers sums to {sum(pp_layers)}, the model has {layers} layers",
                field="parallelism.pp_layers",
            )
        counts = list(pp_layers) if len(pp_layers) == virtual else _spread(pp_layers, chunks)
    out, start = [], 0
    for n in counts:
        out.append(list(range(start, start + n)))
        start += n
    return out


def _spread(per_stage: list[int], chunks: int) -> list[int]:
    """Per-stage layer counts → per-virtual-stage counts (chunk c of stage s gets an even share)."""
    pp = len(per_stage)
    counts = [0] * (pp * chunks)
    for s, n in enumerate(per_stage):
        for c in range(chunks):
            counts[c * pp + s] = n // chunks + (1 if c < n % chunks else 0)
    return counts


@dataclass(frozen=True, eq=False)
class WorkloadSpec:
    """What the builder needs beyond the build context."""

    ctx: BuildContext
    plan: ParallelPlan
    layer_strategies: LayerStrategies
    data: DataStrategy
    schedule: Schedule
    params: ParameterCount
    micro_batches: int
    chunks: int

    @cached_property
    def virtual_layers(self) -> list[list[int]]:
        """Layer indices per virtual stage."""
        d = self.ctx.dims
        return stage_layers(self.ctx.model.layers, d.pp, self.chunks, self.ctx.par.pp_layers)

    @property
    def last_virtual(self) -> int:
        """Index of the last virtual stage (it holds the output layer)."""
        return self.ctx.dims.pp * self.chunks - 1

    @cached_property
    def layer_builder(self) -> LayerBuilder:
        """Kernel lists for this scenario's layers."""
        return LayerBuilder(self.ctx, self.layer_strategies)

    @property
    def dense_group(self) -> str:
        """Process group that reduces dense gradients (data × context parallel)."""
        return "dp" if self.ctx.dims.cp == 1 else "dpcp"

    def layer_params(self, layer: int) -> float:
        """Parameters of one layer held by one tensor-parallel rank."""
        p = self.params
        n = p.moe_layer if self.ctx.model.is_moe_layer(layer) else p.dense_layer
        return n / self.ctx.tp

    def chunk_params(self, vs: int) -> float:
        """Parameters of virtual stage ``vs`` held by one rank (layers, plus embedding/output layers)."""
        total = sum(self.layer_params(i) for i in self.virtual_layers[vs])
        if vs == 0:
            total += self.params.embedding / self.ctx.tp
        if vs == self.last_virtual:
            total += (self.params.output + self.params.final_norm) / self.ctx.tp
        return total


@dataclass
class _Emitter:
    """Appends compiled steps to a program, wiring stream order, overlaps and blocking waits."""

    pb: ProgramBuilder = field(default_factory=ProgramBuilder)
    last_compute: int = -1
    joins: list[list[int]] = field(
        default_factory=list
    )  # [countdown, op] of comms the compute stream must join
    step_end: list[int] = field(default_factory=list)  # comms the optimizer waits for

    def compute(self, fc: FusedCompute, category: Category, mb: int, chunk: int) -> int:
        """Add a fused compute op after the previous one and any communication it must wait for."""
        deps = [self.last_compute] + [op for c, op in self.joins if c == 0]
        self.joins = [[c - 1, op] for c, op in self.joins if c > 0]
        op = Compute(
            fc.name, category, fc.duration_s, fc.model_flops, fc.hw_flops, fc.bytes, mb, chunk,
            fc.comm_exposed_s, fc.comm_hidden_s, fc.segments,
        )  # fmt: skip
        self.last_compute = self.pb.add(op, COMPUTE_STREAM, deps)
        return self.last_compute

    def comm(self, cs: CommStep, mb: int, chunk: int) -> int:
        """Add a collective issued after the latest compute op."""
        op = Collective(cs.name, cs.kind, cs.comm, cs.group, cs.bytes, mb, chunk)
        # issued after the latest compute op and after any receive the compute stream is blocked on
        blocking = [op_ for c, op_ in self.joins if c == 0]
        idx = self.pb.add(op, COMM_STREAM[cs.comm], [self.last_compute, *blocking])
        if cs.join_after < 0:
            self.step_end.append(idx)
        else:
            self.joins.append([cs.join_after, idx])
        return idx

    def p2p(self, op: SendRecv, stream: str, blocking: bool) -> int:
        """Add a pipeline send or receive posted after the latest compute op."""
        idx = self.pb.add(op, stream, [self.last_compute])
        if blocking:
            self.joins.append([0, idx])
        return idx


class ProgramFactory:
    """Builds the program of any rank of one scenario (compiled chunks are shared between ranks)."""

    def __init__(self, spec: WorkloadSpec, inline: InlineTime | None = None) -> None:
        self.spec = spec
        self.inline = inline
        self._fwd: dict[int, tuple[CompiledStep, ...]] = {}
        self._bwd: dict[int, tuple[tuple[CompiledStep, ...], ...]] = {}

    # ------------------------------------------------------------------ compiled chunks
    def forward_steps(self, vs: int) -> tuple[CompiledStep, ...]:
        """Compiled forward pass of virtual stage ``vs``."""
        if vs not in self._fwd:
            s, lb, t = self.spec, self.spec.layer_builder, self.spec.layer_strategies.tensor
            steps: list[Step] = embedding_forward(s.ctx, t) if vs == 0 else []
            for _ in s.virtual_layers[vs]:
                steps += lb.forward()
            if vs == s.last_virtual:
                steps += head_forward(s.ctx, t)
            self._fwd[vs] = compile_steps(steps, False, self.inline)
        return self._fwd[vs]

    def backward_steps(self, vs: int) -> tuple[tuple[CompiledStep, ...], ...]:
        """Compiled backward pass of ``vs`` as (recompute, backward) segments per layer, head first."""
        if vs not in self._bwd:
            s, lb, t = self.spec, self.spec.layer_builder, self.spec.layer_strategies.tensor
            segs: list[tuple[CompiledStep, ...]] = []
            if vs == s.last_virtual:
                out_params = (s.params.output + s.params.final_norm) / s.ctx.tp
                segs.append(compile_steps(head_backward(s.ctx, t, out_params), True, self.inline))
            for layer in reversed(s.virtual_layers[vs]):
                re = lb.recompute(s.ctx.training.recompute)
                if re:
                    segs.append(compile_steps(re, False, self.inline))
                segs.append(compile_steps(lb.backward(s.layer_params(layer)), True, self.inline))
            if vs == 0:
                segs.append(
                    compile_steps(
                        embedding_backward(s.ctx, t, s.params.embedding / s.ctx.tp), True, self.inline
                    )
                )
            self._bwd[vs] = tuple(segs)
        return self._bwd[vs]

    # ------------------------------------------------------------------ program
    def build(self, rank: int) -> Program:
        """The program of ``rank`` for one optimizer step."""
        s = self.spec
        stage = int(s.plan.coords["pp"][rank])
        em = _Emitter()
        grads = _GradBuckets(s, em)
        for task in s.schedule.tasks(stage, s.ctx.dims.pp, s.micro_batches, s.chunks):
            vs = task.chunk * s.ctx.dims.pp + stage
            if task.kind is Pass.F:
                self._forward(em, task, vs, stage)
            else:
                self._backward(em, task, vs, stage, grads)
        grads.flush_all()
        self._optimizer(em, stage)
        return em.pb.build()

    def _p2p_bytes(self) -> float:
        """Bytes one rank sends to the next stage per micro-batch: the activation, split over TP ranks
        when Megatron's scatter-gather optimisation is on or sequence parallelism shards it anyway."""
        c = self.spec.ctx
        full = float(c.tokens * c.model.hidden * c.e)
        split = c.par.sequence_parallel or (c.par.pp_scatter_gather and c.tp > 1)
        return full / c.tp if split else full

    def _recv(self, em: _Emitter, kind: str, task: Task, vs_from: int, stage: int) -> None:
        pp = self.spec.ctx.dims.pp
        off = vs_from % pp - stage
        stream = "pp-recv-fwd" if kind == "act" else "pp-recv-bwd"
        vs_to = vs_from + (1 if kind == "act" else -1)
        op = SendRecv(
            f"recv_{kind}",
            False,
            CommKind.PP,
            "pp",
            off,
            self._p2p_bytes(),
            (kind, task.mb, vs_to),
            task.mb,
            task.chunk,
        )
        em.p2p(op, stream, blocking=True)
        c = self.spec.ctx
        if c.tp > 1 and c.par.pp_scatter_gather and not c.par.sequence_parallel:
            # Megatron's scatter-gather: each TP rank received 1/tp of the activation; gather it over NVLink
            gather = CommStep(
                f"{kind}_allgather", CollectiveKind.ALL_GATHER, CommKind.TP, "tp", self._p2p_bytes() * c.tp
            )
            cat = Category.FORWARD if kind == "act" else Category.BACKWARD
            self._emit(em, compile_steps([gather], False, self.inline), cat, task, None)

    def _send(self, em: _Emitter, kind: str, task: Task, vs_to: int, stage: int) -> None:
        pp = self.spec.ctx.dims.pp
        off = vs_to % pp - stage
        stream = "pp-send-fwd" if kind == "act" else "pp-send-bwd"
        op = SendRecv(
            f"send_{kind}",
            True,
            CommKind.PP,
            "pp",
            off,
            self._p2p_bytes(),
            (kind, task.mb, vs_to),
            task.mb,
            task.chunk,
        )
        # Sends are asynchronous (torch isend): the compute stream goes on, the send stream waits for the
        # matching receive. Blocking sends would deadlock interleaved schedules, where Megatron batches each
        # send with the next receives instead.
        em.p2p(op, stream, blocking=False)

    def _emit(self, em: _Emitter, steps: tuple[CompiledStep, ...], cat: Category, task: Task,
              grads: _GradBuckets | None) -> None:  # fmt: skip
        for st in steps:
            if isinstance(st, FusedCompute):
                em.compute(st, cat, task.mb, task.chunk)
            elif isinstance(st, CommStep):
                em.comm(st, task.mb, task.chunk)
            elif grads is not None:
                grads.ready(st, task)

    def _forward(self, em: _Emitter, task: Task, vs: int, stage: int) -> None:
        if vs > 0:
            self._recv(em, "act", task, vs - 1, stage)
        self._emit(em, self.forward_steps(vs), Category.FORWARD, task, None)
        if vs < self.spec.last_virtual:
            self._send(em, "act", task, vs + 1, stage)

    def _backward(self, em: _Emitter, task: Task, vs: int, stage: int, grads: _GradBuckets) -> None:
        if vs < self.spec.last_virtual:
            self._recv(em, "grad", task, vs + 1, stage)
        last_mb = task.mb == self.spec.micro_batches - 1
        for seg in self.backward_steps(vs):
            cat = Category.RECOMPUTE if seg and _is_recompute(seg) else Category.BACKWARD
            self._emit(em, seg, cat, task, grads if last_mb else None)
        if last_mb:
            grads.chunk_done()
        if vs > 0:
            self._send(em, "grad", task, vs - 1, stage)

    def _optimizer(self, em: _Emitter, stage: int) -> None:
        s = self.spec
        local = sum(s.chunk_params(c * s.ctx.dims.pp + stage) for c in range(s.chunks))
        shard = s.data.optimizer_shard(s.ctx, s.plan.groups(s.dense_group).shape[1])
        t = s.ctx.compute.elementwise(local / shard * ADAM_BYTES_PER_PARAM)
        fc = FusedCompute(("optimizer",), t.duration_s, 0.0, 0.0, t.bytes, 1)
        em.joins += [[0, op] for op in em.step_end]
        em.compute(fc, Category.OPTIMIZER, -1, 0)
        for cs in s.data.after_optimizer(s.ctx, local, s.dense_group):
            assert isinstance(cs, CommStep)
            em.comm(cs, -1, 0)


def _is_recompute(seg: tuple[CompiledStep, ...]) -> bool:
    first = next((x for x in seg if isinstance(x, FusedCompute)), None)
    return first is not None and first.names[0].startswith("re.")


class _GradBuckets:
    """Gradient reduction of the last micro-batch: buckets overlapped with backward, or one reduction at
    the end when ``dp_overlap`` is off."""

    def __init__(self, spec: WorkloadSpec, em: _Emitter) -> None:
        self.spec, self.em = spec, em
        self.pending = 0.0
        self.total = 0.0
        self.bucket_params = spec.ctx.par.grad_bucket_mb * 1e6 / grad_element_bytes(spec.ctx)
        self.active = spec.plan.groups(spec.dense_group).shape[1] > 1

    def ready(self, marker: CompiledStep, task: Task) -> None:
        """Gradients of ``marker.param_count`` parameters are complete."""
        assert isinstance(marker, GradReady)
        if not self.active:
            return
        if not self.spec.ctx.par.dp_overlap:
            self.total += marker.param_count
            return
        self.pending += marker.param_count
        if self.pending >= self.bucket_params:
            self._emit(self.pending, task)
            self.pending = 0.0

    def chunk_done(self) -> None:
        """The last micro-batch of a chunk finished its backward: reduce what is left of it."""
        if self.pending > 0:
            self._emit(self.pending, Task(Pass.B, self.spec.micro_batches - 1))
            self.pending = 0.0

    def flush_all(self) -> None:
        """Without overlap, reduce every gradient once the backward pass is over."""
        if self.total > 0:
            self._emit(self.total, Task(Pass.B, -1))
            self.total = 0.0

    def _emit(self, count: float, task: Task) -> None:
        for cs in self.spec.data.gradient_steps(self.spec.ctx, count, self.spec.dense_group, final=False):
            assert isinstance(cs, CommStep)
            self.em.comm(cs, task.mb, task.chunk)
