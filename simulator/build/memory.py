"""Memory per GPU: model state by ZeRO stage and precision, activations by recompute mode and schedule.

Model state (Rajbhandari et al. 2020, ZeRO, Sec. 3.1; Megatron-LM's fp32 main gradients): 16-bit weights,
gradients (fp32 when training in bf16, as Megatron-LM accumulates them), 12 bytes of fp32 master weight,
Adam m and v — 18 bytes per parameter for bf16, divided over the data-parallel group as ZeRO shards it.

ZeRO-3 (FSDP) also holds the gathered 16-bit copy of the layer in use and of the prefetched next one, and
their unsharded gradients until reduce-scattered (Zhao et al. 2023, PyTorch FSDP, Sec. 3.2: peak memory
grows by the largest units gathered at once).

Activations per layer (Korthikanti et al. 2022, arXiv 2205.05198, Sec. 4, Table 2), counted tensor by tensor
so that GQA, gated MLPs, flash attention and context parallelism are covered: with s·b tokens, 16-bit
activations and TP degree t, a standard GPT layer stores s·b·h·(10 + 24/t) + 5·a·s²·b/t bytes; sequence
parallelism divides the first term's 10 by t as well; selective recompute drops the 5·a·s²·b/t
attention-score term and flash attention replaces it by fp32 softmax statistics (4·a·s·b/t); full recompute
keeps only the 2·s·b·h layer input (2·s·b·h/t with SP). Context parallelism keeps s/cp of the tokens.
Korthikanti's model trains with dropout (0.1, Megatron-LM's default); without it the two 1-byte hidden masks
(2·s·b·h) and the attention-dropout mask and output (3·a·s²·b) are not kept.
Mixture-of-experts layers keep the routed copies of their tokens instead of the dense MLP's tensors.
The schedule sets how many micro-batches are held at once (``Schedule.in_flight``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from simulator.parallel.strategies.base import BuildContext, ContextStrategy, DataStrategy
from simulator.units import GiB

# The framework's own memory, outside tensors: CUDA context and kernels (~0.5 GiB with PyTorch + cuBLAS +
# NCCL loaded), NCCL buffers (NCCL_BUFFSIZE 4 MiB × channels × peers per communicator, a few hundred MiB for
# TP+DP+PP communicators) and allocator fragmentation. An estimate (PyTorch CUDA semantics docs; NCCL env docs).
FRAMEWORK_RESERVE_BYTES = 2.0 * GiB


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per GPU of the most loaded rank."""

    weights: float
    grads: float
    optimizer: float
    activations: float
    other: float

    @property
    def total(self) -> float:
        """Sum of all terms."""
        return self.weights + self.grads + self.optimizer + self.activations + self.other

    def largest(self) -> tuple[str, float]:
        """Name and size of the biggest term."""
        terms = {k: getattr(self, k) for k in ("weights", "grads", "optimizer", "activations", "other")}
        name = max(terms, key=lambda k: terms[k])
        return name, terms[name]


def recomputed_modules(ctx: BuildContext) -> frozenset[str]:
    """What selective recomputation recomputes: Megatron-Core's ``--recompute-modules``, or the core attention
    (Korthikanti et al. 2022, Sec. 5) when none are named; nothing under other modes."""
    t = ctx.training
    if t.recompute != "selective":
        return frozenset()
    if t.selective_recompute == "op_level":
        return frozenset({"op_level"})
    return frozenset(t.recompute_modules or ("core_attn",))


def op_level_bytes(ctx: BuildContext) -> float:
    """What torchtitan's per-op selective checkpointing keeps of a dense layer (torchtitan
    ``activation_checkpoint.mode = selective``, ``selective_ac_option = op``, models/llama3/parallelize_llama.py
    ``_save_list``): the layer's input, and the outputs of the saved ops, every second matmul of the layer
    (wq, wv, w1, w2; wk, wo and w3 are recomputed) and the attention kernel (its output and fp32 log-sum-exp).
    Norms, rotary and activations are recomputed from those."""
    m, t, e, tokens = ctx.model, ctx.tp, 2.0, ctx.tokens
    saved = m.hidden + m.q_hidden / t + m.kv_hidden / t + m.q_hidden / t + m.ffn_hidden / t + m.hidden
    return e * tokens * saved + 4.0 * (m.heads / t) * tokens


