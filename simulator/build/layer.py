"""The kernels of one transformer layer on one rank, as Megatron-LM runs them, with the strategies'
communication inserted at the block boundaries.

Kernel list per layer (Megatron GPT; Shoeybi 2019, Korthikanti 2022 Sec. 4): input norm, QKV GEMM,
attention core (fused flash attention, or QKᵀ batched GEMM + fused scale/mask/softmax + dropout + AV batched
GEMM), output projection, bias-dropout-add, norm, FC1, activation, FC2, bias-dropout-add. Backward: each GEMM
becomes an input-gradient and a weight-gradient GEMM; element-wise kernels read one more tensor than they
wrote (their saved input and the incoming gradient).

Mixture-of-experts layers (``model.is_moe_layer``) replace the MLP by Megatron-Core's MoE block: router
GEMM and top-k, permute, dispatch all-to-all over the expert-parallel group, grouped expert GEMMs, combine
all-to-all, unpermute, plus the shared experts (Megatron-Core ``MoELayer`` with the all-to-all dispatcher).

Weight-gradient GEMMs are named ``*_wgrad`` (and only they: the attention core's gradients of K and V are
``*_kgrad``/``*_vgrad``), so that zero-bubble schedules can run them as separate W passes.

Element-wise byte counts use the activation element size ``e`` and count every tensor read or written once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

from simulator.build.memory import recomputed_modules
from simulator.frameworks.profile import OpKernels
from simulator.hardware.compute import ComputeModel, KernelTime
from simulator.parallel.strategies.base import BuildContext, ContextStrategy, ExpertStrategy, TensorStrategy
from simulator.parallel.strategies.data import grad_element_bytes
from simulator.workload.ops import Axis, CollectiveKind, CommKind
from simulator.workload.steps import CommStep, GradReady, KernelStep, Step


class _MoEShape(NamedTuple):
    """Per-rank sizes of a MoE block."""

    local: int  # experts on this rank
    routed: float  # token copies its experts process (most loaded rank)
    per_expert: int  # tokens per local expert
    fc1: int  # expert FC1 width on this rank
    fc2: int  # expert FC2 input width on this rank
    sent: int  # token copies this rank dispatches (T·k)


@dataclass(frozen=True)
class LayerStrategies:
    """The strategies the layer builder consults."""

    tensor: TensorStrategy
    context: ContextStrategy
    expert: ExpertStrategy | None = None  # needed by mixture-of-experts layers only


# Transformer Engine's LayerNormLinear (Megatron-Core's QKV and FC1 with TE) emits the normalised input in FP8
# from the norm kernel itself; the other linear layers receive 16-bit inputs and cast them in a kernel of their
# own (TE ``cast_transpose``). Megatron-Core TE spec: TELayerNormColumnParallelLinear for linear_qkv/linear_fc1.
_NORM_FUSED_FP8 = frozenset({"qkv", "fc1", "shared_fc1"})


def _plus(a: KernelTime, b: KernelTime) -> KernelTime:
    """Two kernels run back to back, reported as one step (the second's launch, bytes and seconds per kernel
    class included: a GEMM with its FP8 cast counts the cast as ``fp8_cast``)."""
    return a.plus(b)


def _k(name: str, t: KernelTime, counts: bool = True) -> KernelStep:
    return KernelStep(name, t, t.flops if counts else 0.0)


class LayerBuilder:
    """Builds the forward, backward and recompute steps of the layers of one scenario on one rank."""

    def __init__(self, ctx: BuildContext, strategies: LayerStrategies) -> None:
        self.ctx = ctx
        self.s = strategies
        self.cm: ComputeModel = ctx.compute
        m, tp = ctx.model, ctx.tp
        self.T = ctx.tokens  # tokens of a micro-batch on this rank
        self.Tn = strategies.tensor.norm_tokens(ctx)  # tokens the norms/dropout see
        self.h = m.hidden
        self.q = m.q_hidden // tp
        self.kv = max(m.kv_hidden // tp, m.d_head)  # KV heads are replicated when tp > kv_heads
        self.heads = m.heads // tp
        self.e = ctx.e

    # ------------------------------------------------------------------ attention core
    def _core_flops(self) -> float:
        """Forward FLOPs of QKᵀ and AV on this rank, without causal savings (2 GEMMs × 2·s_q·s_k·d)."""
        c = self.ctx
        s_q = c.training.seq_len // c.dims.cp
        s_k = c.training.seq_len
        return 4.0 * c.training.micro_batch * self.heads * s_q * s_k * c.model.d_head

    def attention_core_forward(self) -> list[Step]:
        """Attention scores, softmax and weighted sum, fused or not."""
        c, cm = self.ctx, self.cm
        b, s, d, a = c.training.micro_batch, c.training.seq_len, c.model.d_head, self.heads
        if c.training.flash_attention:
            # causal flash attention skips the masked half of the blocks (Dao 2023, FlashAttention-2)
            flops = self._core_flops() / 2
            io = self.e * self.T * (2 * self.q + 2 * self.kv)
            seq_k, head_dim, causal = self._attention_shape()
            t = cm.flash_attention(flops, io, False, seq_k=seq_k, head_dim=head_dim, causal=causal)
            core: list[Step] = [KernelStep("flash_attn", t, t.flops)]
        else:
            scores = b * a * s * s
            core = [
                _k("attn_qk", cm.gemm(s, s, d, batch=b * a, linear=False)),
                _k("softmax", cm.elementwise(2 * self.e * scores)),  # fused scale+mask+softmax: read, write
                _k("attn_dropout", cm.elementwise((2 * self.e + 1) * scores)),  # read, write, 1-byte mask
                _k("attn_av", cm.gemm(s, d, s, batch=b * a, linear=False)),
            ]
        return self.s.context.attention_forward(c, core, self._kv_bytes())

    def attention_core_backward(self) -> list[Step]:
        """Backward of the attention core."""
        c, cm = self.ctx, self.cm
        b, s, d, a = c.training.micro_batch, c.training.seq_len, c.model.d_head, self.heads
        if c.training.flash_attention:
            # FlashAttention-2 backward: 5 GEMMs vs 2 forward (recomputes QKᵀ): 2.5× forward FLOPs;
            # the model needs 2× forward (Dao 2023, Sec. 3.2)
            fwd = self._core_flops() / 2
            io = self.e * self.T * (4 * self.q + 4 * self.kv)
            seq_k, head_dim, causal = self._attention_shape()
            t = cm.flash_attention(2.5 * fwd, io, True, seq_k=seq_k, head_dim=head_dim, causal=causal)
            core: list[Step] = [KernelStep("flash_attn_bwd", t, 2.0 * fwd)]
        else:
            scores = b * a * s * s
            core = [
                _k("attn_av_dgrad", cm.gemm(s, s, d, batch=b * a, linear=False)),  # dP = dO·Vᵀ
                _k("attn_av_vgrad", cm.gemm(s, d, s, batch=b * a, linear=False)),  # dV = Pᵀ·dO (an activation gradient)
                _k("attn_dropout_bwd", cm.elementwise((2 * self.e + 1) * scores)),
                _k("softmax_bwd", cm.elementwise(3 * self.e * scores)),  # read y, dy; write dx
                _k("attn_qk_dgrad", cm.gemm(s, d, s, batch=b * a, linear=False)),  # dQ = dS·K
                _k("attn_qk_kgrad", cm.gemm(s, d, s, batch=b * a, linear=False)),  # dK = dSᵀ·Q (an activation gradient)
            ]
        return self.s.context.attention_backward(c, core, self._kv_bytes())

    def _attention_shape(self) -> tuple[float, int, bool]:
        """What sets a fused kernel's efficiency: (keys per query tile, head dim, causal masking). Ring attention runs
        one kernel per K/V block of the load-balanced (zig-zag) split: 2·cp chunks of s/(2·cp), each step a
        chunk pair, mostly unmasked; all-gather CP and no CP run one causal kernel over the whole sequence."""
        c = self.ctx
        s, cp = c.training.seq_len, c.dims.cp
        if cp > 1 and c.par.cp_algorithm == "ring":
            return s / (2 * cp), c.model.d_head, False
        return float(s), c.model.d_head, True

    def _kv_bytes(self) -> float:
        """Bytes of this rank's K and V for one micro-batch (what ring attention passes around)."""
        return 2.0 * self.T * self.kv * self.e

    # ------------------------------------------------------------------ dense blocks
    def _fused(self, ops: OpKernels, fused_bytes: float, backward: bool) -> KernelTime:
        """An element-wise op as the framework runs it: its kernels moving ``traffic`` × the bytes of the one
        fused kernel that the op needs at least (``frameworks/profiles/``)."""
        if backward:
            return self.cm.elementwise(fused_bytes * ops.backward_traffic, kernels=ops.backward_kernels)
        return self.cm.elementwise(fused_bytes * ops.traffic, kernels=ops.kernels)

    def _norm(self, name: str, backward: bool = False) -> KernelStep:
        n = self.Tn * self.h * self.e
        return _k(name, self._fused(self.ctx.framework.norm, (3 if backward else 2) * n, backward))

    def _rotary(self, name: str, backward: bool = False) -> list[Step]:
        """Rotary position embedding of this rank's Q and K (read and write each; Su et al. 2021), where the
        framework's model family uses it."""
        ops, model = self.ctx.framework.rotary, self.ctx.model
        # not stated: the gated-MLP families (Llama, Mistral, Qwen) use RoPE, GPT-style ones learned positions
        rope = model.position_embedding == "rope" or (model.position_embedding is None and model.gated_mlp)
        if ops is None or not rope:
            return []
        return [_k(name, self._fused(ops, 2 * self.e * self.T * (self.q + self.kv), backward))]

    def _dropout_add(self, name: str, backward: bool = False) -> KernelStep:
        # fused bias-dropout-add: read x and residual, write out and a 1-byte mask; backward reads dy and mask
        n = self.Tn * self.h
        return _k(name, self.cm.elementwise(((2 * self.e + 1) if backward else (3 * self.e + 1)) * n))

    def _linear(self, name: str, n_out: int, k_in: int) -> KernelStep:
        t = self.cm.gemm(self.T, n_out, k_in)
        if self.cm.fp8 and name not in _NORM_FUSED_FP8:  # the input arrives 16-bit: cast_transpose it
            t = _plus(t, self.cm.fp8_cast(self.T * k_in, transpose=True))
        return _k(name, t)

    def _linear_backward(self, name: str, n_out: int, k_in: int) -> tuple[KernelStep, KernelStep]:
        """Input-gradient GEMM [T, n]·[n, k] and weight-gradient GEMM [k, T]·[T, n]; under FP8 the incoming
        gradient is cast (with its transpose for the weight gradient) before them, and an input that a fused
        norm emitted as FP8 without its transpose is transposed for the weight gradient."""
        dgrad, wgrad = self.cm.gemm(self.T, k_in, n_out), self.cm.gemm(k_in, n_out, self.T)
        if self.cm.fp8:
            dgrad = _plus(dgrad, self.cm.fp8_cast(self.T * n_out, transpose=True))
            if name in _NORM_FUSED_FP8:  # FP8 transpose of the saved input: read 1 byte, write 1 byte
                wgrad = _plus(wgrad, self.cm.elementwise(2.0 * self.T * k_in))
        return _k(f"{name}_dgrad", dgrad), _k(f"{name}_wgrad", wgrad)

    def _row_parallel(self, name: str, n_out: int, k_in: int, tag: str) -> list[Step]:
        """A row-parallel GEMM and its output communication (placed under the GEMM when overlapped)."""
        comm = self.s.tensor.block_output_forward(self.ctx, tag)
        gemm = self._linear(name, n_out, k_in)
        return [*comm, gemm] if self.s.tensor.output_overlapped(self.ctx) else [gemm, *comm]

    def attention_block_forward(self) -> list[Step]:
        """Norm → QKV → core → projection → dropout-add, with TP/SP communication."""
        t = self.s.tensor
        return [
            self._norm("attn_norm"),
            *t.block_input_forward(self.ctx, "attn"),
            self._linear("qkv", self.q + 2 * self.kv, self.h),
            *self._rotary("rotary"),
            *self.attention_core_forward(),
            *self._row_parallel("attn_proj", self.h, self.q, "attn"),
            self._dropout_add("attn_dropout_add"),
        ]

    def attention_block_backward(self) -> list[Step]:
        """Reverse of ``attention_block_forward``."""
        t, c = self.s.tensor, self.ctx
        proj_d, proj_w = self._linear_backward("attn_proj", self.h, self.q)
        qkv_d, qkv_w = self._linear_backward("qkv", self.q + 2 * self.kv, self.h)
        return [
            self._dropout_add("attn_dropout_add_bwd", backward=True),
            *t.block_output_backward(c, "attn"),
            proj_d,
            proj_w,
            *self.attention_core_backward(),
            *self._rotary("rotary_bwd", backward=True),
            *t.block_input_backward_pre(c, "attn"),
            qkv_d,
            *t.block_input_backward_post(c, "attn"),
            qkv_w,
            self._norm("attn_norm_bwd", backward=True),
        ]

    def _ffn_width(self, ffn: int, tp: int | None = None) -> tuple[int, int]:
        """(FC1 output width, FC2 input width) on this rank, split over ``tp`` ranks (default: the tensor-parallel
        degree); a gated MLP has two FC1 matrices."""
        per_rank = ffn // (tp or self.ctx.tp)
        return (2 * per_rank if self.ctx.model.gated_mlp else per_rank), per_rank

    def _activation(self, name: str, fc1: int, fc2: int, backward: bool, tokens: float = 0.0) -> KernelStep:
        # GeLU(+bias) reads FC1's output and writes FC2's input; SwiGLU reads both halves. Backward reads
        # the saved input and the incoming gradient and writes the input gradient.
        n = (tokens or self.T) * (fc1 + fc2 + (fc1 if backward else 0))
        return _k(name, self._fused(self.ctx.framework.activation, self.e * n, backward))

    def mlp_block_forward(self) -> list[Step]:
        """Norm → FC1 → activation → FC2 → dropout-add."""
        t = self.s.tensor
        fc1, fc2 = self._ffn_width(self.ctx.model.ffn_hidden)
        return [
            self._norm("mlp_norm"),
            *t.block_input_forward(self.ctx, "mlp"),
            self._linear("fc1", fc1, self.h),
            self._activation("activation", fc1, fc2, False),
            *self._row_parallel("fc2", self.h, fc2, "mlp"),
            self._dropout_add("mlp_dropout_add"),
        ]

    def mlp_block_backward(self) -> list[Step]:
        """Reverse of ``mlp_block_forward``."""
        t, c = self.s.tensor, self.ctx
        fc1, fc2 = self._ffn_width(c.model.ffn_hidden)
        fc2_d, fc2_w = self._linear_backward("fc2", self.h, fc2)
        fc1_d, fc1_w = self._linear_backward("fc1", fc1, self.h)
        return [
            self._dropout_add("mlp_dropout_add_bwd", backward=True),
            *t.block_output_backward(c, "mlp"),
            fc2_d,
            fc2_w,
            self._activation("activation_bwd", fc1, fc2, True),
            *t.block_input_backward_pre(c, "mlp"),
            fc1_d,
            *t.block_input_backward_post(c, "mlp"),
            fc1_w,
            self._norm("mlp_norm_bwd", backward=True),
        ]

    # ------------------------------------------------------------------ mixture of experts
    def _experts(self) -> ExpertStrategy:
        assert self.s.expert is not None, "a mixture-of-experts layer needs an expert strategy"
        return self.s.expert

    def _moe_shape(self) -> _MoEShape:
        """This rank's share of the MoE block: the rank's T·k token copies under uniform routing, times the
        load factor of the most loaded rank."""
        c = self.ctx
        moe = c.model.moe
        assert moe is not None
        local = moe.experts // c.dims.ep
        routed = c.moe_tokens * moe.top_k * c.expert_load_factor
        fc1, fc2 = self._ffn_width(c.model.expert_ffn, c.dims.expert_tp)
        return _MoEShape(local, routed, math.ceil(routed / local), fc1, fc2, c.moe_tokens * moe.top_k)

    def _expert_gemm(self, name: str, tokens: int, n_out: int, k_in: int, local: int) -> KernelStep:
        """The GEMMs of every local expert, timed on the GPU as one grouped GEMM (TE GroupedLinear spreads
        the experts' GEMMs over 4 streams, so they fill the SMs together); launched as the framework does:
        one cuBLASLt GEMM per expert (``per_expert``, TE 2.9) or one grouped kernel. Under FP8 the permuted
        input arrives 16-bit and is quantised first, one tensor per expert (``split_quantize``)."""
        t = self.cm.gemm(tokens, n_out, k_in, batch=local)
        if self.ctx.framework.moe.grouped_gemm == "per_expert":
            t = replace(t, launch_s=t.launch_s * local)
        if self.cm.fp8:
            t = _plus(t, self.cm.fp8_cast(tokens * local * k_in, transpose=True, tensors=local))
        return _k(name, t)

    def _shared_forward(self) -> list[Step]:
        moe = self.ctx.model.moe
        assert moe is not None
        if not moe.shared_experts:
            return []
        fc1, fc2 = self._ffn_width(moe.shared_experts * self.ctx.model.expert_ffn)
        return [
            self._linear("shared_fc1", fc1, self.h),
            self._activation("shared_activation", fc1, fc2, False),
            self._linear("shared_fc2", self.h, fc2),
        ]

    def _shared_backward(self) -> list[Step]:
        moe = self.ctx.model.moe
        assert moe is not None
        if not moe.shared_experts:
            return []
        fc1, fc2 = self._ffn_width(moe.shared_experts * self.ctx.model.expert_ffn)
        return [
            *self._linear_backward("shared_fc2", self.h, fc2),
            self._activation("shared_activation_bwd", fc1, fc2, True),
            *self._linear_backward("shared_fc1", fc1, self.h),
        ]

    def _permute(self, name: str, copies: float, kernels: int = 1) -> KernelStep:
        """Moving token copies into expert order: read and write each copy (Megatron-Core ``permute``), in the
        framework's ``kernels`` launches (TE's fused permutation: a row-id map, then the copy)."""
        return _k(name, self.cm.elementwise(2 * self.e * copies * self.h, kernels=kernels))

    def moe_block_forward(self) -> list[Step]:
        """Norm → router → permute → dispatch → experts → combine → unpermute (+ shared experts). With the
        experts split over tensor parallelism the block gathers the tokens first and scatters them after
        (Megatron's f/g); folded whole onto each rank (etp = 1) it routes the rank's sequence shard as is."""
        c, cm, t, x = self.ctx, self.cm, self.s.tensor, self._experts()
        moe = c.model.moe
        assert moe is not None
        local, routed, per_expert, fc1, fc2, sent = self._moe_shape()
        n, tp_split, k = c.moe_tokens, c.dims.expert_tp == c.tp, c.framework.moe
        # received chunks sorted by local expert and back (Megatron-Core sort_chunks_by_idxs)
        sort = [self._permute("moe_sort", routed, k.sort[0])] if local > 1 else []
        return self._moe_graphs([
            self._norm("mlp_norm"),
            *(t.block_input_forward(c, "mlp") if tp_split else []),
            _k("router", cm.gemm(n, moe.experts, self.h, linear=False)),  # fp32/bf16 in Megatron-Core
            # fp32 logits → probs → top-k, the load-balancing loss: the framework's router kernels
            _k("router_topk", cm.elementwise(3 * 4 * n * moe.experts, kernels=k.router[0])),
            self._permute("moe_permute", sent, k.permute[0]),
            *x.dispatch(c, routed, False),
            *sort,
            self._expert_gemm("expert_fc1", per_expert, fc1, self.h, local),
            self._activation("expert_activation", fc1, fc2, False, routed),
            self._expert_gemm("expert_fc2", per_expert, self.h, fc2, local),
            *sort,
            *x.combine(c, routed, False),
            _k("moe_unpermute", cm.elementwise(self.e * self.h * (sent + n))),  # weighted sum of k
            *self._shared_forward(),
            # no GEMM right before to hide the block's output communication under
            *(_blocking(t.block_output_forward(c, "mlp")) if tp_split else []),
            self._dropout_add("mlp_dropout_add"),
        ])

    def moe_block_backward(self) -> list[Step]:
        """Reverse of ``moe_block_forward``: the two all-to-alls again, on the gradients."""
        c, cm, t, x = self.ctx, self.cm, self.s.tensor, self._experts()
        moe = c.model.moe
        assert moe is not None
        local, routed, per_expert, fc1, fc2, sent = self._moe_shape()
        n, tp_split, k = c.moe_tokens, c.dims.expert_tp == c.tp, c.framework.moe
        sort = [self._permute("moe_sort_bwd", routed, k.sort[1])] if local > 1 else []
        g = self._expert_gemm
        return self._moe_graphs([
            self._dropout_add("mlp_dropout_add_bwd", backward=True),
            *(t.block_output_backward(c, "mlp") if tp_split else []),
            *self._shared_backward(),
            # reads dY (and, unless the routing weights multiply in the activation, the saved expert outputs
            # for their gradient), writes the copies'
            _k("moe_unpermute_bwd", cm.elementwise(self.e * self.h * ((1 if k.probs_in_activation else 2) * sent + n))),
            *x.combine(c, routed, True),
            *sort,
            g("expert_fc2_dgrad", per_expert, fc2, self.h, local),
            g("expert_fc2_wgrad", fc2, self.h, per_expert, local),
            self._activation("expert_activation_bwd", fc1, fc2, True, routed),
            g("expert_fc1_dgrad", per_expert, self.h, fc1, local),
            g("expert_fc1_wgrad", self.h, fc1, per_expert, local),
            *sort,
            *x.dispatch(c, routed, True),
            self._permute("moe_permute_bwd", sent, k.permute[1]),
            _k("router_topk_bwd", cm.elementwise(3 * 4 * n * moe.experts, kernels=k.router[1])),
            *(t.block_input_backward_pre(c, "mlp") if tp_split else []),
            _k("router_dgrad", cm.gemm(n, self.h, moe.experts, linear=False)),
            *(t.block_input_backward_post(c, "mlp") if tp_split else []),
            _k("router_wgrad", cm.gemm(self.h, moe.experts, n, linear=False)),
            self._norm("mlp_norm_bwd", backward=True),
        ])

    # ------------------------------------------------------------------ CUDA graphs
    _MOE_GRAPH_SCOPES = {  # Megatron-Core TransformerLayer partial CUDA graphs (cuda_graph_scope)
        "moe_router": frozenset({"mlp_norm", "router", "router_topk", "router_topk_bwd", "router_dgrad",
                                 "router_wgrad", "mlp_norm_bwd"}),
        "moe_preprocess": frozenset({"moe_permute", "moe_permute_bwd"}),
    }  # fmt: skip

    def _graphed(self, steps: list[Step], scope: str, names: frozenset[str] | None = None) -> list[Step]:
        """``steps`` as replayed from the CUDA graph of ``scope`` when the framework captures it: the graph's
        kernels (those in ``names``, default all) launch nothing of their own, the graph launches once
        (cudaGraphLaunch; CUDA C++ Programming Guide, "CUDA Graphs"). Communication inside keeps its time."""
        if scope not in self.ctx.cuda_graphs:
            return steps
        out, launch = [], self.cm.calib.kernel_launch_s
        for s in steps:
            if isinstance(s, KernelStep) and (names is None or s.name in names):
                s, launch = replace(s, time=replace(s.time, launch_s=launch)), 0.0
            out.append(s)
        return out

    def _moe_graphs(self, steps: list[Step]) -> list[Step]:
        """The MoE block's router and preprocess kernels replayed from their partial CUDA graphs."""
        for scope, names in self._MOE_GRAPH_SCOPES.items():
            steps = self._graphed(steps, scope, names)
        return steps

    # ------------------------------------------------------------------ whole layer
    def forward(self, moe: bool = False) -> list[Step]:
        """One layer's forward pass (``moe``: a mixture-of-experts layer)."""
        mlp = self.moe_block_forward() if moe else self.mlp_block_forward()
        return [*self._graphed(self.attention_block_forward(), "attn"), *self._graphed(mlp, "moe" if moe else "mlp")]

    def backward(self, param_count: float, moe: bool = False, expert_param_count: float = 0.0) -> list[Step]:
        """One layer's backward pass, ending with its gradients (``param_count`` dense and
        ``expert_param_count`` expert parameters on this rank) accumulated and ready."""
        mlp = self.moe_block_backward() if moe else self.mlp_block_backward()
        return [
            *self._graphed(mlp, "moe" if moe else "mlp"),
            *self._graphed(self.attention_block_backward(), "attn"),
            grad_accumulation(self.ctx, param_count + expert_param_count),
            GradReady(param_count, expert_param_count),
        ]

    def recompute(self, mode: str, moe: bool = False) -> list[Step]:
        """What the backward pass recomputes first: the whole forward (full), or under selective the modules
        ``recomputed_modules`` names (Megatron-Core ``--recompute-modules``; by default the attention core,
        Korthikanti 2022 Sec. 5, which flash attention already recomputes inside its backward)."""
        if mode == "full":
            return [_uncounted(s) for s in self.forward(moe)]
        again = recomputed_modules(self.ctx)
        steps: list[Step] = []
        if "layernorm" in again:
            steps += [self._norm("attn_norm"), self._norm("mlp_norm")]
        if "core_attn" in again and not self.ctx.training.flash_attention:
            steps += self.attention_core_forward()
        if moe and "moe" in again:
            steps += self.moe_block_forward()
        elif moe:
            steps += self._recomputed_expert_parts(again)
        elif "mlp" in again:
            steps += self.mlp_block_forward()
        return [_uncounted(s) for s in steps]

    def _recomputed_expert_parts(self, again: frozenset[str]) -> list[Step]:
        """The parts of a MoE block recomputed on their own: the experts' activation, the shared experts."""
        out: list[Step] = []
        if "moe_act" in again:
            _, routed, _, fc1, fc2, _ = self._moe_shape()
            out.append(self._activation("expert_activation", fc1, fc2, False, routed))
        if "shared_experts" in again:
            out += self._shared_forward()
        return out


