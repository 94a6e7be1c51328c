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
  Published "active" figures leave the embedding lookup out (``active_without_embedding``: gpt-oss-120b's
  5.1B, OpenAI model card Aug 2025; DeepSeek-V3's 36.6B, its README_WEIGHTS.md, the paper's "37B").
* Multi-head latent attention (``mla``; DeepSeek-V3, arXiv 2412.19437 Sec. 2.1.1, config_671B.json, and
  modeling ``MLA``): q down-projection ``hidden x q_lora_rank``, its RMSNorm, q up-projection
  ``q_lora_rank x heads*(nope+rope)``; the joint kv down-projection with the decoupled rope key
  ``hidden x (kv_lora_rank + rope)``, its RMSNorm, kv up-projection ``kv_lora_rank x heads*(nope+v)``; output
  ``heads*v x hidden``; no biases (DeepSeek-V3 has none). 187.1M per layer for DeepSeek-V3.
* Attention sinks (gpt-oss): one learned logit per head and layer (``sinks``, shape [heads]).
* Multi-token prediction (DeepSeek-V3 Sec. 2.2; README_WEIGHTS.md "MTP Modules"): per module two RMSNorms
  (``enorm``, ``hnorm``), the projection ``eh_proj`` (2·hidden → hidden, no bias), one transformer layer of
  the decoder's last layer's kind and its own final norm (``shared_head.norm``); the embedding and output
  head are shared with the main model and not counted again. ``total`` is the main model, as published
  (671B); ``total_with_mtp`` adds the modules; the Hugging Face checkpoint also stores the module's copies
  of the shared embedding and head (``checkpoint_total``: its "685B").
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
    mtp_modules: int = 0  # multi-token-prediction modules
    mtp_per_module: int = 0  # one module's own parameters (norms, eh_proj, its layer), embedding/head shared
    mtp_active_per_module: int = 0  # of those, what a token uses (its layer's top-k experts)
    mtp_moe: bool = False  # whether the module's transformer layer has a mixture-of-experts FFN

    @property
    def mtp(self) -> int:
        """Own parameters of all multi-token-prediction modules."""
        return self.mtp_modules * self.mtp_per_module

    @property
    def total_with_mtp(self) -> int:
        """The main model and its multi-token-prediction modules (embedding and head counted once)."""
        return self.total + self.mtp

    @property
    def checkpoint_total(self) -> int:
        """What a checkpoint storing each MTP module's copy of the shared embedding and head holds
        (DeepSeek-V3's Hugging Face files: model.layers.61.embed_tokens and shared_head.head)."""
        return self.total_with_mtp + self.mtp_modules * (self.embedding + (self.output or self.embedding))

    @property
    def active_without_embedding(self) -> int:
        """Active parameters less the embedding lookup (a gather, not a matrix product), as model cards count."""
        return self.active - self.embedding

    @property
    def mtp_layer(self) -> int:
        """The transformer layer inside one MTP module."""
        return self.moe_layer if self.mtp_moe else self.dense_layer

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


def mla_matrices(spec: ModelSpec) -> int:
    """Weights of MLA's five projections (no norms): q down/up, kv down (with the rope key)/up, output."""
    m, h, n = spec.mla, spec.hidden, spec.heads
    assert m is not None
    q = h * m.q_lora_rank + m.q_lora_rank * n * (m.qk_nope_head_dim + m.qk_rope_head_dim)
    kv = h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank * n * (m.qk_nope_head_dim + m.v_head_dim)
    return q + kv + n * m.v_head_dim * h


def _attention(spec: ModelSpec) -> int:
    sinks = spec.heads if spec.attention_sinks else 0
    if spec.mla is not None:  # + the RMSNorms of the compressed q and kv (weights only)
        return mla_matrices(spec) + spec.mla.q_lora_rank + spec.mla.kv_lora_rank + sinks
    h, q, kv = spec.hidden, spec.q_hidden, spec.kv_hidden
    weights = h * q + 2 * h * kv + q * h
    biases = (q + 2 * kv + h) if spec.linear_bias else 0
    return weights + biases + sinks


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
    # an MTP module's layer is built like the decoder's last layer (Megatron-Core get_gpt_mtp_block_spec
    # takes the block's last layer spec; DeepSeek-V3's model.layers.61 is a MoE layer)
    mtp_moe = spec.mtp_layers > 0 and spec.is_moe_layer(spec.layers - 1)
    mtp_own = 3 * _norm(spec) + 2 * spec.hidden * spec.hidden  # enorm, hnorm, final norm; eh_proj 2h → h
    mtp_layer, mtp_layer_active = (moe_total, moe_active) if mtp_moe else (dense_layer, dense_layer)
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
        mtp_modules=spec.mtp_layers,
        mtp_per_module=mtp_own + mtp_layer if spec.mtp_layers else 0,
        mtp_active_per_module=mtp_own + mtp_layer_active if spec.mtp_layers else 0,
        mtp_moe=mtp_moe,
    )
