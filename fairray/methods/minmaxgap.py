"""ERM-MinMaxGAP (METHODS 3.2): penalise the worst language's female/male loss gap.

Per batch, with ``L_{l,a}`` the mean base loss of language ``l`` and gender ``a``::

    Δ_l = |L_{l,F} - L_{l,M}|   (languages with >= m_min samples of both genders)
    R   = (max_l Δ_l) ** p
    L   = mean_i l_i + λ_k R

After each epoch (round ``k``) ``λ`` takes a projected dual-ascent step on the unpowered dev gap::

    λ_{k+1} = min(λ_max, max(0, λ_k + η (Δ_dev - ε)))

With ``adaptive: false`` λ stays at ``lambda0`` (the fixed-λ ablation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fairray.methods._base import METHODS, Batch, DevEval, LossOutput, TrainContext
from fairray.methods._groups import worst_stratum_gap
from fairray.methods.erm import BaseLossMethod, BaseLossParams


@dataclass(frozen=True)
class MinMaxGapParams(BaseLossParams):
    #: Power of the worst gap (the paper prefers 2).
    p: float = field(default=2.0, metadata={"gt": 0})
    #: Initial Lagrangian weight λ_0.
    lambda0: float = field(default=0.5, metadata={"ge": 0})
    #: Dual step size η.
    eta: float = field(default=2.0, metadata={"ge": 0})
    #: Tolerated dev gap ε, in loss units.
    eps: float = field(default=0.02, metadata={"ge": 0})
    #: Projection bound λ_max.
    lambda_max: float = field(default=10.0, metadata={"ge": 0})
    #: Minimum samples of each gender in a language for the batch gap to count.
    m_min: int = field(default=2, metadata={"ge": 1})
    #: false = constant λ = lambda0 (ablation).
    adaptive: bool = True

    def __post_init__(self) -> None:
        if self.lambda0 > self.lambda_max:
            raise ValueError(f"lambda0 ({self.lambda0}) must not exceed lambda_max ({self.lambda_max})")


def dual_step(lam: float, gap: float, *, eta: float, eps: float, lambda_max: float) -> float:
    """Projected dual ascent: ``min(λ_max, max(0, λ + η (gap - ε)))``."""
    return min(lambda_max, max(0.0, lam + eta * (gap - eps)))


@METHODS.register("minmaxgap")
class MinMaxGap(BaseLossMethod):
    Params = MinMaxGapParams
    requires = "true groups"
    sampler = "stratified_cells"
    summary = "ERM + (max_l |L_lF - L_lM|)^p with adaptive Lagrangian λ (ERM-MinMaxGAP, METHODS 3.2)"

    def __init__(self, params: MinMaxGapParams, ctx: TrainContext) -> None:
        super().__init__(params, ctx)
        if len(ctx.attr_values) < 2:
            raise ValueError(f"minmaxgap needs at least two attribute groups, got {ctx.attr_values}")
        self.lam = float(params.lambda0)
        self.history: list[dict[str, float]] = []

    def _worst_gap(self, losses: torch.Tensor, batch: Batch, m_min: int) -> tuple[torch.Tensor, torch.Tensor]:
        return worst_stratum_gap(losses, batch.attr, batch.stratum, len(self.ctx.attr_values),
                                 len(self.ctx.strata_values), m_min)

    def loss(self, logits: torch.Tensor, batch: Batch) -> LossOutput:
        losses = self.per_sample_loss(logits, batch)
        gap, _ = self._worst_gap(losses, batch, self.params.m_min)
        penalty = gap.pow(self.params.p)
        total = losses.mean() + self.lam * penalty
        return LossOutput(total, {"gap_batch": float(gap.detach()), "penalty": float(penalty.detach())})

    def on_epoch_end(self, dev: DevEval) -> dict[str, float]:
        with torch.no_grad():
            gap, per_stratum = self._worst_gap(self.per_sample_loss(dev.logits, dev.batch), dev.batch, 1)
        delta_dev = float(gap)
        lam_used = self.lam
        if self.params.adaptive:
            self.lam = dual_step(self.lam, delta_dev, eta=self.params.eta, eps=self.params.eps,
                                 lambda_max=self.params.lambda_max)
        self.history.append({"lambda": lam_used, "delta_dev": delta_dev, "lambda_next": self.lam})
        logs = {"lambda": lam_used, "lambda_next": self.lam, "delta_dev": delta_dev}
        for value, name in zip(per_stratum.tolist(), self.ctx.strata_values, strict=True):
            if value == value:  # skip strata without both groups (NaN)
                logs[f"delta_dev/{name}"] = value
        return logs

    def state_dict(self) -> dict[str, Any]:
        return {"lambda": self.lam, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lam = float(state["lambda"])
        self.history = list(state["history"])
