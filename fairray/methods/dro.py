"""Group DRO family (METHODS §3.6, §3.7, §3.10): a distribution q over training groups, updated by
exponentiated gradient, weights the group losses. Training groups come from the spec's group source."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from fairray.methods._base import METHODS, Batch, LossOutput, TrainContext
from fairray.methods._groups import group_means, q_step, soft_group_means
from fairray.methods.erm import BaseLossMethod, BaseLossParams


class _QMethod(BaseLossMethod):
    """Shared state, commit and logging of the q-weighted methods.

    ``loss()`` takes the batch's q step and weights the group losses with the *new* q, exactly as the
    reference code does (METHODS §3.7), but keeps nothing: the new q travels in ``LossOutput.update`` and
    :meth:`on_step` commits it once the optimiser step is taken (a skipped step leaves q as it was). Under
    gradient accumulation every micro-batch sees the whole step's group sums (``batch_sum``), so every
    micro-batch computes the same q; the last one's is committed. Per batch, ``q/<group>`` is logged.
    """

    batch_statistics = True  # group means / soft masses through batch_sum

    def __init__(self, params: Any, ctx: TrainContext) -> None:
        super().__init__(params, ctx)
        if ctx.n_groups < 2:
            raise ValueError(f"{type(self).__name__} needs at least two training groups, got {ctx.group_values}")
        self.q = torch.full((ctx.n_groups,), 1.0 / ctx.n_groups)

    def _q_logs(self, q: torch.Tensor) -> dict[str, float]:
        return {f"q/{name}": float(v) for name, v in zip(self.ctx.group_values, q.tolist(), strict=True)}

    def _new_q(self, group_losses: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The committed q after one exponentiated-gradient step on the batch's (detached) group losses."""
        return q_step(self.q.to(group_losses.device), group_losses, present, self.params.eta_q)

    def _q_weighted(self, q: torch.Tensor, terms: torch.Tensor) -> LossOutput:
        """``Σ_g q_g terms_g`` with the new q as the update to commit."""
        return LossOutput((q * terms).sum(), self._q_logs(q), update=q.detach())

    def on_step(self, outputs: Sequence[LossOutput]) -> None:
        q = outputs[-1].update if outputs else None
        if q is not None:
            self.q = q

    def state_dict(self) -> dict[str, Any]:
        return {"q": self.q.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.q = torch.tensor(state["q"], dtype=torch.float32, device=self.q.device)


@dataclass(frozen=True)
class GDROParams(BaseLossParams):
    #: eg = Sagawa's online exponentiated-gradient q (C = 0); hard_max = the worst present group's loss.
    solver: Literal["eg", "hard_max"] = "eg"
    #: q step size η_q.
    eta_q: float = field(default=0.01, metadata={"gt": 0})


@METHODS.register("gdro")
class GroupDRO(_QMethod):
    Params = GDROParams
    requires = "true or inferred groups"
    sampler = "group_balanced"
    summary = "group DRO: min max_g L_g, online q (eg) or hard max (METHODS 3.6)"

    def loss(self, logits: torch.Tensor, batch: Batch) -> LossOutput:
        means, counts = group_means(self.per_sample_loss(logits, batch), batch.group, self.ctx.n_groups)
        present = counts >= 1
        if self.params.solver == "hard_max":
            # the limit η_q → ∞: q is the one-hot of the worst present group, logged as such (no state)
            masked = torch.where(present, means, torch.full_like(means, -float("inf")))
            return LossOutput(masked.max(), self._q_logs(F.one_hot(masked.argmax(), len(means))))
        return self._q_weighted(self._new_q(means, present), means)


@dataclass(frozen=True)
class GADROParams(BaseLossParams):
    #: Group adjustment constant C (IDI: 4); adds C / sqrt(n_g) to each group's loss before the q step.
    C: float = field(default=4.0, metadata={"ge": 0})
    eta_q: float = field(default=0.01, metadata={"gt": 0})
    #: Divide the adjusted losses by their sum before the q step.
    normalize_loss: bool = False


@METHODS.register("gadro")
class GroupAdjustedDRO(_QMethod):
    Params = GADROParams
    requires = "true or inferred groups"
    sampler = "group_balanced"
    summary = "group DRO with group adjustments C/sqrt(n_g) (METHODS 3.7)"

    def __init__(self, params: GADROParams, ctx: TrainContext) -> None:
        super().__init__(params, ctx)
        self.adjust = torch.tensor(params.C / np.sqrt(np.maximum(ctx.group_counts, 1)), dtype=torch.float32)

    def loss(self, logits: torch.Tensor, batch: Batch) -> LossOutput:
        means, counts = group_means(self.per_sample_loss(logits, batch), batch.group, self.ctx.n_groups)
        present = counts >= 1
        adjusted = means + self.adjust.to(means.device)
        for_q = adjusted / adjusted[present].sum().clamp(min=1e-12) if self.params.normalize_loss else adjusted
        q = self._new_q(for_q, present)
        return self._q_weighted(q, torch.where(present, adjusted, torch.zeros_like(adjusted)))


@dataclass(frozen=True)
class PGDROParams(BaseLossParams):
    eta_q: float = field(default=0.01, metadata={"gt": 0})
    #: Group adjustment constant (PG-DRO reference command: 2).
    C: float = field(default=2.0, metadata={"ge": 0})
    #: Sharpening of the memberships: π ∝ π^(1/T).
    temperature: float = field(default=1.0, metadata={"gt": 0})


#: Floor of a soft mass in a division (a row or group without any membership).
MASS_FLOOR = 1e-12


def sharpened(prob: np.ndarray, temperature: float) -> np.ndarray:
    """Memberships ``π ∝ π^(1/T)`` of every row of ``prob`` ``[n, G]`` (negative entries count as 0)."""
    p = np.clip(np.asarray(prob, dtype=np.float64), 0.0, None) ** (1.0 / temperature)
    return p / np.maximum(p.sum(axis=1, keepdims=True), MASS_FLOOR)


@METHODS.register("pgdro")
class ProbabilisticGroupDRO(_QMethod):
    """DRO over soft group memberships (Ghosal & Li): ``L_g = Σ π_ig l_i / Σ π_ig`` (METHODS §3.10).

    ``π`` are the batch's ``group_prob`` sharpened by ``temperature``; the adjustment ``C / sqrt(n_g)`` uses
    the soft training counts ``n_g = Σ_{i ∈ train} π_ig`` of the same sharpened memberships. Every group
    with soft mass in the batch enters the loss ``Σ_g q_g (L_g + C / sqrt(n_g))``; only the q step skips a
    group whose batch mass is below :attr:`MIN_BATCH_MASS` (its ``L_g`` rests on a fraction of a sample).

    With ``temperature`` 1 ``n_g`` is ``ctx.group_soft_counts``. Any other temperature needs the training
    rows' memberships (``ctx.train_group_prob``, ``[n_train, G]``) to sharpen them, and is refused at the
    start of training when the context does not carry them.
    """

    Params = PGDROParams
    requires = "soft group memberships (inferred groups; one-hot for true groups)"
    sampler = "group_balanced"
    summary = "DRO with probabilistic group membership (METHODS 3.10)"
    #: A group with less soft mass than this in a batch does not move q (METHODS 3.10 pitfall).
    MIN_BATCH_MASS = 0.5

    def __init__(self, params: PGDROParams, ctx: TrainContext) -> None:
        super().__init__(params, ctx)
        n_g = self.soft_counts(ctx, params.temperature)
        # None: n_g is unknown (temperature != 1 without the training memberships); fails once training starts
        self.adjust = None if n_g is None else torch.tensor(params.C / np.sqrt(np.maximum(n_g, MASS_FLOOR)),
                                                            dtype=torch.float32)

    @staticmethod
    def soft_counts(ctx: TrainContext, temperature: float) -> np.ndarray | None:
        """``n_g`` of the memberships sharpened by ``temperature``; None when it cannot be computed from ``ctx``."""
        train_prob = ctx.train_group_prob  # the training rows' π (None: a context rebuilt from a checkpoint)
        if train_prob is not None:
            return sharpened(train_prob, temperature).sum(axis=0)
        if temperature == 1.0:
            return ctx.group_soft_counts
        return None

    def on_train_start(self, steps_per_epoch: int) -> None:
        self._adjustment()

    def _adjustment(self) -> torch.Tensor:
        if self.adjust is None:
            raise ValueError(f"pgdro: temperature={self.params.temperature} sharpens the training counts n_g, which "
                             "needs the training rows' memberships (TrainContext.train_group_prob) that this trial's "
                             "context lacks; use temperature: 1")
        return self.adjust

    def _memberships(self, batch: Batch) -> torch.Tensor:
        prob = batch.group_prob.clamp(min=0) ** (1.0 / self.params.temperature)
        return prob / prob.sum(dim=1, keepdim=True).clamp(min=MASS_FLOOR)

    def loss(self, logits: torch.Tensor, batch: Batch) -> LossOutput:
        means, mass = soft_group_means(self.per_sample_loss(logits, batch), self._memberships(batch))
        adjusted = means + self._adjustment().to(means.device)
        q = self._new_q(adjusted, mass >= self.MIN_BATCH_MASS)
        return self._q_weighted(q, torch.where(mass > 0, adjusted, torch.zeros_like(adjusted)))
