"""The program builder: a scenario's model and layout → the program of each simulated rank.

The pipeline schedule orders forward and backward tasks per stage; each task expands into the compiled
steps of its model chunk (embedding, layers, head), framed by pipeline sends and receives; the data
strategy turns gradient-ready markers of the last micro-batch into bucketed reductions; the step ends with
the optimizer update.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property, partial

from simulator.build.layer import (
    LayerBuilder,
    LayerStrategies,
    embedding_backward,
    embedding_forward,
    head_backward,
    head_forward,
    mtp_backward,
    mtp_forward,
    split_weight_gradients,
)
from simulator.errors import InfeasibleConfig
from simulator.hardware.compute import KernelClass
from simulator.models.params import ParameterCount
from simulator.parallel.plan import ParallelPlan
from simulator.parallel.schedules.base import Pass, Schedule, Task, pair_steady_state
from simulator.parallel.strategies.base import BuildContext, DataStrategy
from simulator.parallel.strategies.data import grad_element_bytes
from simulator.workload.ops import Axis, Category, Collective, CollectiveKind, CommKind, Compute, SendRecv
from simulator.workload.program import COMPUTE_STREAM, Program, ProgramBuilder
from simulator.workload.steps import (
    PREFETCH,
    CommStep,
    CompiledStep,
    FusedCompute,
    GradReady,
    InlineTime,
    Join,
    Step,
    compile_steps,
)

COMM_STREAM = {CommKind.TP: "tp-comm", CommKind.DP: "dp-comm", CommKind.CP: "cp-comm", CommKind.EP: "ep-comm"}
# Mixed-precision Adam touches ≈36 bytes per parameter: reads fp32 grad, master weight, m, v (16 B), writes
# master, m, v (12 B) and the 16-bit weight (2 B), plus the gradient-norm and inf checks reading the fp32
# gradient twice (8 B) (Megatron-LM optimizer; Rajbhandari et al. 2020 Sec. 3 for the 16 B/param of state).
ADAM_BYTES_PER_PARAM = 36.0


def stage_layers(
    layers: int, pp: int, chunks: int, pp_layers: list[int] | None, place: Callable[[int, int], int]
) -> list[list[int]]:
    """Layer indices of each virtual stage (chunk c of stage s is virtual stage ``place(s, c)``)."""
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
        counts = list(pp_layers) if len(pp_layers) == virtual else _spread(pp_layers, chunks, place)
    out, start = [], 0
    for n in counts:
        out.append(list(range(start, start + n)))
        start += n
    return out


def _spread(per_stage: list[int], chunks: int, place: Callable[[int, int], int]) -> list[int]:
    """Per-stage layer counts → per-virtual-stage counts (chunk c of stage s gets an even share)."""
    pp = len(per_stage)
    counts = [0] * (pp * chunks)
    for s, n in enumerate(per_stage):
        for c in range(chunks):
            counts[place(s, c)] = n // chunks + (1 if c < n % chunks else 0)
    return counts


@dataclass(frozen=True)
class Unit:
    """A piece of a model chunk whose parameters are gathered and reduced together (an FSDP unit): the
    embedding (``layer`` −1), one transformer layer, or the output layer (−2); parameters per rank."""

    name: str
    layer: int
    dense_params: float
    expert_params: float


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
        place = partial(self.schedule.virtual_stage, stages=d.pp)
        return stage_layers(self.ctx.model.layers, d.pp, self.chunks, self.ctx.par.pp_layers, place)

    @property
    def last_virtual(self) -> int:
        """Index of the last virtual stage (it holds the output layer)."""
        return self.ctx.dims.pp * self.chunks - 1

    @cached_property
    def _ep_overlap(self) -> bool:
        """``parallelism.moe_a2a_overlap`` on a mixture-of-experts model with all-to-alls to overlap."""
        c = self.ctx
        return c.par.moe_a2a_overlap and c.model.moe is not None and c.dims.ep > 1

    @cached_property
    def merged_pairs(self) -> bool:
        """Whether paired forwards and backwards run merged, each one's expert all-to-alls under the other's
        compute: the schedule's own pairs (DualPipeV; a schedule that merges no steady state pairs its tasks
        itself, or has none), or Megatron-Core's combined 1F1B where it exists (``combined_1f1b``)."""
        return self._ep_overlap and (not self.schedule.merges_steady_state or self.combined_1f1b)

    @cached_property
    def combined_1f1b(self) -> bool:
        """Whether the schedule runs as Megatron-Core's combined 1F1B (``pair_steady_state``): an interleaved
        schedule, or 1F1B without pipelining, with the expert-parallel overlap on (Megatron-Core has none for a
        pipelined 1F1B without virtual stages)."""
        sch = self.schedule
        return self._ep_overlap and sch.merges_steady_state and (sch.chunked or self.ctx.dims.pp == 1)

    @cached_property
    def layer_builder(self) -> LayerBuilder:
        """Kernel lists for this scenario's full-attention layers."""
        return LayerBuilder(self.ctx, self.layer_strategies)

    def layer_builder_for(self, layer: int) -> LayerBuilder:
        """Kernel lists for ``layer``: its attention window (``model.attention_window``) picks the builder."""
        window = self.ctx.model.attention_window(layer)
        if window is None:
            return self.layer_builder
        return self._windowed_builders.setdefault(window, LayerBuilder(self.ctx, self.layer_strategies, window))

    @cached_property
    def _windowed_builders(self) -> dict[int, LayerBuilder]:
        return {}

    def is_mtp(self, layer: int) -> bool:
        """Whether unit index ``layer`` is a multi-token-prediction module (indices past the decoder)."""
        return layer >= self.ctx.model.layers

    def is_moe_unit(self, layer: int) -> bool:
        """Whether ``layer``'s transformer layer has a MoE FFN (an MTP module's as the decoder's last)."""
        return self.params.mtp_moe if self.is_mtp(layer) else self.ctx.model.is_moe_layer(layer)

    def mtp_units(self, vs: int) -> list[int]:
        """Unit indices of the MTP modules on virtual stage ``vs``: all on the last one (Megatron-Core places
        the MTP block on the last pipeline stage, after the decoder)."""
        if vs != self.last_virtual:
            return []
        return [self.ctx.model.layers + k for k in range(self.ctx.model.mtp_layers)]

    def mtp_own_params(self, layer: int) -> float:
        """An MTP module's parameters outside its transformer layer held by one rank (norms, eh_proj), plus for
        the first module the last stage's copy of the embedding that the modules share, when the embedding
        lives on another stage (Megatron-Core GPTModel builds an embedding wherever ``mtp_process``)."""
        p, c = self.params, self.ctx
        own = (p.mtp_per_module - p.mtp_layer) / c.tp
        copy = layer == c.model.layers and c.dims.pp > 1
        return own + (p.embedding / c.tp if copy else 0.0)

    @property
    def dense_group(self) -> Axis:
        """Process group that reduces dense gradients (data × context parallel)."""
        return Axis.DP if self.ctx.dims.cp == 1 else Axis.DPCP

    @property
    def expert_group(self) -> Axis:
        """Process group that reduces expert gradients: the ranks holding the same experts (Megatron-Core's
        expert-data-parallel group), or the dense group when experts are not split."""
        return Axis.EDP if self.ctx.dims.ep > 1 else self.dense_group

    def layer_param_split(self, layer: int) -> tuple[float, float]:
        """(dense, routed-expert) parameters of one layer held by one rank: dense weights split over tensor
        parallelism, routed experts over expert tensor × expert parallelism."""
        if self.is_mtp(layer):
            own = self.mtp_own_params(layer)
            dense, expert = self._decoder_layer_split[self.params.mtp_moe]
            return own + dense, expert
        return self._decoder_layer_split[self.ctx.model.is_moe_layer(layer)]

    @cached_property
    def _decoder_layer_split(self) -> dict[bool, tuple[float, float]]:
        """``layer_param_split`` of a dense (False) and a MoE (True) decoder layer: every layer of a kind holds
        the same (the search's memory estimate asks for each layer of each layout)."""
        p, c = self.params, self.ctx
        split = {False: (p.dense_layer / c.tp, 0.0)}
        if c.model.moe is not None:
            experts = p.routed_experts_per_layer
            split[True] = ((p.moe_layer - experts) / c.tp, experts / (c.dims.expert_tp * c.dims.ep))
        return split

    def layer_params(self, layer: int) -> float:
        """Parameters of one layer held by one rank."""
        return sum(self.layer_param_split(layer))

    def chunk_param_split(self, vs: int) -> tuple[float, float]:
        """(dense, routed-expert) parameters of virtual stage ``vs`` held by one rank (layers, plus the
        embedding and output layers)."""
        dense = expert = 0.0
        for i in self.virtual_layers[vs] + self.mtp_units(vs):
            d, e = self.layer_param_split(i)
            dense, expert = dense + d, expert + e
        if vs == 0:
            dense += self.params.embedding / self.ctx.tp
        if vs == self.last_virtual:
            dense += (self.params.output + self.params.final_norm) / self.ctx.tp
        return dense, expert

    def chunk_params(self, vs: int) -> float:
        """Parameters of virtual stage ``vs`` held by one rank."""
        return sum(self.chunk_param_split(vs))

    def largest_unit_params(self, vs: int) -> float:
        """Parameters of the largest piece (layer, embedding or output layer) of ``vs`` held by one rank:
        what ZeRO-3 gathers at once."""
        units = [self.layer_params(i) for i in self.virtual_layers[vs] + self.mtp_units(vs)]
        if vs == 0:
            units.append(self.params.embedding / self.ctx.tp)
        if vs == self.last_virtual:
            units.append((self.params.output + self.params.final_norm) / self.ctx.tp)
        return max(units, default=0.0)

    def by_group(self, dense: float, expert: float) -> list[tuple[Axis, float]]:
        """Parameter counts per reducing group of more than one rank (one entry when experts reduce with
        the dense weights)."""
        if self.expert_group == self.dense_group:
            pairs = [(self.dense_group, dense + expert)]
        else:
            pairs = [(self.dense_group, dense), (self.expert_group, expert)]
        return [(g, n) for g, n in pairs if n > 0 and self.group_size(g) > 1]

    def group_size(self, group: Axis) -> int:
        """Members of each process group of kind ``group``."""
        return self._group_sizes[group]

    @cached_property
    def _group_sizes(self) -> dict[Axis, int]:
        return {g: int(self.plan.groups(g).shape[1]) for g in {self.dense_group, self.expert_group}}


