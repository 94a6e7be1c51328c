"""Layer templates: the steps of one layer's forward or backward pass, before they become engine ops.

Strategies and the layer builder describe a pass as a list of steps: kernels (timed by the compute model),
communication, and gradient-ready markers. ``compile_steps`` fuses runs of kernels that nothing can interleave
with into one engine op (a 16,384-GPU step must simulate in seconds), keeping the communication that
separates or overlaps them as ops of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.hardware.compute import KernelTime
from simulator.workload.ops import CollectiveKind, CommKind


@dataclass(frozen=True, slots=True)
class KernelStep:
    """One compute kernel. ``model_flops`` is what counts for MFU (0 for pure recomputation)."""

    name: str
    time: KernelTime
    model_flops: float


@dataclass(frozen=True, slots=True)
class CommStep:
    """A collective on the group ``group``; it starts after the preceding kernel and runs concurrently
    with the next ``join_after`` kernels, after which the compute stream waits for it (0 = blocking).
    ``join_after = -1`` means it is only waited for at the end of the step (gradient buckets)."""

    name: str
    kind: CollectiveKind
    comm: CommKind
    group: str
    bytes: float
    join_after: int = 0


@dataclass(frozen=True, slots=True)
class GradReady:
    """Marks that the gradients of ``param_bytes`` bytes of parameters are complete (for DP buckets)."""

    param_count: float


Step = KernelStep | CommStep | GradReady


@dataclass(frozen=True, slots=True)
class FusedCompute:
    """Consecutive kernels fused into one engine op."""

    names: tuple[str, ...]
    duration_s: float
    model_flops: float
    hw_flops: float
    bytes: float
    kernels: int

    @property
    def name(self) -> str:
        """A readable label: the first and last kernel."""
        if len(self.names) == 1:
            return self.names[0]
        return f"{self.names[0]}..{self.names[-1]}"


CompiledStep = FusedCompute | CommStep | GradReady


def _fuse(kernels: list[KernelStep]) -> FusedCompute:
    return FusedCompute(
        names=tuple(k.name for k in kernels),
        duration_s=sum(k.time.duration_s for k in kernels),
        model_flops=sum(k.model_flops for k in kernels),
        hw_flops=sum(k.time.flops for k in kernels),
        bytes=sum(k.time.bytes for k in kernels),
        kernels=len(kernels),
    )


def compile_steps(steps: list[Step], keep_grad_markers: bool) -> tuple[CompiledStep, ...]:
    """Fuse kernel runs into engine ops. A run is cut where a communication starts and where an overlapped
    communication is joined, so that after compilation an overlapped comm spans exactly one fused op
    (``join_after`` becomes 1). Overlapped communications may not nest."""
    out: list[CompiledStep] = []
    run: list[KernelStep] = []
    deferred: list[GradReady] = []
    pending = 0  # kernels left before the open overlapped comm is joined

    def flush() -> None:
        if run:
            out.append(_fuse(run))
            run.clear()
        if not pending:
            out.extend(deferred)
            deferred.clear()

    for step in steps:
        if isinstance(step, KernelStep):
            run.append(step)
            if pending:
                pending -= 1
                if not pending:
                    flush()
        elif isinstance(step, CommStep):
            assert not pending, f"overlapped communication may not nest ({step.name})"
            flush()
            if step.join_after > 0:
                pending = step.join_after
                step = CommStep(step.name, step.kind, step.comm, step.group, step.bytes, 1)
            out.append(step)
        elif keep_grad_markers:
            if pending:
                deferred.append(step)
            else:
                flush()
                out.append(step)
    flush()
    return tuple(out)
