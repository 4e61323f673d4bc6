"""ERM with cross-entropy, class-balanced cross-entropy or focal loss (METHODS 3.1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from fairray.methods._base import METHODS, Batch, LossOutput, Method, TrainContext


@dataclass(frozen=True)
class BaseLossParams:
    #: Per-sample base loss: plain CE, class-balanced CE (Cui et al.), or class-balanced focal loss. The
    #: default is METHODS §3.1's (``cb_soft_ce``); methods whose section names another redeclare it
    #: (MinMaxGAP §3.2 and DisEnt §3.9: CE). ``l1``: the absolute error ``|ŷ_i − y_i|`` of a one-output model,
    #: the base loss of ``dataset.targets: regression`` (MAE, METHODS §3.11) and only of it.
    loss: Literal["ce", "cb_ce", "focal", "l1"] = "cb_ce"
    #: Class-balance smoothing; null = (N-1)/N with N the training-set size (ES default).
    beta: float | None = field(default=None, metadata={"ge": 0, "lt": 1})
    #: Focal exponent (0 recovers class-balanced CE).
    gamma: float = field(default=2.0, metadata={"ge": 0})


def class_balanced_weights(class_counts: np.ndarray, beta: float) -> np.ndarray:
    """``α_c = (1/E_c)·|C| / Σ_k 1/E_k`` with effective numbers ``E_c = (1-β^{n_c})/(1-β)``."""
    n = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
    effective = (1.0 - np.power(beta, n)) / (1.0 - beta)
    inv = 1.0 / effective
    return inv * len(n) / inv.sum()


class BaseLoss:
    """Per-sample base loss ``l_i`` shared by every method that wraps one (METHODS 3.1).

    With soft targets ``t_i`` (rows of ``[B, C]``, e.g. rater-vote shares) and class weights ``α``
    (class-balanced for ``cb_ce``/``focal``, all 1 for ``ce``), as implemented by EMO-SUPERB::

        ce / cb_ce:  l_i = −ω_i Σ_c t_ic log p_ic,  ω_i = Σ_c α_c t_ic
        focal:       l_i = −Σ_c α_c t_ic (1 − p_ic)^γ log p_ic

    For a one-hot target (or integer labels ``[B]``) both reduce to ``−α_y (1 − p_y)^γ log p_y`` (γ = 0
    except for focal). The class-balanced ``n_c`` are ``ctx.cb_counts``: per class, the training samples
    whose target is positive for it (soft label ``> 1/|C|`` for multi-label data).
    """

    def __init__(self, params: BaseLossParams, ctx: TrainContext) -> None:
        self.kind = params.loss
        self.gamma = params.gamma
        if self.kind == "l1":  # regression: no classes, no class weights
            self.alpha = torch.ones(0)
            return
        beta = params.beta if params.beta is not None else (ctx.n_train - 1) / ctx.n_train
        alpha = class_balanced_weights(ctx.cb_counts, beta) if self.kind != "ce" else np.ones(ctx.n_classes)
        self.alpha = torch.as_tensor(alpha, dtype=torch.float32)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``l_i`` of every row: ``target`` holds integer labels ``[B]`` or soft targets ``[B, C]`` (``l1``: float
        targets ``[B]`` against the model's one output ``logits [B, 1]``)."""
        if self.kind == "l1":
            return l1(logits, target)
        if target.dim() == 1:
            if self.kind != "focal" and logits.dtype == torch.float32:
                # −α_y log p_y as one fused op (log_softmax + nll_loss): the same products as below
                weight = None if self.kind == "ce" else self.alpha.to(logits.device)  # ce: every α_c is 1
                return F.cross_entropy(logits, target, weight=weight, reduction="none")
            log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
            alpha = self.alpha.to(logits.device)[target]
            if self.kind == "focal":
                return -alpha * (1.0 - log_p.exp()).pow(self.gamma) * log_p
            return -alpha * log_p
        log_p = F.log_softmax(logits, dim=1)
        weighted = self.alpha.to(logits.device) * target.to(log_p.dtype)  # α_c t_ic
        if self.kind == "focal":
            # (1 − p)^γ only where t > 0: elsewhere the term is 0 anyway, and pow's gradient at 1 − p = 0
            # (γ < 1) would turn that 0 into NaN
            one_minus_p = torch.where(target > 0, 1.0 - log_p.exp(), torch.ones_like(log_p))
            return (-weighted * one_minus_p.pow(self.gamma) * log_p).sum(dim=1)
        return -weighted.sum(dim=1) * (target * log_p).sum(dim=1)


def l1(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample absolute error ``|ŷ_i − y_i|`` of a one-output model (``output [B, 1]`` or ``[B]``, float ``target [B]``)."""
    pred = output.squeeze(-1) if output.dim() == 2 else output
    return (pred.float() - target.float()).abs()


class BaseLossMethod(Method):
    """A method built on the per-sample base loss of METHODS §3.1 (every method here): ``self.base``, and
    ``per_sample_loss`` = that loss of the inference logits against the batch's (soft) targets — what
    model selection reads on dev. Subclasses change the loss's counts through :meth:`base_loss`."""

    def __init__(self, params: BaseLossParams, ctx: TrainContext) -> None:
        super().__init__(params, ctx)
        self.base = self.base_loss(params, ctx)

    def base_loss(self, params: BaseLossParams, ctx: TrainContext) -> BaseLoss:
        return BaseLoss(params, ctx)

    def per_sample_loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.base(logits, batch.loss_target)


@METHODS.register("erm")
class ERM(BaseLossMethod):
    """Empirical risk minimisation with the chosen base loss."""

    Params = BaseLossParams
    requires = "nothing"
    sampler = "uniform"
    summary = "ERM with CE, class-balanced CE or focal loss (METHODS 3.1); L1 (MAE) for a regression"
    regression = True  # with loss: l1
    batch_statistics = False  # a mean of per-sample terms

    def loss(self, logits: torch.Tensor, batch: Batch) -> LossOutput:
        loss = self.per_sample_loss(logits, batch).mean()
        return LossOutput(loss, {})
