"""Group DRO family (METHODS §3.6, §3.7, §3.10): a distribution q over training groups, updated by
exponentiated gradient, weights the group losses. Training groups come from the spec's group source."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from fairray.methods._base import METHODS, Batch, LossOutput, TrainContext
from fairray.methods._groups import group_means, q_step, soft_group_means
from fairray.methods.erm import BaseLossMethod, BaseLossParams


class _QMethod(BaseLossMethod):
    """Shared state and logging of the q-weighted methods."""

    def __init__(self, params: Any, ctx: TrainContext) -> None:
        super().__init__(params, ctx)
        if ctx.n_groups < 2:
            raise ValueError(f"{type(self).__name__} needs at least two training groups, got {ctx.group_values}")
        self.q = torch.full((ctx.n_groups,), 1.0 / ctx.n_groups)

    def _logs(self) -> dict[str, float]:
        return {f"q/{name}": float(v) for name, v in zip(self.ctx.group_values, self.q.tolist(), strict=True)}

    def state_dict(self) -> dict[str, Any]:
        return {"q": self.q.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.q = torch.tensor(state["q"], dtype=torch.float32)


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
            worst = torch.where(present, means, torch.full_like(means, -float("inf"))).max()
            return LossOutput(worst, {})
        self.q = q_step(self.q, means, present, self.params.eta_q)
        return LossOutput((self.q * means).sum(), self._logs())


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
        adjusted = means + self.adjust
        for_q = adjusted / adjusted[present].sum().clamp(min=1e-12) if self.params.normalize_loss else adjusted
        self.q = q_step(self.q, for_q, present, self.params.eta_q)
        return LossOutput((self.q * torch.where(present, adjusted, torch.zeros_like(adjusted))).sum(), self._logs())


@dataclass(frozen=True)
class PGDROParams(BaseLossParams):
    eta_q: float = field(default=0.01, metadata={"gt": 0})
    #: Group adjustment constant (PG-DRO reference command: 2).
    C: float = field(default=2.0, metadata={"ge": 0})
    #: Sharpening of the memberships: π ∝ π^(1/T).
    temperature: float = field(default=1.0, metadata={"gt": 0})


@METHODS.register("pgdro")
class ProbabilisticGroupDRO(_QMethod):
    """DRO over soft group memberships (Ghosal & Li): ``L_g = Σ π_ig l_i / Σ π_ig``."""

    Params = PGDROParams
    requires = "soft group memberships (inferred groups; one-hot for true groups)"
    sampler = "group_balanced"
    summary = "DRO with probabilistic group membership (METHODS 3.10)"
    #: A group with less soft mass than this in a batch does not move q (METHODS 3.10 pitfall).
    MIN_BATCH_MASS = 0.5

    def __init__(self, params: PGDROParams, ctx: TrainContext) -> None:
        super().__init__(params, ctx)
        self.adjust = torch.tensor(params.C / np.sqrt(np.maximum(ctx.group_soft_counts, 1e-12)), dtype=torch.float32)

    def _memberships(self, batch: Batch) -> torch.Tensor:
        prob = batch.group_prob.clamp(min=0) ** (1.0 / self.params.temperature)
        return prob / prob.sum(dim=1, keepdim=True).clamp(min=1e-12)

    def loss(self, logits: torch.Tensor, batch: Batch) -> LossOutput:
        means, mass = soft_group_means(self.per_sample_loss(logits, batch), self._memberships(batch))
        present = mass >= self.MIN_BATCH_MASS
        adjusted = means + self.adjust
        self.q = q_step(self.q, adjusted, present, self.params.eta_q)
        return LossOutput((self.q * torch.where(present, adjusted, torch.zeros_like(adjusted))).sum(), self._logs())
