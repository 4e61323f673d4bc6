"""LfF — Learning from Failure (METHODS §3.8): a biased net trained with GCE singles out the samples it
fails on, and the debiased net's base loss is weighted by that relative difficulty.

Per step, with detached CE losses ``a_i`` (biased ``f_B``) and ``d_i`` (debiased ``f_D``)::

    e^B_i ← α e^B_i + (1 − α) a_i          (first visit: e^B_i = a_i; unvisited rows: 0), same for e^D
    ê_i   = e_i / max_{j: c_j = c_i} e_j    (over the whole table, per class)
    W_i   = ê^B_i / (ê^B_i + ê^D_i + 1e-8)
    L     = mean_i GCE_q(f_B(x_i), t_i) + mean_i W_i · l^D_i

The EMA tables and ``W`` (:class:`DifficultyWeights`) and :func:`gce` are shared with DisEnt (§3.9).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fairray.methods._base import METHODS, Batch, LossOutput, TrainContext
from fairray.methods.erm import BaseLossMethod, BaseLossParams

#: ``W_i = ê^B_i / (ê^B_i + ê^D_i + W_EPS)`` (the reference code's constant).
W_EPS = 1e-8
#: Floor of a class's table maximum, so a class whose visited losses are all 0 gives ê = 0, not NaN.
MAX_FLOOR = 1e-12


def _log_p_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``log p_t``: the log-probability of the integer label, or of a soft target ``p_t = Σ_c t_c p_c``."""
    log_p = F.log_softmax(logits, dim=1)
    if target.dim() == 1:
        return log_p.gather(1, target[:, None]).squeeze(1)
    return torch.logsumexp(log_p + target.clamp(min=0).log(), dim=1)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample CE for integer labels or soft targets (what the EMA tables track)."""
    if target.dim() == 1:
        return F.cross_entropy(logits, target, reduction="none")
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1)


def gce(logits: torch.Tensor, target: torch.Tensor, q: float) -> torch.Tensor:
    """Per-sample generalised CE ``(1 − p_t^q) / q`` (Zhang & Sabuncu); its gradient is ``p_t^q ∇CE``.

    ``target`` is an integer label per row or a soft target per row (``p_t = Σ_c t_c p_c``, METHODS §3.8 [R]).

    >>> gce(torch.zeros(1, 2), torch.tensor([0]), q=1.0)    # p_t = 1/2
    tensor([0.5000])
    """
    return (1.0 - torch.exp(q * _log_p_target(logits, target))) / q


def class_of(target: torch.Tensor) -> torch.Tensor:
    """The class a sample is normalised with: its label, or the argmax of a soft target."""
    return target if target.dim() == 1 else target.argmax(dim=1)


def _gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate the rows of every worker (rank order) under DDP, so per-sample tables stay identical
    on all ranks (METHODS §3.0); the inputs themselves in a single process. Workers' batches may differ
    in size by a few rows, so each is padded to the largest before ``all_gather`` and trimmed after."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return tensors
    world = dist.get_world_size()
    n = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    rows = [int(s) for s in sizes]
    out = []
    for t in tensors:
        padded = t.new_zeros((max(rows), *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[:r] for p, r in zip(parts, rows, strict=True)]))
    return tuple(out)


class SampleLossEMA:
    """Per-dataset-row EMA of a detached loss: ``e_i ← α e_i + (1 − α) a_i``, ``e_i = a_i`` on the first
    visit, 0 before it. The table also remembers each visited row's class for the class-wise maximum."""

    def __init__(self, n_rows: int, alpha: float) -> None:
        self.alpha = alpha
        self.value = torch.zeros(n_rows)
        self.label = torch.full((n_rows,), -1, dtype=torch.long)  # -1 = not visited yet

    def update(self, index: torch.Tensor, loss: torch.Tensor, label: torch.Tensor) -> None:
        """One EMA step for the rows ``index``; a row drawn several times in the step (samplers with
        replacement, several workers) takes the mean of its losses, so the update is order-free."""
        rows, inverse = torch.unique(index, return_inverse=True)
        counts = torch.zeros(len(rows)).index_add_(0, inverse, torch.ones(len(index)))
        mean = torch.zeros(len(rows)).index_add_(0, inverse, loss.float()) / counts
        seen = self.label[rows] >= 0
        self.value[rows] = torch.where(seen, self.alpha * self.value[rows] + (1.0 - self.alpha) * mean, mean)
        self.label[rows] = torch.zeros(len(rows), dtype=torch.long).scatter_(0, inverse, label)

    def normalised(self, index: torch.Tensor, label: torch.Tensor, n_classes: int) -> torch.Tensor:
        """``ê_i = e_i / max_{j: c_j = c_i} e_j``, the maximum over the whole table (unvisited rows are 0)."""
        visited = self.label >= 0
        class_max = torch.zeros(n_classes).scatter_reduce(0, self.label[visited], self.value[visited], "amax")
        return self.value[index] / class_max[label].clamp(min=MAX_FLOOR)

    def state_dict(self) -> dict[str, Any]:
        """The visited rows only (JSON-ready): ``index``, ``label``, ``value``; the rest is 0."""
        rows = torch.nonzero(self.label >= 0).flatten()
        return {"n_rows": len(self.value), "index": rows.tolist(), "label": self.label[rows].tolist(),
                "value": self.value[rows].tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["n_rows"] != len(self.value):
            raise ValueError(f"the stored EMA table has {state['n_rows']} rows, the dataset has {len(self.value)}; "
                             "was the checkpoint written for another dataset?")
        rows = torch.tensor(state["index"], dtype=torch.long)
        self.value.zero_()
        self.label.fill_(-1)
        self.value[rows] = torch.tensor(state["value"], dtype=self.value.dtype)
        self.label[rows] = torch.tensor(state["label"], dtype=torch.long)


class DifficultyWeights:
    """The relative difficulty ``W_i = ê^B_i / (ê^B_i + ê^D_i + 1e-8)`` from two per-sample EMA tables:
    one of a biased model's losses (``B``), one of the debiased model's (``D``). LfF and DisEnt."""

    def __init__(self, ctx: TrainContext, alpha: float) -> None:
        self.n_classes = ctx.n_classes
        self.biased = SampleLossEMA(ctx.n_rows, alpha)
        self.debiased = SampleLossEMA(ctx.n_rows, alpha)

    def __call__(self, batch: Batch, loss_b: torch.Tensor, loss_d: torch.Tensor) -> torch.Tensor:
        """Update both tables with the (detached) losses of every worker's batch, then ``W`` of this batch."""
        device = loss_b.device
        label = class_of(batch.y).to(device)  # y = the argmax of a soft target (METHODS §3.8)
        index, label_all, b, d = (t.cpu() for t in _gather_rows(batch.index.to(device), label,
                                                                 loss_b.detach(), loss_d.detach()))
        self.biased.update(index, b, label_all)
        self.debiased.update(index, d, label_all)
        rows, label = batch.index.cpu(), label.cpu()
        e_b = self.biased.normalised(rows, label, self.n_classes)
        e_d = self.debiased.normalised(rows, label, self.n_classes)
        return (e_b / (e_b + e_d + W_EPS)).to(device)

    def state_dict(self) -> dict[str, Any]:
        return {"biased": self.biased.state_dict(), "debiased": self.debiased.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.biased.load_state_dict(state["biased"])
        self.debiased.load_state_dict(state["debiased"])


class LfFLogits(NamedTuple):
    """Forward output of the LfF training module: class logits of both networks."""

    biased: torch.Tensor
    debiased: torch.Tensor


class LfFNets(nn.Module):
    """The biased net ``f_B`` and the debiased net ``f_D`` (same architecture, independent weights)."""

    def __init__(self, biased: nn.Module, debiased: nn.Module) -> None:
        super().__init__()
        self.biased, self.debiased = biased, debiased

    def forward(self, x: torch.Tensor) -> LfFLogits:
        return LfFLogits(self.biased(x), self.debiased(x))


@dataclass(frozen=True)
class LfFParams(BaseLossParams):
    #: GCE exponent of the biased net (larger = stronger focus on the samples it finds easy).
    q: float = field(default=0.7, metadata={"gt": 0, "le": 1})
    #: EMA decay of the per-sample losses.
    ema_alpha: float = field(default=0.7, metadata={"ge": 0, "lt": 1})


@METHODS.register("lff")
class LfF(BaseLossMethod):
    """Learning from Failure; ``f_D`` is the model that is evaluated, selected and exported."""

    Params = LfFParams
    requires = "nothing"
    sampler = "uniform"
    summary = "LfF: GCE-biased net re-weights the debiased net's base loss by relative difficulty (METHODS 3.8)"

    def __init__(self, params: LfFParams, ctx: TrainContext) -> None:
        super().__init__(params, ctx)
        self.weights = DifficultyWeights(ctx, params.ema_alpha)

    def build_model(self, build: Callable[[int], nn.Module]) -> LfFNets:
        return LfFNets(biased=build(self.ctx.n_classes), debiased=build(self.ctx.n_classes))

    def inference_model(self, train_module: LfFNets) -> nn.Module:
        return train_module.debiased

    def loss(self, outputs: LfFLogits, batch: Batch) -> LossOutput:
        (logits_b, logits_d), t = outputs, batch.loss_target  # soft targets for multi-label data
        w = self.weights(batch, cross_entropy(logits_b.detach(), t), cross_entropy(logits_d.detach(), t))
        gce_b = gce(logits_b, t, self.params.q).mean()
        weighted_d = (w * self.base(logits_d, t)).mean()
        return LossOutput(gce_b + weighted_d, {"gce_biased": float(gce_b.detach()), "weight_mean": float(w.mean())})

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.weights.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights.load_state_dict(state["ema"])
