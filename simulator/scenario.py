"""Scenario files: schema, loading, ``--set`` overrides, and errors that name the file and the field.

A scenario is parsed once into frozen, typed objects (STYLE.md, point 2). Unknown keys are errors. Values
derived from the input (the data-parallel degree, the resolved model shape) live in the resolved
``Scenario``, never written back into the user's mapping.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from simulator.errors import ScenarioError, shorten
from simulator.files import is_bare_name, parse_yaml, resolve_reference, shipped_file, shipped_names
from simulator.files import read_yaml as read_yaml  # re-exported: sweep and plan read files through it
from simulator.limits import (
    MAX_BATCH,
    MAX_BUCKET_MB,
    MAX_CAPACITY_FACTOR,
    MAX_DEGREE,
    MAX_EXPERTS,
    MAX_FFN_HIDDEN,
    MAX_HEAD_DIM,
    MAX_HEADS,
    MAX_HIDDEN,
    MAX_LAYERS,
    MAX_NODES,
    MAX_SEED,
    MAX_SEQ_LEN,
    MAX_SKEW,
    MAX_STAGES,
    MAX_TRAIN_TOKENS,
    MAX_USD_PER_GPU_HOUR,
    MAX_VOCAB,
)
from simulator.models.catalog import model_catalog, model_names
from simulator.models.spec import MLASpec, ModelSpec, MoESpec, SlidingWindowSpec
from simulator.registry import ALGORITHMS, NETWORK_MODELS, SCHEDULES, Registry
from simulator.topology.loader import check_topology

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]

def _upto(n: int) -> Any:
    """``Field`` of a positive integer at most ``n``."""
    return Field(gt=0, le=n)


class _Strict(BaseModel):
    # allow_inf_nan=False: .inf or .nan for a float is an error, never a silently infinite result (#12).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)


def _registered(registry: Registry[Any], name: str, also: tuple[str, ...] = ()) -> str:
    """``name`` if ``registry`` knows it; else a validation error listing the valid names."""
    if name not in registry:
        raise ValueError(f"unknown {registry.kind} {shorten(name)}; valid: {', '.join([*also, *registry.names()])}")
    return name


# ---------------------------------------------------------------------------------------------- schema
class MoEConfig(_Strict):
    """Mixture-of-experts settings of an inline model."""

    experts: Annotated[int, _upto(MAX_EXPERTS)]
    top_k: Annotated[int, _upto(MAX_EXPERTS)]
    capacity_factor: Annotated[float, Field(gt=0, le=MAX_CAPACITY_FACTOR)] | None = None
    every: Annotated[int, _upto(MAX_LAYERS)] = 1
    shared_experts: Annotated[int, Field(ge=0, le=MAX_EXPERTS)] = 0
    expert_ffn_hidden: Annotated[int, _upto(MAX_FFN_HIDDEN)] | None = None
    first_dense_layers: Annotated[int, Field(ge=0, le=MAX_LAYERS)] = 0
    # group-limited routing (DeepSeek-V3 config n_group 8, topk_group 4; 1 and 1: none)
    router_groups: Annotated[int, _upto(MAX_EXPERTS)] = 1
    router_group_topk: Annotated[int, _upto(MAX_EXPERTS)] = 1

    @model_validator(mode="after")
    def _k_le_e(self) -> MoEConfig:
        if self.top_k > self.experts:
            raise ValueError(f"top_k={self.top_k} exceeds experts={self.experts}")
        g, m = self.router_groups, self.router_group_topk
        if self.experts % g:
            raise ValueError(f"router_groups={g} does not divide experts={self.experts}")
        if m > g:
            raise ValueError(f"router_group_topk={m} exceeds router_groups={g}")
        if g > 1 and self.top_k > m * self.experts // g:
            raise ValueError(f"top_k={self.top_k} exceeds the {m * self.experts // g} experts of router_group_topk={m} "
                             f"groups")
        return self


class MLAConfig(_Strict):
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank compressed queries and keys/values, and a decoupled
    rotary part of each query/key head (DeepSeek-AI 2024, arXiv 2412.19437 s2.1.1; config_671B.json)."""

    q_lora_rank: PosInt
    kv_lora_rank: PosInt
    qk_nope_head_dim: PosInt
    qk_rope_head_dim: PosInt
    v_head_dim: PosInt