@dataclass
class _Emitter:
    """Appends compiled steps to a program, wiring stream order, overlaps and blocking waits."""

    pb: ProgramBuilder = field(default_factory=ProgramBuilder)
    last_compute: int = -1
    joins: list[list[int]] = field(
        default_factory=list
    )  # [countdown, op] of comms the compute stream must join
    step_end: list[int] = field(default_factory=list)  # comms the optimizer waits for
    prefetched: dict[str, int] = field(default_factory=dict)  # prefetched comms not yet joined, by name
    # id(fused step) → (the step, its label): ``FusedCompute.name`` formats a string on each call, and a
    # 1T-parameter pipeline emits each compiled step for hundreds of micro-batches (the step is kept in the
    # value, so that a reused id is never mistaken for it)
    names: dict[int, tuple[FusedCompute, str]] = field(default_factory=dict)

    def compute(self, fc: FusedCompute, category: Category, mb: int, chunk: int) -> int:
        """Add a fused compute op after the previous one and any communication it must wait for."""
        joins = self.joins
        if joins:
            deps = [self.last_compute] + [op for c, op in joins if c == 0]
            self.joins = [[c - 1, op] for c, op in joins if c > 0]
        else:
            deps = [self.last_compute]
        hit = self.names.get(id(fc))
        if hit is None or hit[0] is not fc:
            hit = self.names[id(fc)] = (fc, fc.name)
        op = Compute(
            hit[1], category, fc.duration_s, fc.model_flops, fc.hw_flops, fc.bytes, mb, chunk,
            fc.comm_exposed_s, fc.comm_hidden_s, fc.segments, fc.class_s,
        )  # fmt: skip
        self.last_compute = self.pb.add(op, COMPUTE_STREAM, deps)
        return self.last_compute

    def comm(self, cs: CommStep, mb: int, chunk: int) -> int:
        """Add a collective issued after the latest compute op."""
        op = Collective(cs.name, cs.kind, cs.comm, cs.group, cs.bytes, mb, chunk)
        # issued after the latest compute op and after any receive the compute stream is blocked on
        blocking = [op_ for c, op_ in self.joins if c == 0]
        idx = self.pb.add(op, COMM_STREAM[cs.comm], [self.last_compute, *blocking])
        if cs.join_after == PREFETCH:
            assert cs.name not in self.prefetched, f"{cs.name} prefetched twice"
            self.prefetched[cs.name] = idx
        elif cs.join_after < 0:
            self.step_end.append(idx)
        else:
            self.joins.append([cs.join_after, idx])
        return idx

    def join(self, name: str) -> None:
        """The next compute op waits for the prefetched communication ``name``."""
        assert name in self.prefetched, f"join of {name}, which was not prefetched"
        self.joins.append([0, self.prefetched.pop(name)])

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
        self._fwd: dict[tuple[int, bool], tuple[CompiledStep, ...]] = {}
        self._bwd: dict[tuple[int, str], tuple[tuple[CompiledStep, ...], ...]] = {}
        self._units: dict[int, list[Unit]] = {}
        self._gathers: dict[str, tuple[CompiledStep, ...]] = {}  # the scatter-gather's all-gather, per direction
        self._programs: dict[int, Program] = {}  # stage → its program (immutable, shared by its ranks)
        # what every task of a stage asks again (a 1T-parameter pipeline has 1,024 tasks per stage): computed once
        self._names: dict[int, tuple[FusedCompute, str]] = {}  # the emitters' step labels (``_Emitter.names``)
        self._two_ways: dict[int, bool] = {}
        self._bwd_ops: dict[tuple[int, bool], tuple[tuple[CompiledStep, Category], ...]] = {}

    # ------------------------------------------------------------------ units of a chunk
    def units(self, vs: int) -> list[Unit]:
        """The pieces of virtual stage ``vs`` in forward order: embedding, layers, output layer."""
        if vs not in self._units:
            s = self.spec
            tp = s.ctx.tp
            out = [Unit("embedding", -1, s.params.embedding / tp, 0.0)] if vs == 0 else []
            out += [Unit(f"layer{i}", i, *s.layer_param_split(i)) for i in s.virtual_layers[vs]]
            out += [Unit(f"mtp{i - s.ctx.model.layers}", i, *s.layer_param_split(i)) for i in s.mtp_units(vs)]
            if vs == s.last_virtual:
                out.append(Unit("head", -2, (s.params.output + s.params.final_norm) / tp, 0.0))
            self._units[vs] = out
        return self._units[vs]

    def _unit_forward(self, u: Unit) -> list[Step]:
        s, t = self.spec, self.spec.layer_strategies.tensor
        if u.layer == -1:
            return embedding_forward(s.ctx, t)
        if u.layer == -2:
            return head_forward(s.ctx, t)
        layer = s.layer_builder_for(u.layer).forward(s.is_moe_unit(u.layer))
        if s.is_mtp(u.layer):
            return mtp_forward(s.ctx, t, layer, u.layer - s.ctx.model.layers)
        return layer

    def _unit_backward(self, u: Unit) -> tuple[list[Step], list[Step]]:
        """(recomputation, backward) of one unit."""
        s, t = self.spec, self.spec.layer_strategies.tensor
        if u.layer == -1:
            return [], embedding_backward(s.ctx, t, u.dense_params)
        if u.layer == -2:
            return [], head_backward(s.ctx, t, u.dense_params)
        moe = s.is_moe_unit(u.layer)
        lb = s.layer_builder_for(u.layer)
        re = lb.recompute(s.ctx.training.recompute, moe)
        if not s.is_mtp(u.layer):
            return re, lb.backward(u.dense_params, moe, u.expert_params)
        own = s.mtp_own_params(u.layer)
        shared = (s.params.embedding + s.params.output) / s.ctx.tp  # gradients added into the shared weights'
        layer = lb.backward(u.dense_params - own, moe, u.expert_params)
        return re, mtp_backward(s.ctx, t, layer, u.layer - s.ctx.model.layers, own, shared)

    def unit_comm(self, u: Unit, hook: str, backward: bool = False) -> list[CommStep]:
        """The data strategy's communication for a unit's parameters, per reducing group, named after the
        unit: ``prologue`` (before use), ``epilogue`` (after backward) or ``step`` (at the step start)."""
        s = self.spec
        out: list[CommStep] = []
        for group, count in s.by_group(u.dense_params, u.expert_params):
            if hook == "prologue":
                steps = s.data.layer_prologue(s.ctx, count, group, backward)
            elif hook == "epilogue":
                steps = s.data.layer_epilogue(s.ctx, count, group)
            else:
                steps = s.data.step_prologue(s.ctx, count, group)
            prefix = "expert_" if group == Axis.EDP else ""
            for cs in steps:
                assert isinstance(cs, CommStep)
                out.append(replace(cs, name=f"{prefix}{cs.name}.{u.name}"))
        return out

    def _prologues(self, units: list[Unit], backward: bool) -> list[list[Step]]:
        """Steps before each unit's compute: ZeRO-3's parameter gathers, each blocking, or (with
        ``param_gather_overlap``) issued one unit ahead and joined where the unit starts (FSDP prefetch)."""
        gathers = [self.unit_comm(u, "prologue", backward) for u in units]
        if not self.spec.ctx.par.param_gather_overlap:
            return [list(g) for g in gathers]
        out: list[list[Step]] = []
        for i, own in enumerate(gathers):
            head: list[Step] = list(own) if i == 0 else [Join(c.name) for c in own]
            ahead = gathers[i + 1] if i + 1 < len(gathers) else []
            out.append(head + [replace(c, join_after=PREFETCH) for c in ahead])
        return out

    @cached_property
    def _gathers_at_start(self) -> bool:
        """Whether the data strategy issues parameter gathers at the step start."""
        return any(self.unit_comm(u, "step") for u in self.units(0))

    # ------------------------------------------------------------------ compiled chunks
    def forward_steps(self, vs: int, first: bool = False) -> tuple[CompiledStep, ...]:
        """Compiled forward pass of virtual stage ``vs``; ``first``: the step's first micro-batch, which
        waits for the parameter gathers issued at the step start."""
        first = first and self._gathers_at_start
        if (vs, first) not in self._fwd:
            units = self.units(vs)
            steps: list[Step] = []
            for u, pre in zip(units, self._prologues(units, False), strict=True):
                if first:
                    steps += [Join(c.name) for c in self.unit_comm(u, "step")]
                steps += pre + self._unit_forward(u)
            self._fwd[(vs, first)] = compile_steps(steps, False, self.inline)
        return self._fwd[(vs, first)]

    def backward_steps(self, vs: int, part: str = "BW") -> tuple[tuple[CompiledStep, ...], ...]:
        """Compiled backward pass of ``vs`` as (recompute, backward) segments per unit, head first.
        ``part``: ``BW`` the whole backward, ``B`` input gradients only, ``W`` weight gradients only (the
        zero-bubble split; W carries the gradient markers and ZeRO-3's gradient reduce-scatters)."""
        if (vs, part) not in self._bwd:
            units = self.units(vs)[::-1]
            pre = self._prologues(units, True) if part != "W" else [[] for _ in units]
            segs: list[tuple[CompiledStep, ...]] = []
            for u, head in zip(units, pre, strict=True):
                re, bw = self._unit_backward(u)
                if part != "BW":
                    b, w = split_weight_gradients(bw)
                    re, bw = (re, b) if part == "B" else ([], w)
                if part != "B":
                    bw = bw + list(self.unit_comm(u, "epilogue"))
                if re:
                    segs.append(compile_steps(head + re, False, self.inline))
                    head = []
                segs.append(compile_steps(head + bw, True, self.inline))
            self._bwd[(vs, part)] = tuple(segs)
        return self._bwd[(vs, part)]

    # ------------------------------------------------------------------ program
    def build(self, rank: int) -> Program:
        """The program of ``rank`` for one optimizer step. It depends on the rank only through its pipeline
        stage (every rank of a stage runs the same ops; what differs is where its groups sit, which the
        engine resolves), so it is built once per stage and shared: ``--full`` on 1,024 ranks of 8 stages
        builds 8 programs, not 1,024 (issue #11)."""
        stage = int(self.spec.plan.coords["pp"][rank])
        prog = self._programs.get(stage)
        if prog is None:
            prog = self._programs[stage] = self._build_stage(stage)
        return prog

    def _build_stage(self, stage: int) -> Program:
        s = self.spec
        em = _Emitter(names=self._names)
        grads = _GradBuckets(s, em)
        self._step_prologue(em, stage)
        tasks = s.schedule.tasks(stage, s.ctx.dims.pp, s.micro_batches, s.chunks)
        if s.combined_1f1b:
            tasks = pair_steady_state(tasks)
        early = -1  # index of a backward whose gradient receive its pair's forward already waited for
        for i, task in enumerate(tasks):
            vs = s.schedule.virtual_stage(stage, task.chunk, s.ctx.dims.pp)
            if i == early and s.merged_pairs:
                continue  # run merged with its forward
            if task.kind is Pass.F:
                if task.paired:  # an F&B pair (DualPipe) starts once both its inputs are in
                    early = i + 1
                    self._backward_recv(em, tasks[early], stage)
                    if s.merged_pairs:
                        b = tasks[early]
                        self._pair(em, task, vs, b, s.schedule.virtual_stage(stage, b.chunk, s.ctx.dims.pp), stage,
                                   grads)  # fmt: skip
                        continue
                self._forward(em, task, vs, stage)
            elif task.kind is Pass.W:
                self._weight_gradients(em, task, vs, grads)
            else:
                self._backward(em, task, vs, stage, grads, recv=i != early)
        grads.flush_all()
        self._optimizer(em, stage)
        return em.pb.build()

    @cached_property
    def _p2p_bytes(self) -> float:
        """Bytes one rank sends to the next stage per micro-batch: the activation, split over TP ranks
        when Megatron's scatter-gather optimisation is on or sequence parallelism shards it anyway."""
        c = self.spec.ctx
        full = float(c.tokens * c.model.hidden * c.e)
        split = c.par.sequence_parallel or (c.par.pp_scatter_gather and c.tp > 1)
        return full / c.tp if split else full

    def _p2p(self, kind: str, task: Task, vs_peer: int, vs_to: int, stage: int, is_send: bool) -> SendRecv:
        """One side of the transfer of ``kind`` ("act" or "grad") to virtual stage ``vs_to``; a send and its
        receive share the tag (kind, micro-batch, destination virtual stage)."""
        off = self.spec.schedule.stage_of(vs_peer, self.spec.ctx.dims.pp) - stage
        name = f"{'send' if is_send else 'recv'}_{kind}"
        tag = (kind, task.mb, vs_to)
        return SendRecv(name, is_send, CommKind.PP, Axis.PP, off, self._p2p_bytes, tag, task.mb, task.chunk)

    def _recv(self, em: _Emitter, kind: str, task: Task, vs_from: int, stage: int) -> None:
        vs_to = vs_from + (1 if kind == "act" else -1)
        stream = "pp-recv-fwd" if kind == "act" else "pp-recv-bwd"
        em.p2p(self._p2p(kind, task, vs_from, vs_to, stage, is_send=False), stream, blocking=True)
        c = self.spec.ctx
        if c.tp > 1 and c.par.pp_scatter_gather and not c.par.sequence_parallel:
            # Megatron's scatter-gather: each TP rank received 1/tp of the activation; gather it over NVLink
            # (the same compiled step for every receive of one direction: compiled once)
            if kind not in self._gathers:
                gather = CommStep(
                    f"{kind}_allgather", CollectiveKind.ALL_GATHER, CommKind.TP, Axis.TP, self._p2p_bytes * c.tp
                )
                self._gathers[kind] = compile_steps([gather], False, self.inline)
            cat = Category.FORWARD if kind == "act" else Category.BACKWARD
            self._emit(em, self._gathers[kind], cat, task, None)

    def _send(self, em: _Emitter, kind: str, task: Task, vs_to: int, stage: int) -> None:
        stream = "pp-send-fwd" if kind == "act" else "pp-send-bwd"
        if self._two_way(stage) and (self.spec.schedule.stage_of(vs_to, self.spec.ctx.dims.pp) < stage) == (
            kind == "act"
        ):
            stream += "-rev"
        # Sends are asynchronous (torch isend): the compute stream goes on, the send stream waits for the
        # matching receive. Blocking sends would deadlock interleaved schedules, where Megatron batches each
        # send with the next receives instead.
        em.p2p(self._p2p(kind, task, vs_to, vs_to, stage, is_send=True), stream, blocking=False)

    def _emit(self, em: _Emitter, steps: tuple[CompiledStep, ...], cat: Category, task: Task,
              grads: _GradBuckets | None) -> None:  # fmt: skip
        for st in steps:
            kind = type(st)  # the compiled step types are final (slotted dataclasses): no isinstance chain
            if kind is FusedCompute:
                em.compute(st, cat, task.mb, task.chunk)  # type: ignore[arg-type]
            elif kind is CommStep:
                em.comm(st, task.mb, task.chunk)  # type: ignore[arg-type]
            elif kind is Join:
                em.join(st.name)  # type: ignore[union-attr]
            elif grads is not None:
                grads.ready(st, task)

    def _step_prologue(self, em: _Emitter, stage: int) -> None:
        """Communication issued when the step starts, before any compute: the distributed optimizer's
        overlapped parameter gathers, joined by each unit's first forward."""
        s = self.spec
        for chunk in range(s.chunks):
            for u in self.units(s.schedule.virtual_stage(stage, chunk, s.ctx.dims.pp)):
                for cs in self.unit_comm(u, "step"):
                    em.comm(cs, -1, chunk)

    def _two_way(self, stage: int) -> bool:
        """Whether ``stage`` sends activations both down and up the ranks, as the middle ranks of a V
        placement (DualPipeV) do. Sends to different peers do not queue behind each other (the reference
        posts them together in one ``batch_isend_irecv``), so each direction then gets its own send stream:
        one stream for both would hold a send to the next rank behind one waiting for the previous rank's
        receive. Every other placement sends each kind one way per rank and keeps its one stream."""
        two_way = self._two_ways.get(stage)
        if two_way is None:
            s = self.spec
            pp = s.ctx.dims.pp
            steps = {
                s.schedule.stage_of(vs + 1, pp) - stage
                for vs in (s.schedule.virtual_stage(stage, c, pp) for c in range(s.chunks))
                if vs < s.last_virtual
            }
            two_way = self._two_ways[stage] = any(d > 0 for d in steps) and any(d < 0 for d in steps)
        return two_way

    def _remote(self, vs_peer: int, stage: int) -> bool:
        """Whether ``vs_peer`` sits on another stage. In a V placement (DualPipeV) the turn of the V is one
        rank's two chunks, and the reference hands the activation and its gradient over in memory
        (deepseek-ai/DualPipe ``dualpipev.py``: ``input_chunks[1].append(...)`` on the last rank)."""
        return self.spec.schedule.stage_of(vs_peer, self.spec.ctx.dims.pp) != stage

    def _forward(self, em: _Emitter, task: Task, vs: int, stage: int) -> None:
        if vs > 0 and self._remote(vs - 1, stage):
            self._recv(em, "act", task, vs - 1, stage)
        self._emit(em, self.forward_steps(vs, first=task.mb == 0), Category.FORWARD, task, None)
        if vs < self.spec.last_virtual and self._remote(vs + 1, stage):
            self._send(em, "act", task, vs + 1, stage)

    def _backward_recv(self, em: _Emitter, task: Task, stage: int) -> None:
        """The receive of ``task``'s output gradient (none on the last virtual stage or from this stage)."""
        vs = self.spec.schedule.virtual_stage(stage, task.chunk, self.spec.ctx.dims.pp)
        if vs < self.spec.last_virtual and self._remote(vs + 1, stage):
            self._recv(em, "grad", task, vs + 1, stage)

    def _backward(self, em: _Emitter, task: Task, vs: int, stage: int, grads: _GradBuckets,
                  recv: bool = True) -> None:  # fmt: skip
        if recv:
            self._backward_recv(em, task, stage)
        g = grads if self._last_backward(task) else None
        mb, chunk = task.mb, task.chunk
        for st, cat in self._backward_ops(task, vs):
            if type(st) is FusedCompute:  # most steps: straight to the emitter
                em.compute(st, cat, mb, chunk)
            else:
                self._emit(em, (st,), cat, task, g)
        self._backward_end(em, task, vs, stage, grads)

    def _split(self, task: Task) -> bool:
        """Whether ``task`` computes input gradients only (Pass.BW: a whole backward in a schedule that splits
        the others, DualPipeV)."""
        return self.spec.schedule.splits_backward and task.kind is not Pass.BW

    def _last_backward(self, task: Task) -> bool:
        """Whether ``task`` is the last micro-batch's whole backward, which reduces the gradients."""
        return task.mb == self.spec.micro_batches - 1 and not self._split(task)

    def _backward_ops(self, task: Task, vs: int) -> tuple[tuple[CompiledStep, Category], ...]:
        """The compiled steps of ``task``'s backward with their categories (the same for every micro-batch of
        ``vs``: computed once per virtual stage and kind)."""
        split = self._split(task)
        out = self._bwd_ops.get((vs, split))
        if out is None:
            kind = Category.BACKWARD_INPUT if split else Category.BACKWARD
            ops: list[tuple[CompiledStep, Category]] = []
            for seg in self.backward_steps(vs, "B" if split else "BW"):
                cat = Category.RECOMPUTE if seg and _is_recompute(seg) else kind
                ops += [(st, cat) for st in seg]
            out = self._bwd_ops[(vs, split)] = tuple(ops)
        return out

    def _backward_end(self, em: _Emitter, task: Task, vs: int, stage: int, grads: _GradBuckets) -> None:
        if self._last_backward(task):
            grads.chunk_done()
        if vs > 0 and self._remote(vs - 1, stage):
            self._send(em, "grad", task, vs - 1, stage)

    def _pair(self, em: _Emitter, f: Task, vs_f: int, b: Task, vs_b: int, stage: int,
              grads: _GradBuckets) -> None:  # fmt: skip
        """A forward and a backward merged (Megatron-Core's combined 1F1B, DualPipe's overlapped chunk pair):
        their compute alternates at each expert-parallel communication, which runs on the EP stream under the
        other pass's next compute and is waited for just before its own pass goes on (Megatron-LM
        ``combined_1f1b.py`` schedules the forward's dispatch under the backward's MLP and so on; DeepSeek-AI
        2024, arXiv 2412.19437 Sec. 3.2.1, Fig. 4). Both inputs are in (``_build_stage``)."""
        if vs_f > 0 and self._remote(vs_f - 1, stage):
            self._recv(em, "act", f, vs_f - 1, stage)
        last_mb = self._last_backward(b)
        sides = {
            "F": (f, _ep_blocks([(st, Category.FORWARD) for st in self.forward_steps(vs_f, first=f.mb == 0)]), None),
            "B": (b, _ep_blocks(self._backward_ops(b, vs_b)), grads if last_mb else None),
        }  # fmt: skip
        waiting: dict[str, list[str]] = {"F": [], "B": []}
        for n in range(max(len(sides["F"][1]), len(sides["B"][1]))):
            for side, (task, blocks, g) in sides.items():
                if n >= len(blocks):
                    continue
                for name in waiting[side]:  # its own previous communication, before it goes on
                    em.join(name)
                waiting[side] = []
                compute, comms = blocks[n]
                for st, cat in compute:
                    self._emit(em, (st,), cat, task, g)
                for k, cs in enumerate(comms):
                    name = f"{cs.name}@{side}{task.mb}.{task.chunk}.{n}.{k}"
                    em.comm(replace(cs, name=name, join_after=PREFETCH), task.mb, task.chunk)
                    waiting[side].append(name)
        for names in waiting.values():
            for name in names:
                em.join(name)
        if vs_f < self.spec.last_virtual and self._remote(vs_f + 1, stage):
            self._send(em, "act", f, vs_f + 1, stage)
        self._backward_end(em, b, vs_b, stage, grads)

    def _weight_gradients(self, em: _Emitter, task: Task, vs: int, grads: _GradBuckets) -> None:
        """A zero-bubble W pass: the chunk's weight-gradient GEMMs for one micro-batch."""
        last_mb = task.mb == self.spec.micro_batches - 1
        for seg in self.backward_steps(vs, "W"):
            self._emit(em, seg, Category.BACKWARD_WEIGHT, task, grads if last_mb else None)
        if last_mb:
            grads.chunk_done()

    def _optimizer(self, em: _Emitter, stage: int) -> None:
        s = self.spec
        dense = expert = 0.0
        for c in range(s.chunks):
            d, e = s.chunk_param_split(s.schedule.virtual_stage(stage, c, s.ctx.dims.pp))
            dense, expert = dense + d, expert + e
        groups = s.by_group(dense, expert)
        sharded = sum(n / s.data.optimizer_shard(s.ctx, s.group_size(g)) for g, n in groups)
        updated = dense + expert - sum(n for _, n in groups) + sharded  # unsharded groups update everything
        t = s.ctx.compute.elementwise(updated * ADAM_BYTES_PER_PARAM, kind=KernelClass.OPTIMIZER)
        fc = FusedCompute(("optimizer",), t.duration_s, 0.0, 0.0, t.bytes, 1, class_s=t.class_s)
        em.joins += [[0, op] for op in em.step_end]
        em.compute(fc, Category.OPTIMIZER, -1, 0)
        for group, count in groups:
            for cs in s.data.after_optimizer(s.ctx, count, group):
                assert isinstance(cs, CommStep)
                em.comm(replace(cs, name=f"expert_{cs.name}") if group == Axis.EDP else cs, -1, 0)


