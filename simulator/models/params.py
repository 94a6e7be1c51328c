"""Parameter counts of a decoder-only transformer (``ModelSpec``): total, active per token, and per part.

Conventions (each checked against published totals in tests/test_catalogs.py):

* Attention: Q and O are ``hidden x heads*head_dim``; K and V are ``hidden x kv_heads*head_dim`` (GQA).
* MLP: two matrices ``hidden x ffn`` (GeLU), three when ``gated_mlp`` (SwiGLU: gate, up, down).
* ``linear_bias``: every linear layer has a bias, and the norms are LayerNorm (weight and bias, 2h), as in
  GPT-2/3 and Megatron GPT (Narayanan et al. 2021 count 13h per layer: 9h of biases + two LayerNorms).
  Without biases the norms are RMSNorm (weight only, h), as in Llama.
* Two norms per layer plus a final norm. The token embedding is ``vocab x hidden``; the output layer adds
  another ``vocab x hidden`` unless ``tied_embeddings``. Learned absolute position embeddings (GPT-3,
  Megatron GPT) are not part of ``ModelSpec``; pass ``learned_positions`` (their count, the sequence
  length) to include them.
* MoE layers: ``experts`` routed experts of width ``expert_ffn``, ``shared_experts`` shared experts of the
  same width, and a router ``hidden x experts`` (no bias). A token uses ``top_k`` routed experts plus all
  shared experts; active parameters count those, attention, norms, embedding and output layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.models.spec import ModelSpec


@dataclass(frozen=True)
class ParameterCount:
    """Parameter counts of a model (numbers of weights, not bytes)."""

    total: int
    active: int  # used per token (MoE: top_k routed + shared experts); equals total for dense models
    embedding: int  # token embedding, plus learned position embeddings when given
    output: int  # output projection; 0 when tied to the embedding
    final_norm: int
    attention_per_layer: int  # Q, K, V, O weights (+ biases)
    norms_per_layer: int  # the two pre-attention / pre-MLP norms
    dense_mlp_per_layer: int  # FFN of a dense (non-MoE) layer
    expert_params: int  # one routed expert
    shared_experts_per_layer: int  # all shared experts of one MoE layer
    router_per_layer: int
    experts: int  # routed experts per MoE layer (0 for a dense model)
    top_k: int
    dense_layers: int
    moe_layers: int

    @property
    def dense_layer(self) -> int:
        """Parameters of one dense transformer layer."""
        return self.attention_per_layer + self.norms_per_layer + self.dense_mlp_per_layer

    @property
    def moe_layer(self) -> int:
        """Parameters of one MoE transformer layer (all routed experts); 0 for a dense model."""
        if self.moe_layers == 0:
            return 0
        return self.attention_per_layer + self.norms_per_layer + self.moe_mlp_per_layer

    @property
    def moe_mlp_per_layer(self) -> int:
        """FFN parameters of one MoE layer: every routed expert, shared experts and router."""
        return self.routed_experts_per_layer + self.shared_experts_per_layer + self.router_per_layer

    @property
    def routed_experts_per_layer(self) -> int:
        """All routed experts of one MoE layer."""
        return self.expert_params * self.experts

    @property
    def non_embedding(self) -> int:
        """Parameters outside the embedding and output layers (Kaplan et al. 2020's N)."""
        return self.total - self.embedding - self.output


def _attention(spec: ModelSpec) -> int:
    h, q, kv = spec.hidden, spec.q_hidden, spec.kv_hidden
    weights = h * q + 2 * h * kv + q * h
    biases = (q + 2 * kv + h) if spec.linear_bias else 0
    return weights + biases


def _mlp(spec: ModelSpec, ffn: int) -> int:
    h = spec.hidden
    if spec.gated_mlp:
        return 3 * h * ffn + ((2 * ffn + h) if spec.linear_bias else 0)
    return 2 * h * ffn + ((ffn + h) if spec.linear_bias else 0)


def _norm(spec: ModelSpec) -> int:
    return 2 * spec.hidden if spec.linear_bias else spec.hidden


def parameter_count(spec: ModelSpec, *, learned_positions: int = 0) -> ParameterCount:
    """Total, per-token active and per-part parameter counts of ``spec`` (numbers of weights)."""
    moe_layers = sum(spec.is_moe_layer(i) for i in range(spec.layers))
    dense_layers = spec.layers - moe_layers
    attention = _attention(spec)
    norms = 2 * _norm(spec)
    dense_mlp = _mlp(spec, spec.ffn_hidden)
    expert = shared = router = top_k = n_experts = 0
    if spec.moe is not None and moe_layers:
        expert = _mlp(spec, spec.expert_ffn)
        shared = spec.moe.shared_experts * expert
        router = spec.hidden * spec.moe.experts
        top_k = spec.moe.top_k
        n_experts = spec.moe.experts
    embedding = spec.vocab * spec.hidden + learned_positions * spec.hidden
    output = 0 if spec.tied_embeddings else spec.vocab * spec.hidden
    final_norm = _norm(spec)
    outside = embedding + output + final_norm
    dense_layer = attention + norms + dense_mlp
    moe_total = attention + norms + n_experts * expert + shared + router
    moe_active = attention + norms + top_k * expert + shared + router
    return ParameterCount(
        total=outside + dense_layers * dense_layer + moe_layers * moe_total,
        active=outside + dense_layers * dense_layer + moe_layers * moe_active,
        embedding=embedding,
        output=output,
        final_norm=final_norm,
        attention_per_layer=attention,
        norms_per_layer=norms,
        dense_mlp_per_layer=dense_mlp,
        expert_params=expert,
        shared_experts_per_layer=shared,
        router_per_layer=router,
        experts=n_experts,
        top_k=top_k,
        dense_layers=dense_layers,
        moe_layers=moe_layers,
    )