def linear_input_bytes(ctx: BuildContext) -> float:
    """Bytes per element of a linear layer's input kept for its weight gradient: 16-bit, or 1 byte where the
    framework keeps the FP8 copy it quantised for the forward GEMM (Transformer Engine: ``_Linear.forward``
    saves the quantised ``inputmat``, ``_LayerNormLinear`` its quantised ``ln_out``; TE v2.9)."""
    return 1.0 if ctx.compute.fp8 and ctx.framework.fp8_saves_inputs else 2.0


def _mlp_bytes(ctx: BuildContext, moe: bool) -> float:
    """The MLP's TP-split tensors (Korthikanti: FC1 output and FC2 input, 16·s·b·h/t for a 4h FFN), or a
    mixture-of-experts block's: the routed token copies the most loaded rank's experts read, FC1 outputs, FC2
    inputs and expert outputs (kept for the routing weights' gradient unless the framework applies the
    routing weights in the activation), the shared experts' tensors and the fp32 routing probabilities."""
    m, t, e, tokens = ctx.model, ctx.tp, 2.0, ctx.tokens
    lin = linear_input_bytes(ctx)
    width = m.expert_ffn if moe else m.ffn_hidden
    fc1_out = 2 * width if m.gated_mlp else width
    per_token = e * fc1_out + lin * width  # FC1 output (the activation's input) + FC2 input, bytes
    again = recomputed_modules(ctx)
    if not moe or m.moe is None:
        return 0.0 if "mlp" in again else tokens * per_token / t
    if "moe" in again:  # the whole block runs again from its input (kept as the layer's FC1 input)
        return 0.0
    shared = 0.0 if "shared_experts" in again else tokens * per_token * m.moe.shared_experts / t
    if "moe_act" in again:  # the activation runs again from FC1's output: its output (FC2's input) is not kept
        per_token -= lin * width
    routed = ctx.moe_tokens * m.moe.top_k * ctx.expert_load_factor
    # each routed copy: the FC1 input, the expert output unless the routing weights multiply inside the activation
    copy = lin * m.hidden + (0.0 if ctx.framework.moe.probs_in_activation else e * m.hidden)
    experts = routed * (copy + per_token / ctx.dims.expert_tp)
    return experts + shared + 4.0 * ctx.moe_tokens * m.moe.experts


def layer_activation_bytes(ctx: BuildContext, moe: bool) -> float:
    """Activation bytes one layer keeps for backward, per micro-batch, on one rank."""
    m, t, e = ctx.model, ctx.tp, 2.0  # Korthikanti counts 16-bit activations (fp8 recipes keep them 16-bit)
    tokens = ctx.tokens
    sp = ctx.par.sequence_parallel
    mode = ctx.training.recompute
    if mode == "full":
        return e * tokens * m.hidden / (t if sp else 1)
    again = recomputed_modules(ctx)
    if "op_level" in again and not moe:
        return op_level_bytes(ctx)
    # 2 norm inputs (2 bytes each), QKV and FC1 inputs (2 bytes, or 1 in FP8), 2 dropout masks (1 byte): 10·s·b·h,
    # TP-replicated; recomputing the norms drops their outputs, the QKV and FC1 inputs; a model trained without
    # dropout keeps no masks (F.dropout with p = 0 returns its input: Llama, Nemotron, MPT, DeepSeek)
    norm_outputs = 0.0 if "layernorm" in again else 2 * linear_input_bytes(ctx)
    masks = 2.0 if m.hidden_dropout > 0 else 0.0
    replicated = (4.0 + masks + norm_outputs) * tokens * m.hidden / (t if sp else 1)
    attention = _attention_bytes(ctx)
    heads = m.heads / t
    if ctx.training.flash_attention:
        scores = 4.0 * heads * tokens  # fp32 log-sum-exp per query row and head (FlashAttention-2)
    elif "core_attn" in again:
        scores = 0.0  # recomputed (Korthikanti Sec. 5)
    else:
        # softmax out (2 bytes), and with attention dropout its mask (1) and output (2)
        scores = (5.0 if m.attention_dropout > 0 else 2.0) * heads * ctx.training.seq_len * tokens
    return replicated + attention + _mlp_bytes(ctx, moe) + scores