class SlidingWindowConfig(_Strict):
    """Sliding-window (local) attention of ``size`` tokens on every ``every``-th layer from layer ``first``
    (0-based); the other layers attend to the full causal context (gpt-oss alternates, starting windowed)."""

    size: PosInt
    every: PosInt = 1
    first: NonNegInt = 0


class ModelConfig(_Strict):
    """An inline model shape (or a catalog entry after lookup)."""

    name: str = "custom"
    layers: Annotated[int, _upto(MAX_LAYERS)]
    hidden: Annotated[int, _upto(MAX_HIDDEN)]
    heads: Annotated[int, _upto(MAX_HEADS)]
    kv_heads: Annotated[int, _upto(MAX_HEADS)] | None = None
    ffn_hidden: Annotated[int, _upto(MAX_FFN_HIDDEN)] | None = None
    vocab: Annotated[int, _upto(MAX_VOCAB)]
    gated_mlp: bool = False
    moe: MoEConfig | None = None
    head_dim: Annotated[int, _upto(MAX_HEAD_DIM)] | None = None
    tied_embeddings: bool = False
    linear_bias: bool = True
    # None: implied by gated_mlp (GeLU, or SwiGLU when gated); squared_relu is Nemotron's (not gated)
    activation: Literal["gelu", "swiglu", "squared_relu", "relu"] | None = None
    position_embedding: Literal["rope", "learned", "alibi", "none"] | None = None  # None: not stated
    mla: MLAConfig | None = None  # None: multi-head / grouped-query attention
    sliding_window: SlidingWindowConfig | None = None
    attention_sinks: bool = False  # a learned per-head softmax sink logit (gpt-oss)
    mtp_layers: NonNegInt = 0  # multi-token-prediction modules after the last layer (DeepSeek-V3: 1)
    # Dropout probabilities (GPT-3 in NeMo: 0.1 and 0.1; Llama, Nemotron, MPT: 0): each is an element-wise kernel
    hidden_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    attention_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    source: str = ""

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        if self.moe is not None and self.moe.first_dense_layers > self.layers:
            raise ValueError(
                f"moe.first_dense_layers={self.moe.first_dense_layers} exceeds layers={self.layers}"
            )
        if self.head_dim is None and self.hidden % self.heads:
            raise ValueError(f"heads={self.heads} does not divide hidden={self.hidden}; give head_dim")
        if self.activation == "swiglu" and not self.gated_mlp:
            raise ValueError("activation swiglu needs gated_mlp: true (SwiGLU is a gated MLP)")
        if self.activation in ("gelu", "squared_relu", "relu") and self.gated_mlp:
            raise ValueError(f"activation {self.activation} is not gated; valid with gated_mlp: true: swiglu")
        if self.mla is not None and self.kv_heads is not None and self.kv_heads != self.heads:
            raise ValueError("mla: latent attention has one key/value head per query head; leave kv_heads out")
        kv = self.kv_heads or self.heads
        if self.heads % kv:
            raise ValueError(f"kv_heads={kv} does not divide heads={self.heads}")
        return self

    def to_spec(self) -> ModelSpec:
        """The immutable model record the later stages use."""
        moe = None
        if self.moe is not None:
            moe = MoESpec(**self.moe.model_dump())
        return ModelSpec(
            name=self.name,
            layers=self.layers,
            hidden=self.hidden,
            heads=self.heads,
            kv_heads=self.kv_heads or self.heads,
            ffn_hidden=self.ffn_hidden or 4 * self.hidden,
            vocab=self.vocab,
            gated_mlp=self.gated_mlp,
            moe=moe,
            head_dim=self.head_dim,
            tied_embeddings=self.tied_embeddings,
            linear_bias=self.linear_bias,
            activation=self.activation or ("swiglu" if self.gated_mlp else "gelu"),
            position_embedding=self.position_embedding,
            mla=MLASpec(**self.mla.model_dump()) if self.mla is not None else None,
            sliding_window=SlidingWindowSpec(**self.sliding_window.model_dump()) if self.sliding_window else None,
            attention_sinks=self.attention_sinks,
            mtp_layers=self.mtp_layers,
            hidden_dropout=self.hidden_dropout,
            attention_dropout=self.attention_dropout,
            source=self.source,
        )


