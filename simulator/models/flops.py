"""Model FLOPs: the counting conventions behind MFU and behind published throughput figures.

clustersim's MFU convention (documented in the README), per token of training (forward + backward):

* 6 × the weight-matrix parameters the token multiplies with (2 forward, 4 backward: Kaplan et al. 2020):
  Q and O (hidden × heads·head_dim), K and V (hidden × kv_heads·head_dim, so GQA counts only its smaller
  K/V projections), the MLP (2 matrices hidden × ffn, or 3 for a gated SwiGLU MLP), and for a
  mixture-of-experts layer the router (hidden × experts), the top-k routed experts and the shared experts
  (its active parameters, not all experts), plus the output layer (vocab × hidden, tied or not). Biases,
  norms and the embedding lookup are not matrix products and do not count.
* Attention scores and weighted sum: 2 GEMMs of 2·s·d FLOPs per head, query and layer forward, ×3 for
  forward + backward, i.e. 12·L·s·(heads·d) per token non-causal (PaLM appendix B), halved for causal
  masking, since fused kernels skip the masked half (docs/reference.md, "FLOPs").
* Multi-head latent attention (DeepSeek-V3, arXiv 2412.19437 Sec. 2.1.1): its five projections
  (``params.mla_matrices``) replace Q, K, V and O; the score GEMM runs at the qk head dim (nope + rope,
  192) and the weighted sum at the v head dim (128): 6·s·heads·(d_qk + d_v) per token and layer, halved causal.
* Sliding-window layers (``model.attention_window``): a query at position i sees min(i + 1, w) keys, so a
  causal layer's keys per query average (w·s − w(w − 1)/2)/s ≈ w instead of ≈ s/2 (Beltagy et al. 2020,
  Longformer, Sec. 3.1: local attention is O(s·w)). Attention sinks add one logit per head and query row
  (gpt-oss): against 4·w·d FLOPs of the two GEMMs per row (w = 128, d = 64: 32,768) it is below 1e-4 of
  the core and not counted.
* Multi-token prediction (DeepSeek-V3 Sec. 2.2): each module's projection (2·hidden → hidden), its layer
  (attention and the active FFN, as above) and the shared output layer run once more per token.

MFU = these model FLOPs per step ÷ (step time × GPUs × dense peak at the training precision). Recomputation
never counts in MFU; HFU counts what the GPUs execute (recomputed forwards, flash attention's extra
backward GEMM, unmasked attention without flash), read from the simulated kernels.
"""

from __future__ import annotations

from simulator.models.params import mla_matrices, parameter_count
from simulator.models.spec import ModelSpec


def _attention_matrices(spec: ModelSpec) -> int:
    if spec.mla is not None:
        return mla_matrices(spec)
    h, q, kv = spec.hidden, spec.q_hidden, spec.kv_hidden
    return h * q + 2 * h * kv + q * h


def keys_per_query(spec: ModelSpec, layer: int, seq_len: int, causal: bool = True) -> float:
    """Mean keys a query of ``layer`` attends to: s (s/2 causal, the masked half skipped), or for a
    sliding-window layer of w < s keys (w·s − w(w − 1)/2)/s causal, w otherwise."""
    w = spec.attention_window(layer)
    if w is None or w >= seq_len:
        return seq_len / 2 if causal else float(seq_len)
    return (w * seq_len - w * (w - 1) / 2) / seq_len if causal else float(w)


def _mlp_matrices(spec: ModelSpec, ffn: int) -> int:
    return (3 if spec.gated_mlp else 2) * spec.hidden * ffn


def matmul_params_per_token(spec: ModelSpec) -> float:
    """Weight-matrix parameters a token multiplies with: every layer's projections (router, top-k routed
    and shared experts for MoE layers) and the output layer."""
    p = parameter_count(spec)
    attn = _attention_matrices(spec)
    dense = p.dense_layers * (attn + _mlp_matrices(spec, spec.ffn_hidden))
    moe = 0
    if spec.moe is not None and p.moe_layers:
        expert = _mlp_matrices(spec, spec.expert_ffn)
        active = (spec.moe.top_k + spec.moe.shared_experts) * expert + spec.hidden * spec.moe.experts
        moe = p.moe_layers * (attn + active)
    output = spec.vocab * spec.hidden  # tied or not, the logits GEMM runs
    mtp = 0
    if spec.mtp_layers:  # eh_proj, the module's layer, the shared output layer again
        layer = attn + (active if p.mtp_moe else _mlp_matrices(spec, spec.ffn_hidden))
        mtp = spec.mtp_layers * (2 * spec.hidden * spec.hidden + layer + output)
    return float(dense + moe + output + mtp)


def model_flops_per_token(spec: ModelSpec, seq_len: int, causal: bool = True) -> float:
    """Training FLOPs (forward + backward) per token under clustersim's convention."""
    # 2 GEMMs × 2·keys·(heads·d) forward, ×3 forward + backward; MTP layers as the last decoder layer
    per_key = 6.0 * spec.heads * (spec.qk_head_dim + spec.v_head_dim)
    layers = range(spec.layers + spec.mtp_layers)
    attn = per_key * sum(keys_per_query(spec, i, seq_len, causal) for i in layers)
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
