"""GPU datasheet specifications (``gpus.yaml``), one frozen record per GPU type."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

from simulator.errors import ScenarioError
from simulator.units import GiB

# fp4: Blackwell datasheet figure (no fp4 training precision in scenarios yet)
PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp8", "fp4")


@dataclass(frozen=True)
class GpuSpec:
    """Datasheet figures of one GPU type, in SI units (FLOP/s, bytes, bytes/s, W)."""

    name: str
    display_name: str
    peak_flops_per_s: dict[str, float]  # dense (no sparsity), by precision
    hbm_bytes: float
    hbm_bytes_per_s: float
    nvlink_bytes_per_s: float  # per GPU, per direction (datasheets quote the bidirectional sum)
    sm_count: int
    tdp_w: float
    sources: dict[str, str] = field(default_factory=dict)

    def peak(self, precision: str) -> float:
        """Dense peak FLOP/s for ``precision``; fp8 on a GPU without fp8 is a user error."""
        try:
            return self.peak_flops_per_s[precision]
        except KeyError:
            have = ", ".join(sorted(self.peak_flops_per_s))
            raise ScenarioError(
                f"{self.name} has no {precision} tensor cores; valid precisions: {have}",
                field="training.precision",
            ) from None


def _spec_from_yaml(name: str, raw: dict[str, Any]) -> GpuSpec:
    return GpuSpec(
        name=name,
        display_name=raw["display_name"],
        peak_flops_per_s={k: float(v) * 1e12 for k, v in raw["peak_tflops"].items()},
        hbm_bytes=float(raw["hbm_gib"])
        * GiB,  # "80GB" HBM is 80 GiB of addressable memory (nvidia-smi: 81920 MiB on A100 80GB)
        hbm_bytes_per_s=float(raw["hbm_gbps"]) * 1e9,
        nvlink_bytes_per_s=float(raw["nvlink_bidirectional_gbps"]) * 1e9 / 2,
        sm_count=int(raw["sm_count"]),
        tdp_w=float(raw["tdp_w"]),
        sources=dict(raw.get("sources", {})),
    )


@cache
def gpu_catalog() -> dict[str, GpuSpec]:
    """Every GPU of the shipped datasheet catalog, by name."""
    text = resources.files("simulator.hardware").joinpath("gpus.yaml").read_text()
    raw = yaml.safe_load(text)
    return {name: _spec_from_yaml(name, entry) for name, entry in raw.items()}


def get_gpu(name: str, *, file: str | None = None, field: str | None = None) -> GpuSpec:
    """The GPU called ``name``; an unknown name is a user error listing the catalog."""
    cat = gpu_catalog()
    if name not in cat:
        raise ScenarioError(f"unknown GPU {name!r}; valid: {', '.join(sorted(cat))}", file=file, field=field)
    return cat[name]
