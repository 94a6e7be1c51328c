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
# MLA's up-projections are TELayerNormColumnParallelLinear too, fusing q_layernorm / kv_layernorm (Megatron-Core
# get_gpt_layer_with_transformer_engine_spec, multi_latent_attention=True).
_NORM_FUSED_FP8 = frozenset({"qkv", "fc1", "shared_fc1", "q_up", "kv_up"})


def _plus(a: KernelTime, b: KernelTime) -> KernelTime:
    """Two kernels run back to back, reported as one step (the second's launch, bytes and seconds per kernel
    class included: a GEMM with its FP8 cast counts the cast as ``fp8_cast``)."""
    return a.plus(b)


def _k(name: str, t: KernelTime, counts: bool = True) -> KernelStep:
    return KernelStep(name, t, t.flops if counts else 0.0)


class LayerBuilder:
    """Builds the forward, backward and recompute steps of the layers of one scenario on one rank."""

    def __init__(self, ctx: BuildContext, strategies: LayerStrategies, window: int | None = None) -> None:
        """``window``: the keys per query of a sliding-window layer (``model.attention_window``); one builder
        serves the layers of one kind."""
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
        self._acc = wgrad_accumulate_bytes(ctx)
        self._hidden_mask = 1 if m.hidden_dropout > 0 else 0  # bytes per element of a dropout mask
        # SMs the TP communication overlapped inside each GEMM takes from it (tp_comm_overlap)
        self._overlap_sms = ctx.framework.tp_overlap_sms if strategies.tensor.output_overlapped(ctx) else {}
        self.window = window if window is not None and window < ctx.training.seq_len else None
        # Per-head widths of Q/K and of V/O, and this rank's Q, K, V and attention-output widths. MLA has one K
        # and V head per query head, split over TP by heads (Megatron-Core MLASelfAttention), Q/K heads of
        # nope + rope = 192 and V heads of 128 (DeepSeek-V3 config_671B.json).
        self.d_qk, self.d_v = m.qk_head_dim, m.v_head_dim
        if m.mla is not None:
            self.q_w = self.k_w = self.heads * self.d_qk
            self.v_w = self.o_w = self.heads * self.d_v
        else:
            self.q_w, self.k_w, self.v_w, self.o_w = self.q, self.kv, self.kv, self.q

    # ------------------------------------------------------------------ attention core
    def _core_flops(self) -> float:
        """Forward FLOPs of QKᵀ (2·s_q·s_k·d_qk) and AV (2·s_q·s_k·d_v) on this rank, without causal savings."""
        c = self.ctx
        s_q = c.training.seq_len // c.dims.cp
        s_k = c.training.seq_len
        return 2.0 * c.training.micro_batch * self.heads * s_q * s_k * (self.d_qk + self.d_v)

    def _flash_forward_flops(self) -> float:
        """Forward FLOPs a causal fused kernel does on this rank: half the score matrix (the masked half
        skipped), or for a sliding window of w keys the band, query i seeing min(i + 1, w) keys:
        w·s − w(w − 1)/2 pairs per sequence and head (≈ w·s for w ≪ s), this rank's 1/cp of them."""
        if self.window is None:
            return self._core_flops() / 2
        c, w = self.ctx, self.window
        s = c.training.seq_len
        pairs = (w * s - w * (w - 1) / 2) / c.dims.cp
        return 2.0 * c.training.micro_batch * self.heads * pairs * (self.d_qk + self.d_v)

    def _flash_kernel(self, name: str, backward: bool) -> KernelStep:
        """This rank's fused attention kernel. Forward: a causal kernel skips the masked half of the blocks (Dao
        2023, FlashAttention-2), a windowed one the tiles outside the band; it reads Q, K, V and writes O.
        Backward: 5 GEMMs against the forward's 2 (it recomputes QKᵀ), 2.5× the forward FLOPs where the model
        needs 2× (Dao 2023, Sec. 3.2); it reads Q, K, V, O, dO and writes dQ, dK, dV."""
        fwd = self._flash_forward_flops()
        flops, model_flops, passes = (2.5 * fwd, 2.0 * fwd, 2) if backward else (fwd, fwd, 1)
        io = passes * self.e * self.T * (self.q_w + self.k_w + self.v_w + self.o_w)
        seq_k, head_dim, causal = self._attention_shape()
        t = self.cm.flash_attention(
            flops, io, backward, seq_k=seq_k, head_dim=head_dim, causal=causal, window=self.window
        )
        return KernelStep(name, t, model_flops)

    def attention_core_forward(self) -> list[Step]:
        """Attention scores, softmax and weighted sum, fused or not."""
        c, cm = self.ctx, self.cm
        b, s, a = c.training.micro_batch, c.training.seq_len, self.heads
        dq, dv = self.d_qk, self.d_v
        if c.training.flash_attention:
            core: list[Step] = [self._flash_kernel("flash_attn", backward=False)]
        else:
            # unfused attention materialises the whole s×s score matrix whatever the mask (causal or window)
            scores = b * a * s * s
            core = [
                _k("attn_qk", cm.gemm(s, s, dq, batch=b * a, linear=False)),
                _k("softmax", cm.elementwise(2 * self.e * scores)),  # fused scale+mask+softmax: read, write
                # read, write, 1-byte mask; none at p = 0 (F.dropout returns its input)
                *([_k("attn_dropout", cm.elementwise((2 * self.e + 1) * scores))] if c.model.attention_dropout else []),
                _k("attn_av", cm.gemm(s, dv, s, batch=b * a, linear=False)),
            ]
        return self.s.context.attention_forward(c, core, self._kv_bytes())

    def attention_core_backward(self) -> list[Step]:
        """Backward of the attention core."""
        c, cm = self.ctx, self.cm
        b, s, a = c.training.micro_batch, c.training.seq_len, self.heads
        dq, dv = self.d_qk, self.d_v
        if c.training.flash_attention:
            core: list[Step] = [self._flash_kernel("flash_attn_bwd", backward=True)]
        else:
            scores = b * a * s * s
            core = [
                _k("attn_av_dgrad", cm.gemm(s, s, dv, batch=b * a, linear=False)),  # dP = dO·Vᵀ
                _k("attn_av_vgrad", cm.gemm(s, dv, s, batch=b * a, linear=False)),  # dV = Pᵀ·dO (an activation gradient)
                *([_k("attn_dropout_bwd", cm.elementwise((2 * self.e + 1) * scores))] if c.model.attention_dropout else []),
                _k("softmax_bwd", cm.elementwise(3 * self.e * scores)),  # read y, dy; write dx
                _k("attn_qk_dgrad", cm.gemm(s, dq, s, batch=b * a, linear=False)),  # dQ = dS·K
                _k("attn_qk_kgrad", cm.gemm(s, dq, s, batch=b * a, linear=False)),  # dK = dSᵀ·Q (an activation gradient)
            ]
        return self.s.context.attention_backward(c, core, self._kv_bytes())

    def _attention_shape(self) -> tuple[float, int, bool]:
        """What sets a fused kernel's efficiency: (keys per query tile, head dim, causal masking) of the kernels
        the context strategy launches (``kernel_view``: ring attention's zig-zag blocks, or one causal kernel over
        the whole sequence). MLA's Q/K heads (192) and V heads (128) differ: the kernel's work per loaded tile
        goes with their mean. A sliding-window layer's band is passed to the kernel model on its own
        (``window``)."""
        seq_k, causal = self.s.context.kernel_view(self.ctx)
        return seq_k, (self.d_qk + self.d_v) // 2, causal

    def _kv_bytes(self) -> float:
        """Bytes of this rank's K and V for one micro-batch (what ring attention passes around)."""
        return float(self.T * (self.k_w + self.v_w) * self.e)

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
        if model.mla is not None:
            return [self._mla_rotary(name, backward)]
        # not stated: the gated-MLP families (Llama, Mistral, Qwen) use RoPE, GPT-style ones learned positions
        rope = model.position_embedding == "rope" or (model.position_embedding is None and model.gated_mlp)
        if ops is None or not rope:
            return []
        return [_k(name, self._fused(ops, 2 * self.e * self.T * (self.q + self.kv), backward))]

    def _mla_rotary(self, name: str, backward: bool) -> KernelStep:
        """MLA's decoupled RoPE and the assembly of the core's inputs (Megatron-Core
        ``fused_apply_mla_rope_for_q`` / ``_for_kv``): rotate each query head's rope part in Q, rotate the one
        shared rope key and write it beside every head's no-rope key, split V out of the kv up-projection.
        Reads Q, the kv up-projection's output and the rope key; writes Q, K and V (backward the reverse)."""
        m = self.ctx.model.mla
        assert m is not None
        kv_up = self.heads * (m.qk_nope_head_dim + m.v_head_dim)
        n = self.e * self.T * (2 * self.q_w + kv_up + m.qk_rope_head_dim + self.k_w + self.v_w)
        ops = self.ctx.framework.rotary
        return _k(name, self._fused(ops, n, backward) if ops is not None else self.cm.elementwise(n))

    def _dropout_add(self, name: str) -> KernelStep:
        # fused bias-dropout-add: read x and residual, write out and, with dropout, a 1-byte mask
        n = self.Tn * self.h
        return _k(name, self.cm.elementwise((3 * self.e + self._hidden_mask) * n))

    def _dropout_add_backward(self, name: str) -> list[Step]:
        # reads dy and the mask, writes dx; without dropout the add's gradient passes through (no kernel:
        # PyTorch's AddBackward returns its input gradient, and F.dropout with p = 0 returns its input)
        n = self.Tn * self.h
        return [_k(name, self.cm.elementwise((2 * self.e + 1) * n))] if self._hidden_mask else []

    def _tp_gemm(self, name: str, m: int, n: int, k: int, accumulate_bytes: int = 0) -> KernelTime:
        """A linear layer's GEMM; under ``tp_comm_overlap`` on the SMs the communication kernel the framework
        runs beside it leaves (``FrameworkProfile.tp_overlap_sms``)."""
        comm_sms = self._overlap_sms.get(name, 0)
        sms = self.cm.gpu.sm_count - comm_sms if comm_sms else None
        return self.cm.gemm(m, n, k, accumulate_bytes=accumulate_bytes, sms=sms)

    def _linear(self, name: str, n_out: int, k_in: int) -> KernelStep:
        t = self._tp_gemm(name, self.T, n_out, k_in)
        if self.cm.fp8 and name not in _NORM_FUSED_FP8:  # the input arrives 16-bit: cast_transpose it
            t = _plus(t, self.cm.fp8_cast(self.T * k_in, transpose=True))
        return _k(name, t)

    def _linear_backward(self, name: str, n_out: int, k_in: int) -> tuple[KernelStep, KernelStep]:
        """Input-gradient GEMM [T, n]·[n, k] and weight-gradient GEMM [k, T]·[T, n]; under FP8 the incoming
        gradient is cast (with its transpose for the weight gradient) before them, and an input that a fused
        norm emitted as FP8 without its transpose is transposed for the weight gradient."""
        dgrad = self._tp_gemm(f"{name}_dgrad", self.T, k_in, n_out)
        wgrad = self._tp_gemm(f"{name}_wgrad", k_in, n_out, self.T, accumulate_bytes=self._acc)
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
        if self.ctx.model.mla is not None:
            return self._mla_block_forward()
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
        if c.model.mla is not None:
            return self._mla_block_backward()
        proj_d, proj_w = self._linear_backward("attn_proj", self.h, self.q)
        qkv_d, qkv_w = self._linear_backward("qkv", self.q + 2 * self.kv, self.h)
        return [
            *self._dropout_add_backward("attn_dropout_add_bwd"),
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

    # ------------------------------------------------------------------ multi-head latent attention
    def _mla_widths(self) -> tuple[int, int, int, int, int]:
        """(q down width, q up width on this rank, kv down width incl. the rope key, kv latent width, kv up
        width on this rank): the down-projections are replicated on every TP rank, the up-projections split
        by heads (Megatron-Core MLASelfAttention: linear_q/kv_down_proj duplicated, linear_q/kv_up_proj
        column-parallel)."""
        m = self.ctx.model.mla
        assert m is not None
        kv_up = self.heads * (m.qk_nope_head_dim + m.v_head_dim)
        return m.q_lora_rank, self.q_w, m.kv_lora_rank + m.qk_rope_head_dim, m.kv_lora_rank, kv_up

    def _latent_norm(self, name: str, width: int, backward: bool = False) -> KernelStep:
        """RMSNorm of a compressed q or kv (q_layernorm, kv_layernorm) on every token."""
        n = self.T * width * self.e
        return _k(name, self._fused(self.ctx.framework.norm, (3 if backward else 2) * n, backward))

    def _mla_block_forward(self) -> list[Step]:
        """Multi-head latent attention as DeepSeek-V3 (arXiv 2412.19437 Sec. 2.1.1, eqs. 1-11) and Megatron-Core
        MLASelfAttention run it: norm → q down-projection → q norm → q up-projection; kv down-projection (with
        the decoupled rope key) → kv norm → kv up-projection; RoPE on the rope parts; core attention with Q/K
        heads of nope + rope and V heads of v_head_dim; output projection from heads·v_head_dim.
        With TP > 1 Megatron-Core runs the replicated down-projections on the sequence shard and gathers their
        compressed outputs (2,112 wide for DeepSeek-V3) rather than the hidden-wide input; here the block's
        usual input communication and full-token down-projections stand for that (exact at TP = 1, as in the
        shipped DeepSeek-V3 scenarios)."""
        t = self.s.tensor
        q_down, q_up, kv_down, kv_lat, kv_up = self._mla_widths()
        return [
            self._norm("attn_norm"),
            *t.block_input_forward(self.ctx, "attn"),
            self._linear("q_down", q_down, self.h),
            self._latent_norm("q_norm", q_down),
            self._linear("q_up", q_up, q_down),
            self._linear("kv_down", kv_down, self.h),
            self._latent_norm("kv_norm", kv_lat),
            self._linear("kv_up", kv_up, kv_lat),
            *self._rotary("rotary"),
            *self.attention_core_forward(),
            *self._row_parallel("attn_proj", self.h, self.o_w, "attn"),
            self._dropout_add("attn_dropout_add"),
        ]

    def _mla_block_backward(self) -> list[Step]:
        """Reverse of ``_mla_block_forward``; the two down-projections' input gradients are summed."""
        t, c = self.s.tensor, self.ctx
        q_down, q_up, kv_down, kv_lat, kv_up = self._mla_widths()
        proj = self._linear_backward("attn_proj", self.h, self.o_w)
        kv_up_d, kv_up_w = self._linear_backward("kv_up", kv_up, kv_lat)
        q_up_d, q_up_w = self._linear_backward("q_up", q_up, q_down)
        kv_down_d, kv_down_w = self._linear_backward("kv_down", kv_down, self.h)
        q_down_d, q_down_w = self._linear_backward("q_down", q_down, self.h)
        return [
            *self._dropout_add_backward("attn_dropout_add_bwd"),
            *t.block_output_backward(c, "attn"),
            *proj,
            *self.attention_core_backward(),
            *self._rotary("rotary_bwd", backward=True),
            kv_up_d,
            kv_up_w,
            self._latent_norm("kv_norm_bwd", kv_lat, backward=True),
            q_up_d,
            q_up_w,
            self._latent_norm("q_norm_bwd", q_down, backward=True),
            *t.block_input_backward_pre(c, "attn"),
            kv_down_d,
            q_down_d,
            # autograd sums the two branches' gradients of the normalised input: read both, write one
            _k("attn_input_grad_add", self.cm.elementwise(3 * self.e * self.T * self.h)),
            *t.block_input_backward_post(c, "attn"),
            kv_down_w,
            q_down_w,
            self._norm("attn_norm_bwd", backward=True),
        ]

    def _mla_up_proj_steps(self) -> list[Step]:
        """Megatron-Core's ``mla_up_proj`` selective recomputation: the q and kv up-projections and the RoPE
        assembly run again in backward (their outputs Q, K, V are freed after the core attention reads them;
        multi_latent_attention.py ``qkv_up_checkpoint``). Empty for a model without MLA."""
        if self.ctx.model.mla is None:
            return []
        q_down, q_up, _, kv_lat, kv_up = self._mla_widths()
        return [self._linear("q_up", q_up, q_down), self._linear("kv_up", kv_up, kv_lat), *self._rotary("rotary")]

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
            *self._dropout_add_backward("mlp_dropout_add_bwd"),
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
        acc = self._acc if name.endswith("_wgrad") else 0  # TE GroupedLinear fuse_wgrad_accumulation too
        t = self.cm.gemm(tokens, n_out, k_in, batch=local, accumulate_bytes=acc)
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
        sort = [self._permute("moe_sort", routed, k.sort[0])] if local > 1 and not x.local_permute else []
        experts = [
            self._expert_gemm("expert_fc1", per_expert, fc1, self.h, local),
            self._activation("expert_activation", fc1, fc2, False, routed),
            self._expert_gemm("expert_fc2", per_expert, self.h, fc2, local),
        ]
        if x.local_permute:  # tokens arrive once per rank: expanded into expert copies there, folded back after
            # the local unpermute reads the copies and writes one partial sum per received token
            unpermute = cm.elementwise(self.e * self.h * (routed + x.wire_copies(c, routed)))
            routed_part = [
                *x.dispatch(c, routed, False),
                self._permute("moe_permute", routed, k.permute[0]),
                *experts,
                _k("moe_unpermute", unpermute),
                *x.combine(c, routed, False),
            ]
        else:
            routed_part = [
                self._permute("moe_permute", sent, k.permute[0]),
                *x.dispatch(c, routed, False),
                *sort,
                *experts,
                *sort,
                *x.combine(c, routed, False),
                _k("moe_unpermute", cm.elementwise(self.e * self.h * (sent + n))),  # weighted sum of k
            ]
        return self._moe_graphs([
            self._norm("mlp_norm"),
            *(t.block_input_forward(c, "mlp") if tp_split else []),
            _k("router", cm.gemm(n, moe.experts, self.h, linear=False)),  # fp32/bf16 in Megatron-Core
            # fp32 logits → probs → top-k, the load-balancing loss: the framework's router kernels
            _k("router_topk", cm.elementwise(3 * 4 * n * moe.experts, kernels=k.router[0])),
            *routed_part,
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
        sort = [self._permute("moe_sort_bwd", routed, k.sort[1])] if local > 1 and not x.local_permute else []
        g = self._expert_gemm
        experts = [
            g("expert_fc2_dgrad", per_expert, fc2, self.h, local),
            g("expert_fc2_wgrad", fc2, self.h, per_expert, local),
            self._activation("expert_activation_bwd", fc1, fc2, True, routed),
            g("expert_fc1_dgrad", per_expert, self.h, fc1, local),
            g("expert_fc1_wgrad", self.h, fc1, per_expert, local),
        ]
        # reads dY (and, unless the routing weights multiply in the activation, the saved expert outputs for
        # their gradient), writes the copies'
        reads = 1 if k.probs_in_activation else 2
        if x.local_permute:
            received = x.wire_copies(c, routed)
            routed_part = [
                *x.combine(c, routed, True),
                _k("moe_unpermute_bwd", cm.elementwise(self.e * self.h * (reads * routed + received))),
                *experts,
                self._permute("moe_permute_bwd", routed, k.permute[1]),
                *x.dispatch(c, routed, True),
            ]
        else:
            routed_part = [
                _k("moe_unpermute_bwd", cm.elementwise(self.e * self.h * (reads * sent + n))),
                *x.combine(c, routed, True),
                *sort,
                *experts,
                *sort,
                *x.dispatch(c, routed, True),
                self._permute("moe_permute_bwd", sent, k.permute[1]),
            ]
        return self._moe_graphs([
            *self._dropout_add_backward("mlp_dropout_add_bwd"),
            *(t.block_output_backward(c, "mlp") if tp_split else []),
            *self._shared_backward(),
            *routed_part,
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
        out, launch = [], self.cm.kernel_launch_s
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
            *unfused_grad_accumulation(self.ctx, param_count + expert_param_count),
            GradReady(param_count, expert_param_count),
        ]

    def recompute(self, mode: str, moe: bool = False) -> list[Step]:
        """What the backward pass recomputes first: the whole forward (full), or under selective the modules
        ``recomputed_modules`` names (Megatron-Core ``--recompute-modules``; by default the attention core,
        Korthikanti 2022 Sec. 5, which flash attention already recomputes inside its backward)."""
        if mode == "full":
            return [_uncounted(s) for s in self.forward(moe)]
        again = recomputed_modules(self.ctx)
        if "op_level" in again and not moe:
            return [_uncounted(s) for s in self._op_level_recompute()]
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
        if "mla_up_proj" in again:
            steps += self._mla_up_proj_steps()
        return [_uncounted(s) for s in steps]

    def _op_level_recompute(self) -> list[Step]:
        """What torchtitan's per-op checkpointing runs again before a dense layer's backward (``op_level_bytes``
        keeps the rest): both norms, the K projection, rotary, the output projection, the gated MLP's w3 and its
        activation (SwiGLU's silu and product)."""
        c = self.ctx
        fc1, fc2 = self._ffn_width(c.model.ffn_hidden)
        w3 = fc1 - fc2 if c.model.gated_mlp else 0  # the second FC1 matrix of a gated MLP
        return [
            self._norm("attn_norm"),
            self._linear("wk", self.kv, self.h),
            *self._rotary("rotary"),
            self._linear("attn_proj", self.h, self.q),
            self._norm("mlp_norm"),
            *([self._linear("w3", w3, self.h)] if w3 else []),
            self._activation("activation", fc1, fc2, False),
        ]

    def _recomputed_expert_parts(self, again: frozenset[str]) -> list[Step]:
        """The parts of a MoE block recomputed on their own: the experts' activation, the shared experts."""
        out: list[Step] = []
        if "moe_act" in again:
            _, routed, _, fc1, fc2, _ = self._moe_shape()
            out.append(self._activation("expert_activation", fc1, fc2, False, routed))
        if "shared_experts" in again:
            out += self._shared_forward()
        return out


def wgrad_accumulate_bytes(ctx: BuildContext) -> int:
    """Bytes per main-gradient element a weight-gradient GEMM reads and writes in its epilogue when the framework
    fuses the accumulation (0: it writes a fresh 16-bit gradient that ``grad_accumulation`` adds)."""
    return grad_element_bytes(ctx) if ctx.framework.fused_grad_accumulation else 0


def unfused_grad_accumulation(ctx: BuildContext, param_count: float) -> list[Step]:
    """The accumulation kernel of a layer's linear weights, unless their wgrad GEMMs do it in their epilogue (the
    norms' and biases' gradients, under 0.1% of a layer's parameters, are then not timed)."""
    return [] if ctx.framework.fused_grad_accumulation else [grad_accumulation(ctx, param_count)]


def grad_accumulation(ctx: BuildContext, param_count: float) -> KernelStep:
    """Adding this micro-batch's weight gradients into the main-gradient buffer as a kernel of its own (Megatron-LM
    before gradient-accumulation fusion: ``param.main_grad.add_(grad)``; PyTorch's AccumulateGrad): read the fresh
    16-bit gradient, read and write the main gradient. With fusion the wgrad GEMM does it (``accumulate_bytes``)."""
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
        _k("logits_wgrad", cm.gemm(h, v, tokens, linear=False, accumulate_bytes=wgrad_accumulate_bytes(ctx))),
        _k("final_norm_bwd", cm.elementwise(3 * ctx.e * norm)),
        *unfused_grad_accumulation(ctx, param_count),
        GradReady(param_count),
    ]


# ---------------------------------------------------------------------- multi-token prediction
def _mtp_named(steps: list[Step], k: int) -> list[Step]:
    """The shared embedding's and output head's steps run again for MTP module ``k``: renamed ``mtp{k}_*`` (their
    gradient markers and accumulations dropped: ``mtp_backward`` accumulates into those weights' gradients once)."""
    out: list[Step] = []
    for s in steps:
        if isinstance(s, KernelStep) and s.name == "grad_accumulate":
            continue
        if isinstance(s, (KernelStep, CommStep)):
            out.append(replace(s, name=f"mtp{k}_{s.name}"))
        elif not isinstance(s, GradReady):
            out.append(s)
    return out


def mtp_forward(ctx: BuildContext, tensor: TensorStrategy, layer: list[Step], k: int) -> list[Step]:
    """Multi-token-prediction module ``k`` (DeepSeek-V3, arXiv 2412.19437 Sec. 2.2, eqs. 21-25; Megatron-Core
    MultiTokenPredictionLayer, on the last pipeline stage): embed the tokens shifted by k + 1 with the shared
    embedding, RMSNorm it (enorm) and the previous depth's hidden state (hnorm), concatenate, project 2h → h
    (eh_proj, column-parallel), run one transformer layer (``layer``, built like the decoder's last), then the
    shared output head and its cross-entropy (the module's final norm is its own)."""
    cm, h, e = ctx.compute, ctx.model.hidden, ctx.e
    n = tensor.norm_tokens(ctx) * h
    steps: list[Step] = _mtp_named(embedding_forward(ctx, tensor), k)
    steps += [
        _k(f"mtp{k}_enorm", cm.elementwise(2 * e * n)),
        _k(f"mtp{k}_hnorm", cm.elementwise(2 * e * n)),
        _k(f"mtp{k}_concat", cm.elementwise(2 * e * 2 * n)),  # torch.cat: read both halves, write 2h
        *tensor.block_input_forward(ctx, f"mtp{k}"),
        _k(f"mtp{k}_eh_proj", cm.gemm(ctx.tokens, h // ctx.tp, 2 * h)),
    ]
    if ctx.tp > 1:  # the column-parallel output is gathered back to the full hidden width
        steps.append(CommStep(f"mtp{k}_eh_proj.allgather", CollectiveKind.ALL_GATHER, CommKind.TP, Axis.TP,
                              float(ctx.tokens * h * e), 0))  # fmt: skip
    return [*steps, *layer, *_mtp_named(head_forward(ctx, tensor), k)]


def mtp_backward(ctx: BuildContext, tensor: TensorStrategy, layer: list[Step], k: int, own_params: float,
                 shared_params: float) -> list[Step]:  # fmt: skip
    """Reverse of ``mtp_forward``: the MTP loss's gradient through the shared head (its weight gradient added
    into the head's), the layer (``layer``: its backward, with its gradient marker), eh_proj, the norms, the
    shared embedding (added into the embedding's gradient), and the hidden-state gradient added to the main
    model's. ``own_params``: the module's norms and eh_proj (plus a last-stage embedding copy) on this rank;
    ``shared_params``: the head's and embedding's weights on this rank whose gradients it accumulates into."""
    cm, h, e = ctx.compute, ctx.model.hidden, ctx.e
    n = tensor.norm_tokens(ctx) * h
    # the output all-gather's backward is a split (Megatron _GatherFromModelParallelRegion): no communication
    acc = wgrad_accumulate_bytes(ctx)
    return [
        *_mtp_named(head_backward(ctx, tensor, 0.0), k),
        *layer,
        _k(f"mtp{k}_eh_proj_dgrad", cm.gemm(ctx.tokens, 2 * h, h // ctx.tp)),
        *tensor.block_input_backward_pre(ctx, f"mtp{k}"),
        *tensor.block_input_backward_post(ctx, f"mtp{k}"),
        _k(f"mtp{k}_eh_proj_wgrad", cm.gemm(2 * h, h // ctx.tp, ctx.tokens, accumulate_bytes=acc)),
        _k(f"mtp{k}_concat_bwd", cm.elementwise(2 * e * 2 * n)),
        _k(f"mtp{k}_enorm_bwd", cm.elementwise(3 * e * n)),
        _k(f"mtp{k}_hnorm_bwd", cm.elementwise(3 * e * n)),
        _k(f"mtp{k}_hidden_grad_add", cm.elementwise(3 * e * n)),  # into the decoder output's gradient
        *_mtp_named(embedding_backward(ctx, tensor, 0.0), k),
        # under fusion the module's own GEMMs accumulated in their epilogues; the shared embedding's add remains
        grad_accumulation(ctx, shared_params if ctx.framework.fused_grad_accumulation else own_params + shared_params),
        GradReady(own_params),
    ]
