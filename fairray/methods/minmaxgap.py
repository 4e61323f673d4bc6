"""ERM-MinMaxGAP (METHODS 3.2): penalise the worst language's female/male loss gap.

Per batch, with ``L_{l,a}`` the mean base loss of language ``l`` and gender ``a``::

    Δ_l = |L_{l,F} - L_{l,M}|   (languages with >= m_min samples of both genders)
    R   = (max_l Δ_l) ** p
    L   = mean_i l_i + λ_k R

After each round ``k`` ``λ`` takes a projected dual-ascent step on the unpowered dev gap::

    λ_{k+1} = min(λ_max, max(0, λ_k + η (Δ_dev - ε)))

A round is an epoch on the whole dev split (the default), or ``lambda_update_every`` optimiser steps on a
fixed stratified dev subset (``lambda_dev_per_cell`` rows per language x gender cell, drawn once): LoRA runs
of a speech LLM often last only a few epochs. ``ε`` is in loss units, or relative to a reference gap
(``eps_ref``, e.g. the ERM dev gap: METHODS' "0.5 x ERM dev gap" is ``eps: 0.5, eps_ref: <that gap>``).

With ``cell_ema`` the penalised language is the argmax of an EMA of the detached cell losses (less noisy
than a batch's 1-2 sample cells) while the gradient still flows through that language's gap in the current
batch; the EMA is committed after the optimiser step. With ``adaptive: false`` λ stays at ``lambda0`` (the
fixed-λ ablation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from fairray.methods._base import METHODS, Batch, DevEval, LossOutput, SamplerInput, TrainContext
from fairray.methods._groups import stratum_cell_means, stratum_gaps, worst_stratum_gap
from fairray.methods.erm import BaseLossMethod, BaseLossParams


@dataclass(frozen=True)
class MinMaxGapParams(BaseLossParams):
    #: Per-sample base loss: CE of the classifier head (METHODS 3.2).
    loss: Literal["ce", "cb_ce", "focal"] = "ce"
    #: Power of the worst gap (the paper prefers 2).
    p: float = field(default=2.0, metadata={"gt": 0})
    #: Initial Lagrangian weight λ_0.
    lambda0: float = field(default=0.5, metadata={"ge": 0})
    #: Dual step size η.
    eta: float = field(default=2.0, metadata={"ge": 0})
    #: Tolerated dev gap ε: in loss units, or a multiple of eps_ref when that is set.
    eps: float = field(default=0.02, metadata={"ge": 0})
    #: Reference dev gap (loss units) that eps is a fraction of, e.g. the ERM dev gap (METHODS 3.2's
    #: "0.5 x ERM dev gap" = eps 0.5, eps_ref <ERM Δ_dev>); null = eps is absolute.
    eps_ref: float | None = field(default=None, metadata={"ge": 0})
    #: Projection bound λ_max.
    lambda_max: float = field(default=10.0, metadata={"ge": 0})
    #: Minimum samples of each gender in a language for the batch gap to count.
    m_min: int = field(default=2, metadata={"ge": 1})
    #: false = constant λ = lambda0 (ablation).
    adaptive: bool = True
    #: Optimiser steps per λ round (on a fixed dev subset); null = one round per epoch on the whole dev split.
    lambda_update_every: int | None = field(default=None, metadata={"ge": 1})
    #: Dev rows per language x gender cell in the fixed subset of a step round (drawn once, without
    #: replacement; a smaller cell gives all its rows); null = the whole dev split.
    lambda_dev_per_cell: int | None = field(default=None, metadata={"ge": 1})
    #: EMA decay of the detached cell losses that choose the penalised language; null = the batch's own argmax.
    cell_ema: float | None = field(default=None, metadata={"ge": 0, "lt": 1})

    def __post_init__(self) -> None:
        if self.lambda0 > self.lambda_max:
            raise ValueError(f"lambda0 ({self.lambda0}) must not exceed lambda_max ({self.lambda_max})")
        if self.lambda_dev_per_cell is not None and self.lambda_update_every is None:
            raise ValueError(f"lambda_dev_per_cell ({self.lambda_dev_per_cell}) needs lambda_update_every: the "
                             "epoch round always uses the whole dev split")


def dual_step(lam: float, gap: float, *, eta: float, eps: float, lambda_max: float) -> float:
    """Projected dual ascent: ``min(λ_max, max(0, λ + η (gap - ε)))``."""
    return min(lambda_max, max(0.0, lam + eta * (gap - eps)))


def stratified_rows(inp: SamplerInput, per_cell: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``per_cell`` rows of ``inp.indices`` from every stratum x attribute cell, drawn without
    replacement (all rows of a smaller cell); rows of unknown attribute or stratum are left out. Sorted."""
    idx = inp.indices
    attr, stratum = inp.attr[idx], inp.stratum[idx]
    known = (attr >= 0) & (stratum >= 0)
    cells = np.where(known, stratum * (int(attr.max(initial=0)) + 1) + attr, -1)
    keep = [rng.choice(idx[cells == c], size=min(per_cell, int((cells == c).sum())), replace=False)
            for c in np.unique(cells[known])]
    return np.sort(np.concatenate(keep)) if keep else idx[:0]