def grad_accumulation(ctx: BuildContext, param_count: float) -> KernelStep:
    """Adding this micro-batch's weight gradients into the main-gradient buffer: Megatron-LM's
    ``param.main_grad.add_(grad)`` (or the same traffic inside the wgrad GEMM with gradient-accumulation
    fusion): read the fresh 16-bit gradient, read and write the main gradient."""
    nbytes = param_count * (ctx.e + 2 * grad_element_bytes(ctx))
    return _k("grad_accumulate", ctx.compute.elementwise(nbytes))


def is_weight_gradient(step: Step) -> bool:
    """Whether ``step`` belongs to a zero-bubble W pass (Qi et al. 2023, arXiv 2401.10241, Sec. 2): a
    weight-gradient GEMM, the gradient accumulation consuming it, or the gradient-ready marker."""
    if isinstance(step, GradReady):
        return True
    return isinstance(step, KernelStep) and (step.name.endswith("_wgrad") or step.name == "grad_accumulate")


def split_weight_gradients(steps: list[Step]) -> tuple[list[Step], list[Step]]:
    """A backward pass as (B: input gradients and all communication, W: weight gradients)."""
    b = [s for s in steps if not is_weight_gradient(s)]
    w = [s for s in steps if is_weight_gradient(s)]
    return b, w


