"""LfF — Learning from Failure (METHODS §3.8): a biased net trained with GCE singles out the samples it
fails on, and the debiased net's base loss is weighted by that relative difficulty.

Per step, with detached CE losses ``a_i`` (biased ``f_B``) and ``d_i`` (debiased ``f_D``)::

    e^B_i ← α e^B_i + (1 − α) a_i          (first visit: e^B_i = a_i; unvisited rows: 0), same for e^D
    ê_i   = e_i / max_{j: c_j = c_i} e_j    (over the whole table, per class)
    W_i   = ê^B_i / (ê^B_i + ê^D_i + 1e-8)
    L     = mean_i GCE_q(f_B(x_i), t_i) + mean_i W_i · l^D_i

``W`` reads the tables stepped with the batch's rows; ``loss()`` returns those rows as its update and
:meth:`LfF.on_step` commits them once the optimiser step is taken. The EMA tables and ``W``
(:class:`DifficultyWeights`) and :func:`gce` are shared with DisEnt (§3.9).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    visit, 0 before it. The table also remembers each visited row's class for the class-wise maximum.

    :meth:`stepped` computes the table after a step without changing it (what ``loss()`` uses);
    :meth:`update` commits a step. The tables live on the method's device (:meth:`Method.to`).
    """

    def __init__(self, n_rows: int, alpha: float) -> None:
        self.alpha = alpha
        self.value = torch.zeros(n_rows)
        self.label = torch.full((n_rows,), -1, dtype=torch.long)  # -1 = not visited yet

    def stepped(self, index: torch.Tensor, loss: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(value, label)`` of the table after one EMA step for the rows ``index`` (new tensors; the table
        is unchanged). A row drawn several times in the step (samplers with replacement, several workers,
        several micro-batches) takes the mean of its losses, so the step is order-free."""
        device = self.value.device
        index, loss, label = index.to(device), loss.to(device), label.to(device)
        rows, inverse = torch.unique(index, return_inverse=True)
        counts = torch.zeros(len(rows), device=device).index_add_(0, inverse, torch.ones(len(index), device=device))
        mean = torch.zeros(len(rows), device=device).index_add_(0, inverse, loss.float()) / counts
        seen = self.label[rows] >= 0
        value, labels = self.value.clone(), self.label.clone()
        value[rows] = torch.where(seen, self.alpha * self.value[rows] + (1.0 - self.alpha) * mean, mean)
        labels[rows] = torch.zeros(len(rows), dtype=torch.long, device=device).scatter_(0, inverse, label)
        return value, labels

    def update(self, index: torch.Tensor, loss: torch.Tensor, label: torch.Tensor) -> None:
        """Commit one EMA step for the rows ``index`` (see :meth:`stepped`)."""
        self.value, self.label = self.stepped(index, loss, label)

    def normalised(self, index: torch.Tensor, label: torch.Tensor, n_classes: int,
                   table: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``ê_i = e_i / max_{j: c_j = c_i} e_j``, the maximum over the whole table (unvisited rows are 0);
        of ``table`` (a :meth:`stepped` result) when given, else of the committed table."""
        value, labels = (self.value, self.label) if table is None else table
        index, label = index.to(value.device), label.to(value.device)
        visited = labels >= 0
        class_max = torch.zeros(n_classes, device=value.device).scatter_reduce(0, labels[visited], value[visited], "amax")
        return value[index] / class_max[label].clamp(min=MAX_FLOOR)

    def state_dict(self) -> dict[str, Any]:
        """The visited rows only (JSON-ready): ``index``, ``label``, ``value``; the rest is 0."""
        rows = torch.nonzero(self.label >= 0).flatten()
        return {"n_rows": len(self.value), "index": rows.tolist(), "label": self.label[rows].tolist(),
                "value": self.value[rows].tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["n_rows"] != len(self.value):
            raise ValueError(f"the stored EMA table has {state['n_rows']} rows, the dataset has {len(self.value)}; "
                             "was the checkpoint written for another dataset?")
        device = self.value.device
        rows = torch.tensor(state["index"], dtype=torch.long, device=device)
        self.value = torch.zeros_like(self.value)
        self.label = torch.full_like(self.label, -1)
        self.value[rows] = torch.tensor(state["value"], dtype=self.value.dtype, device=device)
        self.label[rows] = torch.tensor(state["label"], dtype=torch.long, device=device)


class EMARows(NamedTuple):
    """The rows one (micro-)batch adds to both EMA tables, gathered from every worker: dataset row, class,
    detached CE of the biased and of the debiased model (what ``loss()`` returns as its update)."""

    index: torch.Tensor
    label: torch.Tensor
    biased: torch.Tensor
    debiased: torch.Tensor


class DifficultyWeights:
    """The relative difficulty ``W_i = ê^B_i / (ê^B_i + ê^D_i + 1e-8)`` from two per-sample EMA tables:
    one of a biased model's losses (``B``), one of the debiased model's (``D``). LfF and DisEnt.

    Calling it is pure: ``W`` of the batch comes from the tables stepped with the batch's rows, and those
    rows are returned for :meth:`commit` after the optimiser step. Committing the rows of all micro-batches
    of an accumulated step at once is the step a single batch of all of them would take; a micro-batch's
    ``W`` sees the committed tables and its own rows.
    """

    def __init__(self, ctx: TrainContext, alpha: float) -> None:
        self.n_classes = ctx.n_classes
        self.biased = SampleLossEMA(ctx.n_rows, alpha)
        self.debiased = SampleLossEMA(ctx.n_rows, alpha)

    def __call__(self, batch: Batch, loss_b: torch.Tensor, loss_d: torch.Tensor) -> tuple[torch.Tensor, EMARows]:
        """``W`` of this batch from both tables stepped with the (detached) losses of every worker's batch,
        and those rows (the update to commit). The tables are unchanged."""
        device = loss_b.device
        label = class_of(batch.y).to(device)  # y = the argmax of a soft target (METHODS §3.8)
        rows = EMARows(*_gather_rows(batch.index.to(device), label, loss_b.detach(), loss_d.detach()))
        e_b = self.biased.normalised(batch.index, label, self.n_classes,
                                     self.biased.stepped(rows.index, rows.biased, rows.label))
        e_d = self.debiased.normalised(batch.index, label, self.n_classes,
                                       self.debiased.stepped(rows.index, rows.debiased, rows.label))
        return (e_b / (e_b + e_d + W_EPS)).to(device), rows

    def commit(self, updates: Sequence[EMARows]) -> None:
        """One EMA step of both tables with the rows of every micro-batch of the optimiser step."""
        if not updates:
            return
        rows = updates[0] if len(updates) == 1 else EMARows(*(torch.cat(parts) for parts in zip(*updates, strict=True)))
        self.biased.update(rows.index, rows.biased, rows.label)
        self.debiased.update(rows.index, rows.debiased, rows.label)

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
    batch_statistics = False  # means of per-sample terms; W comes from the EMA tables, not batch sums

    def __init__(self, params: LfFParams, ctx: TrainContext) -> None:
        super().__init__(params, ctx)
        self.weights = DifficultyWeights(ctx, params.ema_alpha)

    def build_model(self, build: Callable[[int], nn.Module]) -> LfFNets:
        return LfFNets(biased=build(self.ctx.n_classes), debiased=build(self.ctx.n_classes))

    def inference_model(self, train_module: LfFNets) -> nn.Module:
        return train_module.debiased

    def loss(self, outputs: LfFLogits, batch: Batch) -> LossOutput:
        (logits_b, logits_d), t = outputs, batch.loss_target  # soft targets for multi-label data
        w, rows = self.weights(batch, cross_entropy(logits_b.detach(), t), cross_entropy(logits_d.detach(), t))
        gce_b = gce(logits_b, t, self.params.q).mean()
        weighted_d = (w * self.base(logits_d, t)).mean()
        return LossOutput(gce_b + weighted_d, {"gce_biased": float(gce_b.detach()), "weight_mean": float(w.mean())},
                          update=rows)

    def on_step(self, outputs: Sequence[LossOutput]) -> None:
        """Commit the step's rows to the EMA tables (all micro-batches)."""
        self.weights.commit([out.update for out in outputs])

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.weights.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights.load_state_dict(state["ema"])
