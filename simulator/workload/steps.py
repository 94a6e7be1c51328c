"""Layer templates: the steps of one layer's forward or backward pass, before they become engine ops.

Strategies and the layer builder describe a pass as a list of steps: kernels (timed by the compute model),
communication, and gradient-ready markers. ``compile_steps`` fuses runs of kernels that nothing can interleave
with into one engine op (a 16,384-GPU step must simulate in seconds), keeping the communication that
separates or overlaps them as ops of their own — or, for collectives that stay inside one host's NVLink
domain and share no link with other traffic (``inline``), folding their uncontended duration into the fused
op as a segment, since the network model would give them exactly that duration.

A fused op keeps its seconds per kernel class (``FusedCompute.class_s``, ``hardware/compute.py``
``KernelClass``): its kernels' own seconds, plus ``HOST_BOUND`` for the time a launch-bound run is stretched
by, so that its classes sum to its duration less the inlined communication it waited for.

Host and GPU: the host launches kernels asynchronously and runs ahead of the GPU; a run of kernels is
stretched only where the host falls behind. ``compile_steps`` carries the host's lead (GPU seconds queued
ahead of the host) from run to run through a pass: a run of GPU time ``d`` whose launches take ``l`` host
seconds, entered with lead ``L``, lasts ``max(d, l - L)`` and leaves lead ``max(0, L + d - l)``. A
``HostSync`` empties the queue (lead 0). A pass (one micro-batch's forward or backward of a stage) that has no
synchronisation and whose kernels outlast their launches starts with the host ahead (it is run micro-batch
after micro-batch, so the lead only grows); any other pass starts with lead 0. Communication waits would only
add to the lead and are not counted, so the stretch is an upper bound: exact for a pass that starts after a
synchronisation and waits for no communication.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from simulator.hardware.compute import KERNEL_CLASSES, NO_CLASS_S, ClassSeconds, KernelClass, KernelTime
from simulator.workload.ops import Axis, CollectiveKind, CommKind


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
    ``join_after = -1`` means it is only waited for at the end of the step (gradient buckets);
    ``join_after = PREFETCH`` that the compute stream waits for it at the ``Join`` step naming it."""

    name: str
    kind: CollectiveKind
    comm: CommKind
    group: Axis
    bytes: float
    join_after: int = 0


PREFETCH = -2
"""``CommStep.join_after`` of a prefetched communication (ZeRO-3 parameter gathers, the distributed optimizer's
overlapped parameter gather): issued ahead, waited for at a ``Join`` however many kernels and overlapped
collectives run in between."""


@dataclass(frozen=True, slots=True)
class Join:
    """The compute stream waits here for the prefetched communication called ``name``."""

    name: str


@dataclass(frozen=True, slots=True)
class GradReady:
    """Marks that the gradients of ``param_count`` dense and ``expert_param_count`` expert parameters are
    complete (for the gradient buckets: dense ones reduce over data parallelism, expert ones over the
    expert-data-parallel group)."""

    param_count: float
    expert_param_count: float = 0.0


@dataclass(frozen=True, slots=True)
class HostSync:
    """The host waits here until the GPU has run everything launched before (a device-to-host copy the
    framework needs to go on, e.g. the token counts of Megatron-Core's dropless dispatcher): the launches
    that follow cannot run ahead of the GPU, so the kernels after it run at the host's launch rate until
    the host is ahead again. ``name`` names the framework mechanism, for traces and tests."""

    name: str


Step = KernelStep | CommStep | GradReady | Join | HostSync


@dataclass(frozen=True, slots=True)
class Segment:
    """A part of a fused op, for traces: a run of kernels (``comm == ""``) or an inlined collective."""

    name: str
    comm: str
    offset_s: float
    duration_s: float
    step: CommStep | None = None  # the inlined collective, for link accounting