def _blocking(steps: list[Step]) -> list[Step]:
    """``steps`` with their communication waited for at once (nothing to overlap it with)."""
    return [replace(s, join_after=0) if isinstance(s, CommStep) else s for s in steps]


def _uncounted(step: Step) -> Step:
    """A recomputed kernel does work the model does not need: no model FLOPs."""
    if isinstance(step, KernelStep):
        return KernelStep(f"re.{step.name}", step.time, 0.0)
    if isinstance(step, CommStep):
        return CommStep(f"re.{step.name}", step.kind, step.comm, step.group, step.bytes, step.join_after)
    return step


def embedding_forward(ctx: BuildContext, tensor: TensorStrategy) -> list[Step]:
    """Token (+ position) embedding lookup; vocab-parallel embeddings all-reduce (or reduce-scatter) the
    output over TP (Megatron VocabParallelEmbedding)."""
    n = ctx.tokens * ctx.model.hidden
    steps: list[Step] = [_k("embedding", ctx.compute.elementwise(3 * ctx.e * n))]
    # no GEMM to hide the embedding's reduction under: it is waited for even with TP overlap
    steps += [
        replace(c, join_after=0) if isinstance(c, CommStep) else c
        for c in tensor.block_output_forward(ctx, "embedding")
    ]
    return steps