class ExpertLoadConfig(_Strict):
    """How tokens spread over experts: uniform, or Zipf-skewed with exponent ``skew``."""

    distribution: Literal["uniform", "zipf"] = "uniform"
    skew: Annotated[float, Field(ge=0, le=MAX_SKEW)] = 1.0


# Megatron-Core recompute_modules (transformer_config.py): core attention, dense MLP, MoE block, MoE activation,
# layer norms, MLA up-projections, shared experts
RECOMPUTE_MODULES = ("core_attn", "mlp", "moe", "moe_act", "layernorm", "mla_up_proj", "shared_experts")
RecomputeModule = Literal["core_attn", "mlp", "moe", "moe_act", "layernorm", "mla_up_proj", "shared_experts"]
# Fused attention implementations with a kernel model (simulator/hardware/attention.yaml)
AttentionImpl = Literal["fa1", "fa2", "cudnn", "fa3"]
# Megatron-Core --cuda-graph-scope: the whole iteration, or these parts of each layer captured as CUDA graphs
CudaGraphScope = Literal["full_iteration", "attn", "mlp", "moe", "moe_router", "moe_preprocess"]


class TrainingConfig(_Strict):
    """Batch, sequence, precision and recomputation."""

    seq_len: Annotated[int, _upto(MAX_SEQ_LEN)]
    global_batch: Annotated[int, _upto(MAX_BATCH)]
    micro_batch: Annotated[int, _upto(MAX_BATCH)] = 1
    precision: Literal["bf16", "fp16", "fp8", "fp32"] = "bf16"
    recompute: Literal["none", "selective", "full"] = "none"
    flash_attention: bool = True
    optimizer: Literal["adam", "sgd"] = "adam"
    expert_load: ExpertLoadConfig = ExpertLoadConfig()
    # FP8 scaling recipe (precision fp8 only). Transformer Engine: delayed (DelayedScaling, per-tensor amax
    # history), current (Float8CurrentScaling, per tensor), blockwise (Float8BlockScaling, 1x128/128x128 as
    # DeepSeek-V3), mxfp8 (MXFP8BlockScaling, 32-element blocks, Blackwell); torchao float8: tensorwise (dynamic
    # per-tensor, = current) and rowwise. None: not stated.
    fp8_recipe: Literal["delayed", "current", "blockwise", "mxfp8", "rowwise"] | None = None
    # What recompute=selective recomputes: Megatron's core attention (Korthikanti et al. 2022) or torchtitan's
    # per-op policy (saves matmul and attention outputs, recomputes every second matmul and the element-wise
    # ops). None with selective: core_attention.
    selective_recompute: Literal["core_attention", "op_level"] | None = None
    # Megatron-Core --recompute-modules (with recompute selective): which parts of a layer are recomputed
    recompute_modules: list[RecomputeModule] | None = None

    @model_validator(mode="after")
    def _precision_options(self) -> TrainingConfig:
        if self.fp8_recipe is not None and self.precision != "fp8":
            raise ValueError(f"fp8_recipe needs precision fp8 (precision is {self.precision})")
        if self.selective_recompute is not None and self.recompute != "selective":
            raise ValueError(f"selective_recompute needs recompute selective (recompute is {self.recompute})")
        if self.recompute_modules is not None:
            if self.recompute != "selective":
                raise ValueError(f"recompute_modules needs recompute selective (recompute is {self.recompute})")
            if self.selective_recompute == "op_level":
                raise ValueError("recompute_modules are Megatron-Core's; they do not combine with op_level")
            if not self.recompute_modules:
                raise ValueError("recompute_modules is empty; valid: " + ", ".join(RECOMPUTE_MODULES))
        return self


