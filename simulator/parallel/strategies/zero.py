"""ZeRO stages 1 and 2 (Rajbhandari et al. 2020, arXiv 1910.02054; Megatron-LM's distributed optimizer).

Gradients are reduce-scattered so each data-parallel rank owns 1/d of them, updates its shard of the
optimizer state and parameters, then all-gathers the updated parameters: the same bytes as one all-reduce
(1× DP volume). Stage 1 keeps full gradient buffers, stage 2 frees the non-owned parts (a memory difference
only). With ``param_gather_overlap`` the all-gather of the updated parameters overlaps the next step's
forward pass (Megatron-Core ``--overlap-param-gather``); here it is the previous step's gather that the
forward of the first micro-batch waits for.
"""

from __future__ import annotations

from typing import ClassVar

from simulator.parallel.strategies.base import STRATEGIES, BuildContext
from simulator.parallel.strategies.data import DataParallel, param_element_bytes
from simulator.workload.ops import CollectiveKind, CommKind
from simulator.workload.steps import CommStep, Step


@STRATEGIES.register("zero1")
class Zero1(DataParallel):
    """Sharded optimizer state: gradient reduce-scatter, parameter all-gather."""

    name = "zero1"
    zero_stage: ClassVar[int] = 1
    reduce_kind: ClassVar[CollectiveKind] = CollectiveKind.REDUCE_SCATTER

    def after_optimizer(self, ctx: BuildContext, param_count: float, group: str) -> list[Step]:
        """All-gather the updated 16-bit parameters (exposed unless overlapped with the next forward)."""
        nbytes = param_count * param_element_bytes(ctx)
        if nbytes <= 0 or ctx.par.param_gather_overlap:
            return []
        return [CommStep("param_allgather", CollectiveKind.ALL_GATHER, CommKind.DP, group, nbytes)]

    def optimizer_shard(self, ctx: BuildContext, group_size: int) -> int:
        """The optimizer state and its update are split over the data-parallel group."""
        return group_size


@STRATEGIES.register("zero2")
class Zero2(Zero1):
    """Sharded optimizer state and gradients (communication as stage 1)."""

    name = "zero2"
    zero_stage: ClassVar[int] = 2
