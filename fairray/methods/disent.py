"""DisEnt — disentangled feature augmentation (METHODS §3.9, Lee et al. 2021).

Two encoders give ``z_i = E_i(x)`` (intrinsic) and ``z_b = E_b(x)`` (bias), each ``d``-dimensional;
linear classifiers ``C_i, C_b : R^{2d} → R^{|C|}`` read ``ẑ_i = [z_i; sg(z_b)]`` and ``ẑ_b = [sg(z_i); z_b]``::

    L_dis  = mean W·l(C_i(ẑ_i), t) + λ_dis · mean GCE_q(C_b(ẑ_b), t)
    L_swap = mean W·l(C_i([z_i; sg(z_b[π])]), t) + λ_swap_b · mean GCE_q(C_b([sg(z_i); z_b[π]]), t[π])
    L      = L_dis + λ_swap · L_swap        (L_swap from optimiser step round(swap_start · total steps) on)

``W`` is LfF's relative difficulty from EMAs of ``CE(C_b(ẑ_b))`` (biased) and ``CE(C_i(ẑ_i))``; ``l`` is
the base loss of METHODS §3.1 (the paper's CE is ``loss: ce``; ``cb_ce`` / ``focal`` work as in the other
methods). Inference: ``C_i([z_i; z_b])``.

The step counter counts optimiser steps (:meth:`DisEnt.on_step`); it seeds π and starts the swap. The first
swapping step needs the trial's length, known from :meth:`DisEnt.on_train_start` (``steps_per_epoch`` x
``ctx.epochs``); before that call only ``swap_start: 0`` swaps. ``swap_unit: epochs`` rounds the first
swapping step to an epoch boundary (from epoch ``round(swap_start · epochs)`` on: fairray's schedule before
METHODS 3.9's step fraction was followed).

Each classifier is applied in two parts, ``C([u; v]) = W_u u + W_v v + c``, inside the training module's
forward. Swapping ``z_b`` is then a row permutation of the ``z_b`` parts, so the loss needs no access to
the classifiers and every parameter is used inside ``forward`` (what DDP expects).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fairray.methods._base import METHODS, Batch, LossOutput, TrainContext
from fairray.methods.erm import BaseLossMethod
from fairray.methods.lff import DifficultyWeights, LfFParams, cross_entropy, gce

#: Base seed of the per-step generator that draws the swap permutation π (seed = PERM_SEED + step), so a
#: run — and a run resumed from a checkpoint — draws the same permutations.
PERM_SEED = 20_211_207


class DisEntOutput(NamedTuple):
    """``C_i`` and ``C_b`` split by the encoder feeding them; the classifier bias rides on the ``z_i`` part.

    ``C_i(ẑ_i) = i_from_i + i_from_b`` with ``i_from_b = W_{i,b} sg(z_b)``;
    ``C_b(ẑ_b) = b_from_i + b_from_b`` with ``b_from_i = W_{b,i} sg(z_i) + c_b``.
    """

    i_from_i: torch.Tensor
    i_from_b: torch.Tensor
    b_from_i: torch.Tensor
    b_from_b: torch.Tensor

    def intrinsic(self, perm: torch.Tensor | None = None) -> torch.Tensor:
        """``C_i([z_i; sg(z_b[π])])`` (π = identity when ``perm`` is None)."""
        return self.i_from_i + (self.i_from_b if perm is None else self.i_from_b[perm])

    def bias(self, perm: torch.Tensor | None = None) -> torch.Tensor:
        """``C_b([sg(z_i); z_b[π]])`` (π = identity when ``perm`` is None)."""
        return self.b_from_i + (self.b_from_b if perm is None else self.b_from_b[perm])


def _linear_parts(cls: nn.Linear, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_u u + c, W_v v)`` with ``cls([u; v]) = W_u u + W_v v + c``."""
    d = u.shape[1]
    return F.linear(u, cls.weight[:, :d], cls.bias), F.linear(v, cls.weight[:, d:])


class DisEntNets(nn.Module):
    """Encoders ``E_i``, ``E_b`` (model plugin instances with ``d`` outputs) and classifiers ``C_i``, ``C_b``."""

    def __init__(self, enc_i: nn.Module, enc_b: nn.Module, d: int, n_classes: int) -> None:
        super().__init__()
        self.enc_i, self.enc_b = enc_i, enc_b
        self.cls_i, self.cls_b = nn.Linear(2 * d, n_classes), nn.Linear(2 * d, n_classes)

    def forward(self, x: torch.Tensor) -> DisEntOutput:
        z_i, z_b = self.enc_i(x), self.enc_b(x)
        i_from_i, i_from_b = _linear_parts(self.cls_i, z_i, z_b.detach())
        b_from_i, b_from_b = _linear_parts(self.cls_b, z_i.detach(), z_b)
        return DisEntOutput(i_from_i, i_from_b, b_from_i, b_from_b)


class IntrinsicClassifier(nn.Module):
    """The inference net ``C_i([E_i(x); E_b(x)])``, sharing the training module's weights."""

    def __init__(self, enc_i: nn.Module, enc_b: nn.Module, cls_i: nn.Linear) -> None:
        super().__init__()
        self.enc_i, self.enc_b, self.cls_i = enc_i, enc_b, cls_i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_i(torch.cat([self.enc_i(x), self.enc_b(x)], dim=1))