def embedding_backward(ctx: BuildContext, tensor: TensorStrategy, param_count: float) -> list[Step]:
    """Embedding gradient: scatter-add of the incoming gradient into the table."""
    n = ctx.tokens * ctx.model.hidden
    return [
        *tensor.block_output_backward(ctx, "embedding"),
        _k("embedding_wgrad", ctx.compute.elementwise(3 * ctx.e * n)),  # the table's gradient: a W pass
        grad_accumulation(ctx, param_count),
        GradReady(param_count),
    ]


def _head_shapes(ctx: BuildContext) -> tuple[int, int]:
    vocab_shard = -(-ctx.model.vocab // ctx.tp)
    return ctx.tokens, vocab_shard


def head_forward(ctx: BuildContext, tensor: TensorStrategy) -> list[Step]:
    """Final norm, output GEMM (vocab-parallel) and cross-entropy.

    Megatron's vocab-parallel cross-entropy casts the logits to fp32 and makes ~4 fp32 passes (max, exp,
    sum, normalise), with three small all-reduces over TP (max, sum-exp, target logit)."""
    cm, (tokens, v) = ctx.compute, _head_shapes(ctx)
    norm = tensor.norm_tokens(ctx) * ctx.model.hidden
    steps: list[Step] = [_k("final_norm", cm.elementwise(2 * ctx.e * norm))]
    steps += tensor.block_input_forward(ctx, "head")
    steps.append(_k("logits", cm.gemm(tokens, v, ctx.model.hidden, linear=False)))
    steps.append(_k("cross_entropy", cm.elementwise(tokens * v * (ctx.e + 4 * 4))))
    if ctx.tp > 1:
        steps += [
            CommStep(f"ce.allreduce{i}", CollectiveKind.ALL_REDUCE, CommKind.TP, Axis.TP, 4.0 * tokens)
            for i in range(3)
        ]
    return steps


def head_backward(ctx: BuildContext, tensor: TensorStrategy, param_count: float) -> list[Step]:
    """Cross-entropy gradient, output GEMM backward, final norm backward."""
    cm, (tokens, v) = ctx.compute, _head_shapes(ctx)
    h = ctx.model.hidden
    norm = tensor.norm_tokens(ctx) * h
    return [
        _k("cross_entropy_bwd", cm.elementwise(tokens * v * (4 + 4 + ctx.e))),
        *tensor.block_input_backward_pre(ctx, "head"),
        _k("logits_dgrad", cm.gemm(tokens, h, v, linear=False)),
        *tensor.block_input_backward_post(ctx, "head"),
        _k("logits_wgrad", cm.gemm(h, v, tokens, linear=False)),
        _k("final_norm_bwd", cm.elementwise(3 * ctx.e * norm)),
        grad_accumulation(ctx, param_count),
        GradReady(param_count),
    ]
