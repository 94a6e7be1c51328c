"""Memory per GPU: model state by ZeRO stage and precision, activations by recompute mode and schedule.

Model state (Rajbhandari et al. 2020, ZeRO, Sec. 3.1; Megatron-LM's fp32 main gradients): 16-bit weights,
gradients (fp32 when training in bf16, as Megatron-LM accumulates them), 12 bytes of fp32 master weight,
Adam m and v — 18 bytes per parameter for bf16, divided over the data-parallel group as ZeRO shards it.

Activations per layer (Korthikanti et al. 2022, arXiv 2205.05198, Sec. 4, Table 2), counted tensor by tensor
so that GQA, gated MLPs, flash attention and context parallelism are covered: with s·b tokens, 16-bit
activations and TP degree t, a standard GPT layer stores s·b·h·(10 + 24/t) + 5·a·s²·b/t bytes; sequence
parallelism divides the first term's 10 by t as well; selective recompute and flash attention drop the
5·a·s²·b/t attention-score term; full recompute keeps only the 2·s·b·h layer input.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.models.params import ParameterCount
from simulator.parallel.strategies.base import BuildContext
from simulator.parallel.strategies.data import grad_element_bytes, param_element_bytes
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


def model_state_bytes(ctx: BuildContext, local_params: float, shard: int) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes of ``local_params`` parameters under ``ctx.par.zero``."""
    zero = ctx.par.zero
    w = local_params * param_element_bytes(ctx)
    g = local_params * grad_element_bytes(ctx)
    opt_per_param = (
        8.0 if ctx.training.precision == "fp32" else 12.0
    )  # fp32 master only when weights are 16-bit
    o = local_params * opt_per_param
    if ctx.training.optimizer == "sgd":
        o = local_params * (4.0 if ctx.training.precision != "fp32" else 0.0)
    return (w / shard if zero >= 3 else w, g / shard if zero >= 2 else g, o / shard if zero >= 1 else o)


def layer_activation_bytes(ctx: BuildContext, moe: bool) -> float:
    """Activation bytes one layer keeps for backward, per micro-batch, on one rank."""
    m, t, e = ctx.model, ctx.tp, 2.0  # Korthikanti counts 16-bit activations (fp8 recipes keep them 16-bit)
    tokens = ctx.tokens
    sp = ctx.par.sequence_parallel
    mode = ctx.training.recompute
    if mode == "full":
        return e * tokens * m.hidden / (t if sp else 1)
    replicated = (
        10.0 * tokens * m.hidden
    )  # 2 norm inputs, QKV and FC1 inputs (2 bytes), 2 dropout masks (1 byte)
    if sp:
        replicated /= t
    q, kv = m.q_hidden, m.kv_hidden
    ffn = m.expert_ffn if moe else m.ffn_hidden
    ffn1 = 2 * ffn if m.gated_mlp else ffn
    mlp_tokens = tokens * (m.moe.top_k * ctx.expert_load_factor if moe and m.moe else 1)
    split = e * tokens * (q + kv + kv + q) + e * mlp_tokens * (ffn1 + ffn)
    split /= t
    heads = m.heads / t
    if ctx.training.flash_attention or mode == "selective":
        scores = 4.0 * heads * tokens * ctx.training.micro_batch  # fp32 softmax statistics (flash)
    else:
        scores = 5.0 * heads * ctx.training.seq_len * tokens  # softmax out, dropout mask, dropout out
    return replicated + split + scores


def activation_bytes(ctx: BuildContext, layers_on_rank: list[bool], in_flight: float,
                     has_head: bool, has_embedding: bool) -> float:  # fmt: skip
    """Activations held at the peak: ``in_flight`` micro-batches of the rank's layers (``True`` = MoE),
    plus one layer's full activations being recomputed under full recompute, plus the output layer's logits."""
    per_mb = sum(layer_activation_bytes(ctx, moe) for moe in layers_on_rank)
    total = per_mb * in_flight
    if ctx.training.recompute == "full" and layers_on_rank:
        full = BuildContext(ctx.model, ctx.compute, ctx.training.model_copy(update={"recompute": "none"}),
                            ctx.par, ctx.dims, ctx.expert_load_factor)  # fmt: skip
        total += max(layer_activation_bytes(full, moe) for moe in layers_on_rank)
    if has_head:
        vocab_shard = ctx.model.vocab / ctx.tp
        total += ctx.tokens * vocab_shard * (2 + 4)  # 16-bit logits and their fp32 softmax for the loss
    if has_embedding:
        total += ctx.tokens * ctx.model.hidden * 2.0
    return total


def memory_per_gpu(ctx: BuildContext, params: ParameterCount, local_params: float, shard: int,
                   layers_on_rank: list[bool], in_flight: float, has_head: bool,
                   has_embedding: bool) -> MemoryBreakdown:  # fmt: skip
    """The memory breakdown of one rank."""
    w, g, o = model_state_bytes(ctx, local_params, shard)
    act = activation_bytes(ctx, layers_on_rank, in_flight, has_head, has_embedding)
    bucket = ctx.par.grad_bucket_mb * 1e6 * 2  # DDP keeps two buckets in flight
    return MemoryBreakdown(w, g, o, act, FRAMEWORK_RESERVE_BYTES + bucket)