class CellEMA(NamedTuple):
    """EMA of the detached mean loss of every stratum x attribute cell ``[S, A]``; ``seen`` = visited once."""

    value: torch.Tensor
    seen: torch.Tensor


@METHODS.register("minmaxgap")
class MinMaxGap(BaseLossMethod):
    Params = MinMaxGapParams
    requires = "true groups"
    sampler = "stratified_cells"
    summary = "ERM + (max_l |L_lF - L_lM|)^p with adaptive Lagrangian λ (ERM-MinMaxGAP, METHODS 3.2)"
    batch_statistics = True  # cell means through batch_sum

    def __init__(self, params: MinMaxGapParams, ctx: TrainContext) -> None:
        super().__init__(params, ctx)
        if len(ctx.attr_values) < 2:
            raise ValueError(f"minmaxgap needs at least two attribute groups, got {ctx.attr_values}")
        self.lam = float(params.lambda0)
        self.history: list[dict[str, float]] = []
        self.round_steps = params.lambda_update_every
        shape = (len(ctx.strata_values), len(ctx.attr_values))
        # the committed cell EMA (cell_ema): two tensors, so that Method.to moves them
        self.ema_value, self.ema_seen = torch.zeros(shape), torch.zeros(shape, dtype=torch.bool)

    @property
    def eps(self) -> float:
        """ε of the dual step, in loss units."""
        p = self.params
        return p.eps if p.eps_ref is None else p.eps * p.eps_ref

    def _worst_gap(self, losses: torch.Tensor, batch: Batch, m_min: int) -> tuple[torch.Tensor, torch.Tensor]:
        return worst_stratum_gap(losses, batch.attr, batch.stratum, len(self.ctx.attr_values),
                                 len(self.ctx.strata_values), m_min)

    def _ema_step(self, means: torch.Tensor, present: torch.Tensor) -> CellEMA:
        """The cell EMA after this batch: ``e ← α e + (1 − α) L`` for present cells (first visit: ``e = L``)."""
        alpha = self.params.cell_ema
        value, seen = self.ema_value.to(means.device), self.ema_seen.to(means.device)
        stepped = torch.where(seen, alpha * value + (1.0 - alpha) * means, means)
        return CellEMA(torch.where(present, stepped, value), seen | present)

    def loss(self, logits: torch.Tensor, batch: Batch) -> LossOutput:
        p = self.params
        losses = self.per_sample_loss(logits, batch)
        means, counts = stratum_cell_means(losses, batch.attr, batch.stratum, len(self.ctx.attr_values),
                                           len(self.ctx.strata_values))
        present = counts >= p.m_min
        gaps, valid = stratum_gaps(means, present)
        worst = gaps.max()
        logs: dict[str, float] = {"gap_batch": float(worst.detach())}
        update = None
        if p.cell_ema is None:
            gap = worst
        else:
            update = self._ema_step(means.detach(), present)
            ema_gaps, _ = stratum_gaps(update.value, update.seen)
            # among the languages the batch can give a gradient for, the one with the largest EMA gap
            chosen = torch.where(valid, ema_gaps, torch.full_like(ema_gaps, -float("inf"))).argmax()
            gap = gaps[chosen]  # 0 when no language is valid in the batch
            logs["gap_penalised"] = float(gap.detach())
        penalty = gap.pow(p.p)
        logs["penalty"] = float(penalty.detach())
        return LossOutput(losses.mean() + self.lam * penalty, logs, update)

    def on_step(self, outputs: Sequence[LossOutput]) -> None:
        """Commit the cell EMA (every micro-batch sees the whole step's cell sums, so the last one's is the step's)."""
        update = outputs[-1].update if outputs else None
        if update is not None:
            self.ema_value, self.ema_seen = update

    def round_rows(self, dev: SamplerInput, rng: np.random.Generator) -> np.ndarray:
        per_cell = self.params.lambda_dev_per_cell
        return dev.indices if per_cell is None else stratified_rows(dev, per_cell, rng)

    def _dual_round(self, dev: DevEval) -> tuple[float, float, torch.Tensor]:
        """Δ_dev of ``dev`` and the λ step it implies: ``(λ used, Δ_dev, Δ per stratum)``."""
        with torch.no_grad():
            gap, per_stratum = self._worst_gap(self.per_sample_loss(dev.logits, dev.batch), dev.batch, 1)
        delta_dev = float(gap)
        lam_used = self.lam
        if self.params.adaptive:
            self.lam = dual_step(self.lam, delta_dev, eta=self.params.eta, eps=self.eps,
                                 lambda_max=self.params.lambda_max)
        self.history.append({"lambda": lam_used, "delta_dev": delta_dev, "lambda_next": self.lam})
        return lam_used, delta_dev, per_stratum

    def on_round(self, dev: DevEval) -> dict[str, float]:
        """A λ round of ``lambda_update_every`` steps on the fixed dev subset (logged as epoch means)."""
        lam_used, delta_dev, _ = self._dual_round(dev)
        return {"round/lambda": lam_used, "round/delta_dev": delta_dev}

    def on_epoch_end(self, dev: DevEval) -> dict[str, float]:
        if self.round_steps is None:
            lam_used, delta_dev, per_stratum = self._dual_round(dev)
        else:  # λ moves in the step rounds; the epoch only reports the whole dev split
            with torch.no_grad():
                gap, per_stratum = self._worst_gap(self.per_sample_loss(dev.logits, dev.batch), dev.batch, 1)
            lam_used, delta_dev = self.lam, float(gap)
        logs = {"lambda": lam_used, "lambda_next": self.lam, "delta_dev": delta_dev}
        for value, name in zip(per_stratum.tolist(), self.ctx.strata_values, strict=True):
            if value == value:  # skip strata without both groups (NaN)
                logs[f"delta_dev/{name}"] = value
        return logs

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"lambda": self.lam, "history": list(self.history)}
        if self.params.cell_ema is not None:
            state["cell_ema"] = {"value": self.ema_value.tolist(), "seen": self.ema_seen.tolist()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lam = float(state["lambda"])
        self.history = list(state["history"])
        cells = state.get("cell_ema")
        if cells is not None:
            device = self.ema_value.device
            self.ema_value = torch.tensor(cells["value"], dtype=torch.float32, device=device)
            self.ema_seen = torch.tensor(cells["seen"], dtype=torch.bool, device=device)
