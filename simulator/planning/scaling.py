"""Compute-optimal model size and data for a FLOP budget: Chinchilla's parametric loss (approach 3).

Hoffmann et al. 2022 (arXiv 2203.15556, Sec. 3.3, eq. 2 and 4) fit L(N, D) = E + A/N^α + B/D^β to their
runs (N parameters, D training tokens) and take the training cost as C ≈ 6·N·D FLOPs (Kaplan et al. 2020:
2N forward + 4N backward per token). Minimising L subject to 6·N·D = C has the closed form (their eq. 4)

    N_opt = G·(C/6)^a,  D_opt = G⁻¹·(C/6)^b,  G = (α·A / (β·B))^(1/(α+β)),  a = β/(α+β),  b = α/(α+β),

the point where the first-order condition α·A/N^α = β·B/D^β holds on the constraint. Besiroglu et al. 2024
(Epoch AI, arXiv 2404.10102) refit the same form on data reconstructed from the paper and found the
published, rounded parameters biased; their refit puts the optimum near the ~20 tokens per parameter of
Hoffmann's approaches 1 and 2 (Chinchilla itself: 70B parameters on 1.4T tokens), where the published
parameters give several times that (see docs/search-and-plan.md for the figures).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from simulator.errors import ScenarioError
from simulator.planning import SECONDS_PER_HOUR

FLOPS_PER_PARAM_TOKEN = 6.0  # C ≈ 6·N·D (Kaplan et al. 2020, Sec. 2.1; Hoffmann et al. 2022, Sec. 3)
TOKENS_PER_PARAM_RULE = 20.0  # Chinchilla, 70B on 1.4T tokens (Hoffmann et al. 2022, Sec. 4 and Table 3)
# MFU assumed when a GPU-hour budget has no model to simulate: Llama 3 405B reached 38-43% BF16 MFU on
# 8,192-16,384 H100 (Dubey et al. 2024, arXiv 2407.21783, Table 4).
ASSUMED_MFU = 0.40
_SUFFIXES = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12, "P": 1e15}


@dataclass(frozen=True)
class LossFit:
    """L(N, D) = e + a/N^alpha + b/D^beta, N parameters and D tokens; loss in nats per token."""

    name: str
    e: float
    a: float
    b: float
    alpha: float
    beta: float
    source: str

    def loss(self, params: float, tokens: float) -> float:
        """Predicted final training loss of ``params`` parameters trained on ``tokens`` tokens."""
        return self.e + self.a / params**self.alpha + self.b / tokens**self.beta

    def optimum(self, flops: float) -> Allocation:
        """The loss-optimal (N, D) for a budget of ``flops`` with 6·N·D = ``flops`` (closed form)."""
        if not flops > 0:
            raise ScenarioError(f"a compute budget must be positive (got {flops:g})", field="--budget-flops")
        g = (self.alpha * self.a / (self.beta * self.b)) ** (1.0 / (self.alpha + self.beta))
        half = flops / FLOPS_PER_PARAM_TOKEN
        params = g * half ** (self.beta / (self.alpha + self.beta))
        tokens = half ** (self.alpha / (self.alpha + self.beta)) / g
        return Allocation(flops, params, tokens, self.loss(params, tokens))

    def at_ratio(self, flops: float, tokens_per_param: float = TOKENS_PER_PARAM_RULE) -> Allocation:
        """The (N, D) with D = ``tokens_per_param``·N and 6·N·D = ``flops``, and its predicted loss."""
        params = math.sqrt(flops / (FLOPS_PER_PARAM_TOKEN * tokens_per_param))
        tokens = tokens_per_param * params
        return Allocation(flops, params, tokens, self.loss(params, tokens))

    def for_model(self, flops: float, params: float) -> Allocation:
        """What ``flops`` buys a model of ``params`` parameters: D = flops / (6·N), and its loss."""
        tokens = flops / (FLOPS_PER_PARAM_TOKEN * params)
        return Allocation(flops, params, tokens, self.loss(params, tokens))


@dataclass(frozen=True)
class Allocation:
    """A model size and a token count for a compute budget, with the loss the fit predicts."""

    flops: float
    params: float
    tokens: float
    loss: float

    @property
    def tokens_per_param(self) -> float:
        """Training tokens per parameter."""
        return self.tokens / self.params


FITS: dict[str, LossFit] = {
    "hoffmann": LossFit(
        "hoffmann", e=1.69, a=406.4, b=410.7, alpha=0.34, beta=0.28,
        source="Hoffmann et al. 2022, arXiv 2203.15556, Sec. 3.3 (approach 3, as published)",
    ),
    "epoch": LossFit(
        "epoch", e=1.8172, a=482.01, b=2085.43, alpha=0.3478, beta=0.3658,
        source="Besiroglu et al. 2024, arXiv 2404.10102, refit of approach 3 (Epoch AI)",
    ),
}  # fmt: skip


def loss_fit(name: str) -> LossFit:
    """The scaling-law fit called ``name``; an unknown name is a user error listing the valid ones."""
    if name not in FITS:
        raise ScenarioError(f"unknown fit {name!r}; valid: {', '.join(FITS)}", field="--fit")
    return FITS[name]


def gpu_hours_to_flops(gpu_hours: float, peak_flops_per_s: float, mfu: float = ASSUMED_MFU) -> float:
    """Model FLOPs that ``gpu_hours`` of a GPU with this dense peak deliver at ``mfu``."""
    return gpu_hours * SECONDS_PER_HOUR * peak_flops_per_s * mfu


def parse_quantity(text: str) -> float:
    """``"1e24"``, ``"15.6T"``, ``"2M"`` → a positive number (K, M, B or G, T, P = 1e3 ... 1e15)."""
    body = text.strip()
    scale = _SUFFIXES.get(body[-1:].upper(), 1.0) if body and body[-1].isalpha() else 1.0
    number = float(body[:-1] if scale != 1.0 else body)
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"{text!r} is not a positive number")
    return number * scale