def _attention_bytes(ctx: BuildContext) -> float:
    """The attention block's TP-split tensors: Q, K (QKᵀ inputs), V (AV input) and the projection input. With
    multi-head latent attention (DeepSeek-V3, arXiv 2412.19437 Sec. 2.1.1) Q and K have heads·(nope + rope)
    and V and the projection input heads·v_head_dim, and the compressed q and kv are kept twice, replicated on
    every TP rank: as their norms' inputs and, normalised, as the up-projections' inputs (TE LayerNormLinear
    keeps both). ``mla_up_proj`` recomputation frees Q, K and V once the core attention has read them and
    rebuilds them in backward (Megatron-Core multi_latent_attention.py, ``qkv_up_checkpoint``)."""
    m, t, e, tokens = ctx.model, ctx.tp, 2.0, ctx.tokens
    if m.mla is None:
        q, kv = m.q_hidden, m.kv_hidden
        return e * tokens * (q + kv + kv + q) / t
    qk, v = m.heads * m.qk_head_dim, m.heads * m.v_head_dim
    qkv = 0.0 if "mla_up_proj" in recomputed_modules(ctx) else 2 * qk + v
    latent = 2 * (m.mla.q_lora_rank + m.mla.kv_lora_rank)
    return e * tokens * ((qkv + v) / t + latent)


def mtp_activation_bytes(ctx: BuildContext) -> float:
    """What the multi-token-prediction modules (all on the last pipeline stage) keep per micro-batch: each
    module's transformer layer (of the decoder's last layer's kind), its embedding output, the inputs of enorm
    and hnorm and eh_proj's 2h-wide input (DeepSeek-V3 Sec. 2.2). Their logits are counted with the output
    layer's (``activation_bytes``)."""
    m = ctx.model
    if not m.mtp_layers:
        return 0.0
    n = ctx.tokens * m.hidden * 2.0
    norm = n / (ctx.tp if ctx.par.sequence_parallel else 1)
    per_module = layer_activation_bytes(ctx, m.is_moe_layer(m.layers - 1)) + n + 2 * norm + 2 * n
    return m.mtp_layers * per_module


def activation_bytes(ctx: BuildContext, context: ContextStrategy, layers_on_rank: list[bool], in_flight: float,
                     has_head: bool, has_embedding: bool) -> float:  # fmt: skip
    """Activations held at the peak: ``in_flight`` micro-batches of the rank's layers (``True`` = MoE),
    plus one layer's full activations being recomputed under full recompute, plus the output layer's logits,
    plus the K/V of the whole sequence that all-gather context parallelism gathers for one layer. The rank with
    the output layer also holds the multi-token-prediction modules."""
    kinds = {moe: layer_activation_bytes(ctx, moe) for moe in set(layers_on_rank)}  # one per layer kind
    per_mb = sum(kinds[moe] for moe in layers_on_rank)  # the same additions, in the same order
    if has_head:
        per_mb += mtp_activation_bytes(ctx)
    total = per_mb * in_flight
    if ctx.training.recompute == "full" and layers_on_rank:
        full = replace(ctx, training=ctx.training.model_copy(update={"recompute": "none"}))
        total += max(layer_activation_bytes(full, moe) for moe in layers_on_rank)
    if has_head:  # 16-bit logits and their fp32 softmax for the loss, the output layer's and each MTP module's
        vocab_shard = ctx.model.vocab / ctx.tp
        total += ctx.tokens * vocab_shard * (2 + 4) * (1 + ctx.model.mtp_layers)
    if has_embedding:
        total += ctx.tokens * ctx.model.hidden * 2.0
    if layers_on_rank:
        total += context.gathered_kv_bytes(ctx, max(ctx.model.kv_hidden // ctx.tp, ctx.model.d_head))
    return total


@dataclass(frozen=True)
class RankParams:
    """The parameters one rank holds (dense and routed-expert), the ZeRO shard counts of each (the groups
    that reduce their gradients), and its largest layer's parameters (what ZeRO-3 gathers at once)."""

    dense: float
    dense_shard: int = 1
    expert: float = 0.0
    expert_shard: int = 1
    largest_unit: float = 0.0


def memory_per_gpu(ctx: BuildContext, data: DataStrategy, context: ContextStrategy, rank: RankParams,
                   layers_on_rank: list[bool], in_flight: float, has_head: bool,
                   has_embedding: bool) -> MemoryBreakdown:  # fmt: skip
    """The memory breakdown of one rank: the data strategy says what it shards and gathers, the context
    strategy what it gathers for attention."""
    w, g, o = data.state_bytes(ctx, rank.dense, rank.dense_shard)
    we, ge, oe = data.state_bytes(ctx, rank.expert, rank.expert_shard)
    gw, gg = data.gathered_state_bytes(ctx, rank.largest_unit)
    act = activation_bytes(ctx, context, layers_on_rank, in_flight, has_head, has_embedding)
    return MemoryBreakdown(w + we + gw, g + ge + gg, o + oe, act, FRAMEWORK_RESERVE_BYTES + data.bucket_bytes(ctx))