class FrameworkConfig(_Strict):
    """The training framework that ran the step (issue #9: the simulator models its mechanisms, not a speed-up)."""

    name: Literal["megatron-core", "torchtitan", "llm-foundry", "deepspeed"] = "megatron-core"
    version: str = ""  # free text, e.g. "NeMo 24.07", "Megatron-Bridge 25.11", "torchtitan 9dec370"
    compile: bool = False  # torch.compile of the model (torchtitan --training.compile, Composer compile_config)
    # Kernels replayed as CUDA graphs (no per-kernel host launch); empty: none
    cuda_graph_scope: list[CudaGraphScope] = Field(default_factory=list)
    # The fused attention the run was configured to call where that is a user option (llm-foundry
    # attn_config.attn_impl: triton is a FlashAttention-1-class kernel; Transformer Engine NVTE_FLASH_ATTN /
    # NVTE_FUSED_ATTN); None: the framework profile's default
    attention_impl: AttentionImpl | None = None
    # Megatron's --gradient-accumulation-fusion (wgrad GEMMs add into main_grad); None: the profile's default. Runs
    # of Megatron-LM before 83b1e42f (2022-02-16; fp16 before 07916bf2, 2022-09-27) did not have it
    gradient_accumulation_fusion: bool | None = None

    @model_validator(mode="after")
    def _compile(self) -> FrameworkConfig:
        if self.compile and self.name == "megatron-core":
            raise ValueError("compile: true needs a PyTorch-eager framework; valid: torchtitan, llm-foundry, deepspeed")
        if "full_iteration" in self.cuda_graph_scope and len(self.cuda_graph_scope) > 1:
            raise ValueError("cuda_graph_scope full_iteration already captures every kernel; give it alone")
        return self


class ParallelismConfig(_Strict):
    """The parallel layout and the framework options that change its communication."""

    tp: Annotated[int, _upto(MAX_DEGREE)] = 1
    pp: Annotated[int, _upto(MAX_DEGREE)] = 1
    dp: Annotated[int, _upto(MAX_DEGREE)] | None = None  # None: gpus / (tp * pp * cp)
    cp: Annotated[int, _upto(MAX_DEGREE)] = 1
    ep: Annotated[int, _upto(MAX_DEGREE)] = 1
    zero: Literal[0, 1, 2, 3] = 1
    sequence_parallel: bool = False
    schedule: str = "1f1b"
    virtual_stages: Annotated[int, _upto(MAX_STAGES)] = 1
    # layers per pipeline stage, for uneven splits
    pp_layers: Annotated[list[Annotated[int, Field(ge=0, le=MAX_LAYERS)]], Field(max_length=MAX_STAGES)] | None = None
    dp_overlap: bool = True  # bucketed gradient reduction overlapped with backward (PyTorch DDP)
    param_gather_overlap: bool = True  # ZeRO-3 / distributed-optimizer all-gathers prefetched
    tp_comm_overlap: bool = False  # Megatron --tp-comm-overlap
    pp_scatter_gather: bool = True  # Megatron: send 1/tp of the activation, all-gather on NVLink
    cp_algorithm: Literal["ring", "all_gather"] = "ring"
    grad_bucket_mb: Annotated[float, Field(gt=0, le=MAX_BUCKET_MB)] = 25.0  # PyTorch DDP default bucket_cap_mb
    etp: PosInt | None = None  # expert tensor parallelism; None: tp (Megatron-Core's expert_tensor_parallel_size default)
    # Element type of gradient reduction on the wire; None: the data strategy's default (parallel/strategies/data.py)
    grad_reduce_dtype: Literal["fp32", "bf16", "fp16"] | None = None
    # MoE token dispatch (Megatron-Core moe_token_dispatcher_type / flex backend); None: alltoall, its default
    moe_dispatcher: Literal["alltoall", "allgather", "deepep", "hybridep"] | None = None
    moe_a2a_overlap: bool = False  # expert-parallel all-to-all of one micro-batch overlapped with another's compute

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, v: str) -> str:
        return _registered(SCHEDULES, v)