@dataclass(frozen=True, slots=True)
class FusedCompute:
    """Consecutive kernels (and inlined collectives) fused into one engine op.

    ``comm_exposed_s`` is inlined communication the compute stream waited for; ``comm_hidden_s`` inlined
    communication that ran under a kernel; ``class_s`` the rest of ``duration_s`` per ``KERNEL_CLASSES``
    entry (``duration_s = sum(class_s) + comm_exposed_s``)."""

    names: tuple[str, ...]
    duration_s: float
    model_flops: float
    hw_flops: float
    bytes: float
    kernels: int
    comm_exposed_s: float = 0.0
    comm_hidden_s: float = 0.0
    segments: tuple[Segment, ...] = ()
    class_s: ClassSeconds = NO_CLASS_S

    @property
    def name(self) -> str:
        """A readable label: the first and last kernel (or the inlined collective alone)."""
        if not self.names:
            return self.segments[0].name if self.segments else "idle"
        if len(self.names) == 1:
            return self.names[0]
        return f"{self.names[0]}..{self.names[-1]}"


CompiledStep = FusedCompute | CommStep | GradReady | Join
_HOST_BOUND = KERNEL_CLASSES.index(KernelClass.HOST_BOUND)
InlineTime = Callable[[CommStep], float | None]


@dataclass
class _Run:
    """Accumulates one fused op."""

    names: list[str] = field(default_factory=list)
    duration: float = 0.0
    model_flops: float = 0.0
    hw_flops: float = 0.0
    bytes: float = 0.0
    kernels: int = 0
    exposed: float = 0.0
    hidden: float = 0.0
    segments: list[Segment] = field(default_factory=list)
    overlap_s: float = 0.0  # an inlined comm still running under the next kernel
    launch_s: float = 0.0  # host time to launch the run's kernels
    classes: list[ClassSeconds] = field(default_factory=list)  # per kernel, summed in build
    host_bound_s: float = 0.0  # the stretch of a launch-bound run

    def kernel(self, k: KernelStep) -> None:
        t = k.time.duration_s
        if self.overlap_s > 0:
            self.exposed += max(0.0, self.overlap_s - t)
            self.hidden += min(self.overlap_s, t)
            t = max(t, self.overlap_s)
            self.overlap_s = 0.0
        self._segment(k.name, "", t)
        self.names.append(k.name)
        self.duration += t
        self.model_flops += k.model_flops
        self.hw_flops += k.time.flops
        self.bytes += k.time.bytes
        self.kernels += 1
        self.launch_s += k.time.launch_s
        self.classes.append(k.time.class_s)

    def comm(self, c: CommStep, duration_s: float) -> None:
        self._settle()
        self.segments.append(Segment(c.name, c.comm.value, self.duration, duration_s, c))
        if c.join_after > 0:  # runs under the next kernel
            self.overlap_s = duration_s
            return
        self.duration += duration_s
        self.exposed += duration_s

    def _segment(self, name: str, comm: str, t: float) -> None:
        last = self.segments[-1] if self.segments else None
        if (
            last is not None
            and last.comm == ""
            and abs(last.offset_s + last.duration_s - self.duration) < 1e-15
        ):
            self.segments[-1] = Segment(last.name, "", last.offset_s, last.duration_s + t)
        else:
            self.segments.append(Segment(name, comm, self.duration, t))

    def _settle(self) -> None:
        """An overlapped comm with no kernel left to hide under is waited for."""
        if self.overlap_s > 0:
            self.duration += self.overlap_s
            self.exposed += self.overlap_s
            self.overlap_s = 0.0

    def _launch_bound(self, lead_s: float) -> float:
        """The GPU cannot run kernels faster than the host launches them: stretch a run whose launches take
        longer than its GPU time plus the host's lead ``lead_s`` (its segments scale with it); return the
        lead the host has after the run."""
        need = self.launch_s - lead_s
        if need <= self.duration or self.duration <= 0:
            return max(0.0, lead_s + self.duration - self.launch_s)
        f = need / self.duration
        self.segments = [
            Segment(g.name, g.comm, g.offset_s * f, g.duration_s * f, g.step) for g in self.segments
        ]
        self.host_bound_s = need - self.duration  # the GPU waits for the host
        self.duration = need
        return 0.0

    def build(self, lead_s: float = 0.0) -> tuple[FusedCompute, float]:
        """The fused op, and the host's lead after it (entered with ``lead_s``)."""
        self._settle()
        lead_s = self._launch_bound(lead_s)
        return FusedCompute(
            tuple(self.names), self.duration, self.model_flops, self.hw_flops, self.bytes, self.kernels,
            self.exposed, self.hidden, tuple(self.segments) if self.exposed or self.hidden else (),
            self._class_s(),
        ), lead_s  # fmt: skip

    def _class_s(self) -> ClassSeconds:
        """Seconds per class: the kernels' own, plus the launch-bound stretch as ``HOST_BOUND``."""
        if not self.host_bound_s:
            if len(self.classes) == 1:  # most runs: one kernel
                return self.classes[0]
            return tuple(map(sum, zip(*self.classes, strict=True))) if self.classes else NO_CLASS_S
        total = [sum(c) for c in zip(*self.classes, strict=True)] if self.classes else list(NO_CLASS_S)
        total[_HOST_BOUND] += self.host_bound_s
        return tuple(total)