def _ep_blocks(
    ops: list[tuple[CompiledStep, Category]] | tuple[tuple[CompiledStep, Category], ...],
) -> list[tuple[list[tuple[CompiledStep, Category]], list[CommStep]]]:
    """``ops`` cut after each run of blocking expert-parallel communication: (steps before it, the run)."""
    blocks: list[tuple[list[tuple[CompiledStep, Category]], list[CommStep]]] = []
    compute: list[tuple[CompiledStep, Category]] = []
    comms: list[CommStep] = []
    for st, cat in ops:
        if isinstance(st, CommStep) and st.comm is CommKind.EP and st.join_after == 0:
            comms.append(st)
            continue
        if comms:
            blocks.append((compute, comms))
            compute, comms = [], []
        compute.append((st, cat))
    blocks.append((compute, comms))
    return blocks


def _is_recompute(seg: tuple[CompiledStep, ...]) -> bool:
    first = next((x for x in seg if isinstance(x, FusedCompute) and x.names), None)
    return first is not None and first.names[0].startswith("re.")


class _GradBuckets:
    """Gradient reduction of the last micro-batch: buckets overlapped with backward, or one reduction at
    the end when ``dp_overlap`` is off. Dense and expert gradients fill buckets of their own groups."""

    def __init__(self, spec: WorkloadSpec, em: _Emitter) -> None:
        self.spec, self.em = spec, em
        groups = {spec.dense_group, spec.expert_group}
        self.pending = dict.fromkeys(groups, 0.0)
        self.total = dict.fromkeys(groups, 0.0)
        self.bucket_params = spec.ctx.par.grad_bucket_mb * 1e6 / grad_element_bytes(spec.ctx)
        self.active = {g: spec.plan.groups(g).shape[1] > 1 for g in groups}

    def ready(self, marker: CompiledStep, task: Task) -> None:
        """Gradients of ``marker.param_count`` dense and ``marker.expert_param_count`` expert parameters
        are complete."""
        assert isinstance(marker, GradReady)
        s = self.spec
        for group, count in (
            (s.dense_group, marker.param_count),
            (s.expert_group, marker.expert_param_count),
        ):
            if not self.active[group] or count <= 0:
                continue
            if not s.ctx.par.dp_overlap:
                self.total[group] += count
                continue
            self.pending[group] += count
            if self.pending[group] >= self.bucket_params:
                self._emit(group, self.pending[group], task)
                self.pending[group] = 0.0

    def chunk_done(self) -> None:
        """The last micro-batch of a chunk finished its backward: reduce what is left of it."""
        for group in sorted(self.pending):
            if self.pending[group] > 0:
                self._emit(group, self.pending[group], Task(Pass.B, self.spec.micro_batches - 1))
                self.pending[group] = 0.0

    def flush_all(self) -> None:
        """Without overlap, reduce every gradient once the backward pass is over."""
        for group in sorted(self.total):
            if self.total[group] > 0:
                self._emit(group, self.total[group], Task(Pass.B, -1))
                self.total[group] = 0.0

    def _emit(self, group: Axis, count: float, task: Task) -> None:
        for cs in self.spec.data.gradient_steps(self.spec.ctx, count, group, final=False):
            assert isinstance(cs, CommStep)
            self.em.comm(replace(cs, name=f"expert_{cs.name}") if group == Axis.EDP else cs, task.mb, task.chunk)