class NetworkConfig(_Strict):
    """Which network model times the communication, and which collective algorithm to use."""

    model: str = "flow"
    algorithm: str = "auto"

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        return _registered(NETWORK_MODELS, v)

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, v: str) -> str:
        return v if v == "auto" else _registered(ALGORITHMS, v, also=("auto",))


class EngineConfig(_Strict):
    """Simulation options: ``symmetric`` simulates one rank per class, ``full`` every rank."""

    mode: Literal["symmetric", "full"] = "symmetric"
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    # Fold tensor-parallel collectives that stay inside one host (and share no link with other traffic)
    # into compute ops, at their uncontended network time: same result, far fewer events.
    fuse_local_comm: bool = True


# the suffixes clustersim plan's quantities take (simulator/planning/scaling.py), for cost.train_tokens
TOKEN_SUFFIXES = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12, "P": 1e15}


class CostConfig(_Strict):
    """Prices used for cost estimates (cloud prices move; make them explicit)."""

    usd_per_gpu_hour: Annotated[float, Field(ge=0, le=MAX_USD_PER_GPU_HOUR)] = 2.5
    # Tokens the whole run trains (e.g. 15e12 for Llama 3's 15T): with it the report gives the run's days and
    # dollars at the simulated step (issue #10, point 1); without it only the $ per million tokens.
    train_tokens: Annotated[float, Field(gt=0, le=MAX_TRAIN_TOKENS)] | None = None

    @field_validator("train_tokens", mode="before")
    @classmethod
    def _token_count(cls, v: object) -> object:
        """``15T`` as ``clustersim plan --tokens`` takes it (K, M, B or G, T, P); a number as it is."""
        if isinstance(v, str) and v.strip()[-1:].upper() in TOKEN_SUFFIXES:
            head = v.strip()[:-1]
            try:
                return float(head) * TOKEN_SUFFIXES[v.strip()[-1].upper()]
            except ValueError:
                raise ValueError("not a token count (e.g. 15e12 or 15T)") from None
        return v


class ClusterRef(_Strict):
    """A cluster: a topology file plus overrides of its top-level keys (``nodes`` above all)."""

    topology: str | dict[str, Any]
    nodes: Annotated[int, _upto(MAX_NODES)] | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)


class ScenarioConfig(_Strict):
    """The scenario file, as written by the user."""

    name: str | None = None
    description: str = ""
    model: str | ModelConfig
    cluster: str | ClusterRef
    training: TrainingConfig
    framework: FrameworkConfig = FrameworkConfig()
    parallelism: ParallelismConfig = ParallelismConfig()
    network: NetworkConfig = NetworkConfig()
    engine: EngineConfig = EngineConfig()
    cost: CostConfig = CostConfig()

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str | ModelConfig) -> str | ModelConfig:
        if isinstance(v, str) and v not in model_catalog():
            raise ValueError(f"unknown model {shorten(v)}; valid: {', '.join(model_names())}, or an inline mapping")
        return v


