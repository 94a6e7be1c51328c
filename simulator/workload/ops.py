"""The ops of a per-rank program, as the engine executes them.

A program is what one rank does in one optimizer step: ops on named streams (like CUDA streams), each op
waiting for its dependencies and for the previous op of its stream. Three op types, as in docs/design.md:

* ``Compute``: a kernel (or a fused run of kernels) with a known duration from the compute model;
* ``Collective``: an NCCL-style collective over a process group named by its parallel dimension;
* ``SendRecv``: one side of a point-to-point transfer with a peer rank (pipeline or ring attention).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class CommKind(StrEnum):
    """Which parallelism a communication serves (the JSON report's ``comm`` keys)."""

    TP = "tp"
    DP = "dp"
    PP = "pp"
    EP = "ep"
    CP = "cp"


class Axis(StrEnum):
    """A process-group axis of the parallel plan (``ParallelPlan.groups``): the mesh dimensions and the
    combined groups Megatron-Core reduces over."""

    TP = "tp"
    CP = "cp"
    DP = "dp"
    PP = "pp"
    EP = "ep"
    EDP = "edp"  # expert data parallel: the ranks holding the same experts (expert-gradient reduction)
    DPCP = "dpcp"  # dp × cp: the dense-gradient reduction group when cp > 1
    TPCP = "tpcp"  # tp × cp


class CollectiveKind(StrEnum):
    """NCCL collective operations."""

    ALL_REDUCE = "all_reduce"
    REDUCE_SCATTER = "reduce_scatter"
    ALL_GATHER = "all_gather"
    ALL_TO_ALL = "all_to_all"
    BROADCAST = "broadcast"
    SEND_RECV = "send_recv"


class Category(StrEnum):
    """What a compute op is for; decides how the reports count it."""

    FORWARD = "forward"
    BACKWARD = "backward"  # input-gradient and weight-gradient together
    BACKWARD_INPUT = "backward_input"  # zero-bubble B
    BACKWARD_WEIGHT = "backward_weight"  # zero-bubble W
    RECOMPUTE = "recompute"
    OPTIMIZER = "optimizer"


@dataclass(frozen=True, slots=True)
class Compute:
    """A compute kernel (or fused run of kernels) on the ``compute`` stream.

    ``model_flops`` counts only what the model needs (no recomputation; MFU), ``hw_flops`` what the GPU
    executes (HFU). ``inline_comm_s``/``inline_hidden_s`` are host-local collectives folded into the op
    (waited for / hidden under kernels); ``segments`` lays them out for traces. ``class_s`` is the rest of the
    duration in seconds per kernel class, in the order of ``hardware/compute.py`` ``KERNEL_CLASSES`` (empty:
    unknown), so that ``duration_s = sum(class_s) + inline_comm_s``.
    """

    name: str
    category: Category
    duration_s: float
    model_flops: float = 0.0
    hw_flops: float = 0.0
    bytes: float = 0.0
    micro_batch: int = -1
    chunk: int = 0
    inline_comm_s: float = 0.0
    inline_hidden_s: float = 0.0
    segments: tuple[object, ...] = ()
    class_s: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class Collective:
    """A collective over the process group of axis ``group``.

    ``bytes`` is the per-rank buffer size S in the nccl-tests sense: the all-reduce input, the all-gather
    output, the reduce-scatter input, the all-to-all send buffer.
    """

    name: str
    kind: CollectiveKind
    comm: CommKind
    group: Axis
    bytes: float
    micro_batch: int = -1
    chunk: int = 0


@dataclass(frozen=True, slots=True)
class SendRecv:
    """One side of a point-to-point transfer to or from the rank ``offset`` steps along ``group``.

    A send and the matching receive share ``tag``; the transfer starts when both sides have posted,
    as NCCL's blocking send/recv do.
    """

    name: str
    is_send: bool
    comm: CommKind
    group: Axis
    offset: int  # +1 = next rank along the group (next pipeline stage), -1 = previous
    bytes: float
    tag: tuple[object, ...]
    micro_batch: int = -1
    chunk: int = 0


Op = Compute | Collective | SendRecv