@dataclass(frozen=True)
class DisEntParams(LfFParams):  # + LfF's q (GCE exponent of the bias branch) and ema_alpha
    #: Per-sample base loss of the intrinsic branch: CE, as in the paper (METHODS 3.9).
    loss: Literal["ce", "cb_ce", "focal"] = "ce"
    #: Feature size of each encoder (the model plugin is built with d outputs). The reference MLP uses 16,
    #: its ResNets 512; 64 suits the MLP heads over utterance features.
    d: int = field(default=64, metadata={"ge": 1})
    #: Weight of the bias branch's GCE in L_dis.
    lambda_dis: float = field(default=1.0, metadata={"ge": 0})
    #: Weight of the swapped bias branch's GCE in L_swap; null = lambda_dis (the reference default).
    lambda_swap_b: float | None = field(default=None, metadata={"ge": 0})
    #: Weight of L_swap.
    lambda_swap: float = field(default=1.0, metadata={"ge": 0})
    #: Fraction of the trial's optimiser steps before swapping starts: from step round(swap_start · steps)
    #: on (METHODS 3.9: 20 % = 10k of 50k steps in the reference scripts).
    swap_start: float = field(default=0.2, metadata={"ge": 0, "le": 1})
    #: What swap_start is a fraction of: optimiser steps, or epochs (the first swapping step rounded to an
    #: epoch boundary, from epoch round(swap_start · epochs) on: fairray's earlier schedule).
    swap_unit: Literal["steps", "epochs"] = "steps"


def first_swap_step(swap_start: float, unit: str, steps_per_epoch: int, epochs: int) -> int:
    """The first optimiser step with ``L_swap`` (0-based; rounded half up): ``round(swap_start · total steps)``
    for ``unit`` steps, ``round(swap_start · epochs) · steps_per_epoch`` for epochs.

    >>> first_swap_step(0.2, "steps", 7, 4), first_swap_step(0.2, "epochs", 7, 4)
    (6, 7)
    """
    if unit == "epochs":
        return math.floor(swap_start * epochs + 0.5) * steps_per_epoch
    return math.floor(swap_start * steps_per_epoch * epochs + 0.5)


@METHODS.register("disent")
class DisEnt(BaseLossMethod):
    """Disentangled feature augmentation; ``C_i([E_i(x); E_b(x)])`` is evaluated, selected and exported."""

    Params = DisEntParams
    requires = "nothing"
    sampler = "uniform"
    summary = "DisEnt: intrinsic/bias encoders, LfF weights and swapped bias features (METHODS 3.9)"

    batch_statistics = False  # means of per-sample terms; W comes from the EMA tables, not batch sums

    def __init__(self, params: DisEntParams, ctx: TrainContext) -> None:
        super().__init__(params, ctx)
        self.weights = DifficultyWeights(ctx, params.ema_alpha)
        self.lambda_swap_b = params.lambda_dis if params.lambda_swap_b is None else params.lambda_swap_b
        self.step = 0  # optimiser steps taken (seeds π, starts the swap)
        # the first step with L_swap; known once on_train_start gives the steps per epoch (0 needs no length)
        self.swap_step: int | None = 0 if params.swap_start == 0 else None

    def build_model(self, build: Callable[[int], nn.Module]) -> DisEntNets:
        d = self.params.d
        return DisEntNets(enc_i=build(d), enc_b=build(d), d=d, n_classes=self.ctx.n_classes)

    def inference_model(self, train_module: DisEntNets) -> nn.Module:
        return IntrinsicClassifier(train_module.enc_i, train_module.enc_b, train_module.cls_i)

    def on_train_start(self, steps_per_epoch: int) -> None:
        self.swap_step = first_swap_step(self.params.swap_start, self.params.swap_unit, steps_per_epoch,
                                         self.ctx.epochs)

    @property
    def swapping(self) -> bool:
        """Whether the current step adds ``L_swap``."""
        return self.swap_step is not None and self.step >= self.swap_step

    def permutation(self, n: int) -> torch.Tensor:
        """π of the current step: a permutation of ``0..n-1`` drawn from a generator seeded by the step."""
        return torch.randperm(n, generator=torch.Generator().manual_seed(PERM_SEED + self.step))

    def loss(self, outputs: DisEntOutput, batch: Batch) -> LossOutput:
        t, p = batch.loss_target, self.params  # soft targets for multi-label data
        logits_i, logits_b = outputs.intrinsic(), outputs.bias()
        w, rows = self.weights(batch, cross_entropy(logits_b.detach(), t), cross_entropy(logits_i.detach(), t))
        l_dis = (w * self.base(logits_i, t)).mean() + p.lambda_dis * gce(logits_b, t, p.q).mean()
        logs = {"l_dis": float(l_dis.detach()), "swapping": float(self.swapping)}
        loss = l_dis
        if self.swapping:
            perm = self.permutation(len(batch)).to(t.device)
            l_swap = ((w * self.base(outputs.intrinsic(perm), t)).mean()
                      + self.lambda_swap_b * gce(outputs.bias(perm), t[perm], p.q).mean())
            loss = l_dis + p.lambda_swap * l_swap
            logs["l_swap"] = float(l_swap.detach())
        return LossOutput(loss, logs, update=rows)

    def on_step(self, outputs: Sequence[LossOutput]) -> None:
        """Commit the step's rows to the EMA tables (all micro-batches) and count the optimiser step."""
        self.weights.commit([out.update for out in outputs])
        self.step += 1

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.weights.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Checkpoints written before the step schedule also hold an epoch counter, which is not needed."""
        self.weights.load_state_dict(state["ema"])
        self.step = int(state["step"])