# --------------------------------------------------------------------------------------- resolved form
class Scenario(BaseModel):
    """A validated scenario with its model resolved and its paths made absolute."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    file: str  # where it came from ("<inline>" for programmatic scenarios)
    config: ScenarioConfig
    model: ModelSpec
    topology: dict[str, Any]  # the topology document with overrides applied (built by simulator.topology)
    topology_file: str

    @property
    def training(self) -> TrainingConfig:
        """Shortcut to the training section."""
        return self.config.training

    @property
    def parallelism(self) -> ParallelismConfig:
        """Shortcut to the parallelism section."""
        return self.config.parallelism

    def content_hash(self) -> str:
        """Stable hash of everything that determines the simulation result (for the results store)."""
        doc = {
            "config": self.config.model_dump(mode="json"),
            "model": self.model.__dict__ | {"moe": self.model.moe.__dict__ if self.model.moe else None},
            "topology": self.topology,
        }
        doc["config"].pop("name", None)
        doc["config"].pop("description", None)
        blob = json.dumps(doc, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()


# ----------------------------------------------------------------------------------------------- errors
def _describe_error(err: dict[str, Any]) -> tuple[str, str]:
    """(field path, message) of one pydantic error, in words a user understands."""
    loc = [str(p) for p in err.get("loc", ()) if not str(p).startswith(("function-", "union["))]
    # pydantic puts the union member name in the location ("str", "ModelConfig"); drop it
    loc = [p for p in loc if p not in {"str", "ModelConfig", "ClusterRef", "dict[str,any]", "int", "float"}]
    field = ".".join(loc)
    kind = err.get("type", "")
    value = err.get("input")
    msg = str(err.get("msg", "invalid value"))
    if kind == "extra_forbidden":
        return field, "unknown key"
    if kind == "missing":
        return field, "required key is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    shown = shorten(value) if not isinstance(value, dict | list) else type(value).__name__
    return field, f"{msg} (got {shown})"


def _raise_validation(e: ValidationError, file: str) -> None:
    errors = e.errors()
    # A union (str | mapping) reports one error per member; show the most specific one.
    errors.sort(key=lambda er: (er.get("type") == "string_type", -len(er.get("loc", ()))))
    field, msg = _describe_error(dict(errors[0]))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise ScenarioError(msg + more, file=file, field=field or None) from None


# ---------------------------------------------------------------------------------------------- loading
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"parallelism.tp=4"`` → (``["parallelism", "tp"]``, ``4``); the value is parsed as YAML."""
    if "=" not in text:
        raise ScenarioError(f"override {shorten(text)} is not KEY=VALUE (e.g. parallelism.tp=4)", field="--set")
    key, _, raw = text.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ScenarioError(f"override {shorten(text)} has an empty key", field="--set")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:  # not YAML (or past its bounds): the text itself, which the schema then checks
        value = raw
    return path, value


def apply_override(doc: dict[str, Any], path: list[str], value: Any, *, file: str = "--set") -> None:
    """Set ``doc[path] = value`` in place, expanding a catalog model name or a cluster path into a
    mapping when the override reaches inside it (``model.layers=48``, ``cluster.nodes=64``)."""
    node: Any = doc
    for i, key in enumerate(path[:-1]):
        nxt = node.get(key) if isinstance(node, dict) else None
        if nxt is None:
            nxt = {}
        elif isinstance(nxt, str) and i == 0 and key == "model":
            entry = model_catalog().get(nxt)
            if entry is None:
                raise ScenarioError(f"unknown model {nxt!r}", file=file, field="model")
            nxt = {"name": nxt, **copy.deepcopy(entry)}
        elif isinstance(nxt, str) and i == 0 and key == "cluster":
            nxt = {"topology": nxt}
        elif not isinstance(nxt, dict):
            dotted = ".".join(path[: i + 1])
            raise ScenarioError(f"cannot set {'.'.join(path)}: {dotted} is not a mapping", field=dotted)
        node[key] = nxt
        node = nxt
    if not isinstance(node, dict):
        raise ScenarioError(f"cannot set {'.'.join(path)}", field=".".join(path))
    node[path[-1]] = value


