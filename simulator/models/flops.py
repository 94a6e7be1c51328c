"""Model FLOPs: the counting conventions behind MFU and behind published throughput figures.

clustersim's MFU convention (documented in the README): model FLOPs per token =
6 × (matrix parameters a token passes through: attention and MLP projections of the top-k routed and
shared experts, router, output layer; not the embedding lookup) + attention scores and weighted sum
(2 GEMMs of 2·s·d per head and layer, ×3 for forward and backward) halved for causal masking, since fused
kernels skip the masked half (REFERENCE.md; Kaplan et al. 2020 for 6N; PaLM appendix B for attention).
Recomputation never counts (HFU counts it).
"""

from __future__ import annotations

from simulator.models.params import parameter_count
from simulator.models.spec import ModelSpec


def matmul_params_per_token(spec: ModelSpec) -> float:
    """Weights a token multiplies with: every layer's projections (top-k experts for MoE) + output layer."""
    p = parameter_count(spec)
    per_layer_attn = p.attention_per_layer
    dense = p.dense_layers * (per_layer_attn + p.dense_mlp_per_layer)
    moe = p.moe_layers * (
        per_layer_attn + p.top_k * p.expert_params + p.shared_experts_per_layer + p.router_per_layer
    )
    output = spec.vocab * spec.hidden  # tied or not, the logits GEMM runs
    return float(dense + moe + output)


def model_flops_per_token(spec: ModelSpec, seq_len: int, causal: bool = True) -> float:
    """Training FLOPs (forward + backward) per token under clustersim's convention."""
    attn = 12.0 * spec.layers * seq_len * spec.q_hidden  # 2 GEMMs × 2·s·(heads·d) fwd, ×3 fwd+bwd
    if causal:
        attn /= 2
    return 6.0 * matmul_params_per_token(spec) + attn


def narayanan_flops_per_iteration(spec: ModelSpec, batch: int, seq_len: int, full_recompute: bool) -> float:
    """Megatron SC'21 (Narayanan et al. 2021, Appendix) FLOPs per iteration, as its Table 1 counts them:
    96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h)) with full recomputation, 72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h))
    without."""
    b, s, n_layers, h, v = batch, seq_len, spec.layers, spec.hidden, spec.vocab
    if full_recompute:
        return 96.0 * b * s * n_layers * h * h * (1 + s / (6 * h) + v / (16 * n_layers * h))
    return 72.0 * b * s * n_layers * h * h * (1 + s / (6 * h) + v / (12 * n_layers * h))


def megatron_flops_per_iteration(spec: ModelSpec, batch: int, seq_len: int) -> float:
    """Megatron-LM's ``num_floating_point_operations`` (megatron/training/training.py, 2024 form used by the
    MCore r0.8.0 README table; see docs/research-notes.md (e)): no recompute, non-causal attention,
    MoE by top-k, logits once."""
    h, n_layers = spec.hidden, spec.layers
    q_ratio = spec.q_hidden / h
    k = spec.moe.top_k if spec.moe else 1
    gated = 1.5 if spec.gated_mlp else 1.0
    ffn = spec.expert_ffn if spec.moe else spec.ffn_hidden
    attention = (1 + spec.kv_heads / spec.heads + seq_len / h) * q_ratio
    mlp = (ffn / h) * k * gated
    logit = spec.vocab / (2 * n_layers * h)
    return 12.0 * batch * seq_len * n_layers * h * h * (attention + mlp + logit)