def compile_steps(
    steps: list[Step], keep_grad_markers: bool, inline: InlineTime | None = None
) -> tuple[CompiledStep, ...]:
    """Fuse kernel runs into engine ops. A run is cut where a (non-inlined) communication starts and where an
    overlapped communication is joined, so that after compilation an overlapped comm spans exactly one fused
    op (``join_after`` becomes 1). Overlapped communications counted in kernels may not nest; prefetched ones
    (``PREFETCH``) are joined by name at a ``Join``, which cuts the run, so any number of them may span
    kernels and counted overlaps (ZeRO-3's next-layer gather over a layer with sequence-parallel overlaps)."""
    out: list[CompiledStep] = []
    run = _Run()
    deferred: list[GradReady] = []
    pending = 0  # kernels left before the open overlapped comm is joined
    # GPU seconds the host has launched ahead of the GPU (module docstring): a pass repeated micro-batch after
    # micro-batch whose kernels outlast their launches, and that never waits for the GPU, finds the host ahead
    kernels = [s for s in steps if isinstance(s, KernelStep)]
    ahead = sum(k.time.launch_s for k in kernels) <= sum(k.time.duration_s for k in kernels)
    lead = math.inf if ahead and not any(isinstance(s, HostSync) for s in steps) else 0.0

    def flush() -> None:
        nonlocal run, lead
        if run.kernels or run.exposed:
            op, lead = run.build(lead)
            out.append(op)
            run = _Run()
        if not pending:
            out.extend(deferred)
            deferred.clear()

    for step in steps:
        if isinstance(step, KernelStep):
            run.kernel(step)
            if pending:
                pending -= 1
                if not pending:
                    flush()
        elif isinstance(step, CommStep):
            t = inline(step) if inline is not None and step.join_after >= 0 else None
            if t is not None:
                run.comm(step, t)
                continue
            assert not pending, f"overlapped communication may not nest ({step.name})"
            flush()
            if step.join_after > 0:
                pending = step.join_after
                step = CommStep(step.name, step.kind, step.comm, step.group, step.bytes, 1)
            out.append(step)
        elif isinstance(step, Join):
            assert not pending, f"a join may not fall inside an overlapped communication ({step.name})"
            flush()
            out.append(step)
        elif isinstance(step, HostSync):
            assert not pending, f"a host synchronisation may not fall inside an overlapped communication ({step.name})"
            flush()
            lead = 0.0
        elif keep_grad_markers:
            if pending:
                deferred.append(step)
            else:
                flush()
                out.append(step)
    flush()
    return tuple(out)