def _resolve_path(ref: str, base_dir: Path, *, file: str, field: str) -> Path:
    """A topology reference: a path relative to the scenario file, or the bare name of a shipped topology
    (``dgx-h100``). Not found: an error naming the scenario file, its field and the path."""
    return resolve_reference(ref, base_dir, kind="topologies", what="topology file", file=file, field=field)


def _load_topology(cluster: str | ClusterRef, base_dir: Path, file: str) -> tuple[dict[str, Any], str]:
    ref = cluster if isinstance(cluster, ClusterRef) else ClusterRef(topology=cluster)
    if isinstance(ref.topology, dict):
        doc, where = copy.deepcopy(ref.topology), f"{file} (inline cluster)"
    else:
        field = "cluster.topology" if isinstance(cluster, ClusterRef) else "cluster"
        path = _resolve_path(ref.topology, base_dir, file=file, field=field)
        raw = read_yaml(path, "topology file")
        if not isinstance(raw, dict):
            raise ScenarioError("a topology file must be a mapping", file=str(path))
        doc, where = raw, str(path)
    for key, value in ref.overrides.items():
        doc[key] = value
    if ref.nodes is not None:
        doc["nodes"] = ref.nodes
    if ref.overrides:  # a mistake in the overrides is the scenario's: name it, not the topology file
        try:
            check_topology(copy.deepcopy(doc), file=where)
        except ScenarioError as e:
            raise ScenarioError(
                f"the topology with these overrides is not valid: {e.one_line()}", file=file, field="cluster.overrides"
            ) from None
    return doc, where


def scenario_from_dict(raw: Any, *, file: str = "<inline>", base_dir: Path | None = None) -> Scenario:
    """Validate a scenario mapping (already overridden) into a resolved ``Scenario``."""
    if not isinstance(raw, dict):
        raise ScenarioError("a scenario must be a YAML mapping of keys to values", file=file)
    try:
        cfg = ScenarioConfig.model_validate(raw)
    except ValidationError as e:
        _raise_validation(e, file)
    if isinstance(cfg.model, str):
        entry = {"name": cfg.model, **model_catalog()[cfg.model]}
        try:
            spec = ModelConfig.model_validate(entry).to_spec()
        except ValidationError as e:
            _raise_validation(e, f"model catalog entry {cfg.model}")
    else:
        spec = cfg.model.to_spec()
    base = base_dir if base_dir is not None else Path.cwd()
    topology, topology_file = _load_topology(cfg.cluster, base, file)
    name = cfg.name or (Path(file).stem if file != "<inline>" else spec.name)
    return Scenario(
        name=name, file=file, config=cfg, model=spec, topology=topology, topology_file=topology_file
    )


def _is_there(path: Path) -> bool:
    """Whether something is at ``path``; an unusable name (too long ...) counts as there, so that reading
    it reports why."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return True


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read, override and validate a scenario file: a path, or the bare name of a shipped scenario
    (``quickstart``, ``gpt3-175b-1024-a100``) when no file of that name is in the current folder."""
    p = Path(path)
    if is_bare_name(str(path)) and not _is_there(p):  # a bare name only (simulator/files.py's rule)
        shipped = shipped_file("scenarios", str(path))
        if shipped is None:
            names = ", ".join(shipped_names("scenarios")) or "none installed"
            raise ScenarioError(
                f"no such scenario file, and no shipped scenario of that name; shipped: {names}", file=str(p)
            )
        p = shipped
    raw = read_yaml(p, "scenario file")
    if raw is None:
        raise ScenarioError("the scenario file is empty", file=str(p))
    if not isinstance(raw, dict):
        raise ScenarioError("a scenario must be a YAML mapping of keys to values", file=str(p))
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(raw, keys, value)
    return scenario_from_dict(raw, file=str(p), base_dir=p.resolve().parent)
