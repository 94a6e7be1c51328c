"""Transformer model shapes: the typed record every later stage reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MoESpec:
    """Mixture-of-experts FFN: ``experts`` routed experts, ``top_k`` per token, on every ``every``-th layer."""

    experts: int
    top_k: int
    capacity_factor: float | None = None  # None = dropless (tokens are never dropped)
    every: int = 1
    shared_experts: int = 0
    expert_ffn_hidden: int | None = None  # None = the model's ffn_hidden
    first_dense_layers: int = 0  # leading layers with a dense FFN (DeepSeek-V3 has 3)
    # Group-limited routing (DeepSeek-V2/V3 n_group / topk_group; Megatron-Core moe_router_num_groups /
    # moe_router_group_topk): the experts in ``router_groups`` contiguous groups, a token's top-k taken from its
    # best ``router_group_topk`` groups
    router_groups: int = 1
    router_group_topk: int = 1


@dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention dimensions (DeepSeek-V3 config_671B.json names)."""

    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@dataclass(frozen=True)
class SlidingWindowSpec:
    """Local attention of ``size`` tokens on layers ``first, first + every, ...`` (0-based)."""

    size: int
    every: int = 1
    first: int = 0


@dataclass(frozen=True)
class ModelSpec:
    """Decoder-only transformer shape. ``kv_heads < heads`` is GQA; ``gated_mlp`` is SwiGLU (3 matrices)."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn_hidden: int
    vocab: int
    gated_mlp: bool = False
    moe: MoESpec | None = None
    head_dim: int | None = None  # None = hidden // heads
    tied_embeddings: bool = False
    linear_bias: bool = True  # GPT-2/3 and Megatron GPT have biases; Llama has none
    activation: str = "gelu"  # gelu, swiglu (gated), squared_relu (Nemotron), relu
    position_embedding: str | None = None  # rope, learned, alibi, none; None = not stated
    mla: MLASpec | None = None  # multi-head latent attention; None = MHA/GQA
    sliding_window: SlidingWindowSpec | None = None
    attention_sinks: bool = False
    mtp_layers: int = 0  # multi-token-prediction modules (DeepSeek-V3: 1)
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    source: str = ""

    @property
    def d_head(self) -> int:
        """Per-head dimension."""
        return self.head_dim if self.head_dim is not None else self.hidden // self.heads

    @property
    def kv_hidden(self) -> int:
        """Width of the K (or V) projection: kv_heads × head dim."""
        return self.kv_heads * self.d_head

    @property
    def q_hidden(self) -> int:
        """Width of the Q projection and of the attention output: heads × head dim."""
        return self.heads * self.d_head

    @property
    def qk_head_dim(self) -> int:
        """Per-head width of queries and keys: MLA's no-rope + rope parts (DeepSeek-V3: 128 + 64 = 192)."""
        return self.mla.qk_nope_head_dim + self.mla.qk_rope_head_dim if self.mla else self.d_head

    @property
    def v_head_dim(self) -> int:
        """Per-head width of values and of the attention output (DeepSeek-V3 MLA: 128)."""
        return self.mla.v_head_dim if self.mla else self.d_head

    def attention_window(self, layer: int) -> int | None:
        """Keys a query of 0-based ``layer`` attends to at most (sliding-window layers), None for full context.
        An index past the decoder (a multi-token-prediction layer) takes the last decoder layer's kind."""
        sw = self.sliding_window
        layer = min(layer, self.layers - 1)
        if sw is None or layer < sw.first or (layer - sw.first) % sw.every:
            return None
        return sw.size

    def is_moe_layer(self, layer: int) -> bool:
        """Whether 0-based ``layer`` has a mixture-of-experts FFN."""
        if self.moe is None or layer < self.moe.first_dense_layers:
            return False
        return (layer - self.moe.first_dense_layers) % self.moe.every == 0

    @property
    def expert_ffn(self) -> int:
        """FFN width of one routed expert."""
        assert self.moe is not None
        return self.moe.expert_ffn_hidden or self.ffn_hidden
