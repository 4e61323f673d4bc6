"""Reweighting (RW, METHODS §3.4) and downsampling (DS, §3.5) over class x training-group cells."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from fairray.methods._base import METHODS, Batch, LossOutput, SamplerInput, TrainContext
from fairray.methods.erm import BaseLoss, BaseLossMethod, BaseLossParams


def reweighting_table(class_group: np.ndarray, mode: str, w_max: float | None = None) -> np.ndarray:
    """Weights ``w[c, g]`` for each class x group cell (0 where the cell is empty).

    ``idi``: ``N_c / (|G_c| · N_cg)`` — every non-empty group gets the same total weight inside a class.
    ``kc``: ``N_g N_c / (N · N_cg)`` — Kamiran & Calders' expected over observed joint probability.
    Both have dataset mean 1 before clipping at ``w_max``.
    """
    n_cg = class_group.astype(np.float64)
    n_c = n_cg.sum(axis=1, keepdims=True)
    n_g = n_cg.sum(axis=0, keepdims=True)
    nonempty = n_cg > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        if mode == "idi":
            w = n_c / (nonempty.sum(axis=1, keepdims=True) * n_cg)
        else:
            w = n_g * n_c / (n_cg.sum() * n_cg)
    w = np.where(nonempty, w, 0.0)
    return np.minimum(w, w_max) if w_max is not None else w


@dataclass(frozen=True)
class RWParams(BaseLossParams):
    #: idi = within-class inverse group frequency (IDI Eq. 1); kc = Kamiran & Calders reweighing.
    rw_mode: Literal["idi", "kc"] = "idi"
    #: Upper clip on a weight (single-sample cells of many clusters reach ~35); null = no clip.
    w_max: float | None = field(default=None, metadata={"gt": 0})


@METHODS.register("rw")
class Reweighting(BaseLossMethod):
    Params = RWParams
    requires = "true or inferred groups"
    sampler = "uniform"
    summary = "reweighting by class x group frequency (idi or kc) (METHODS 3.4)"

    def __init__(self, params: RWParams, ctx: TrainContext) -> None:
        super().__init__(params, ctx)
        self.table = torch.tensor(reweighting_table(ctx.class_group_counts, params.rw_mode, params.w_max),
                                  dtype=torch.float32)

    def loss(self, logits: torch.Tensor, batch: Batch) -> LossOutput:
        known = batch.group >= 0
        w = torch.where(known, self.table[batch.y, batch.group.clamp(min=0)], torch.ones_like(batch.y, dtype=torch.float32))
        return LossOutput((w * self.per_sample_loss(logits, batch)).mean(), {})


def downsample(inp: SamplerInput, n_classes: int, n_groups: int, rng: np.random.Generator) -> np.ndarray:
    """Per class c, ``m_c = min`` over its non-empty groups of ``N_cg``; draw ``m_c`` from every such group
    without replacement. Samples of unknown group are left out."""
    idx = inp.indices[inp.group[inp.indices] >= 0]
    y, g = inp.y[idx], inp.group[idx]
    keep = []
    for c in range(n_classes):
        cells = [idx[(y == c) & (g == k)] for k in range(n_groups)]
        cells = [cell for cell in cells if len(cell)]
        if not cells:
            continue
        m = min(len(cell) for cell in cells)
        keep += [rng.choice(cell, size=m, replace=False) for cell in cells]
    return np.sort(np.concatenate(keep)) if keep else idx[:0]


@dataclass(frozen=True)
class DSParams(BaseLossParams):
    #: Redraw the balanced subset every epoch, or draw it once (seeded by ds_seed).
    ds_resample: Literal["epoch", "once"] = "epoch"
    ds_seed: int = 0


def _subset_counts(ctx: TrainContext) -> np.ndarray:
    """Per class, the clips DS keeps: its smallest present group's count times the number of present groups."""
    return np.array([row[row > 0].min() * (row > 0).sum() if (row > 0).any() else 0
                     for row in ctx.class_group_counts])


@METHODS.register("ds")
class Downsampling(BaseLossMethod):
    Params = DSParams
    requires = "true or inferred groups"
    sampler = "uniform"
    summary = "downsampling every class x group cell to the class's smallest group (METHODS 3.5)"

    def __init__(self, params: DSParams, ctx: TrainContext) -> None:
        super().__init__(params, ctx)
        self.retained = float(_subset_counts(ctx).sum() / max(ctx.n_train, 1))

    def base_loss(self, params: DSParams, ctx: TrainContext) -> BaseLoss:
        """Class-balanced weights from the class counts of the balanced subset DS trains on."""
        subset_counts = _subset_counts(ctx)
        subset = replace(ctx, class_counts=subset_counts, n_train=int(subset_counts.sum()))
        if ctx.class_target_counts is not None:
            # multi-label: the subset's expected positives per class; label k keeps subset_counts[k] of its
            # class_counts[k] samples (for single-label data this is exactly diag(subset_counts))
            scaled = np.asarray(ctx.class_target_counts, dtype=np.float64) * subset_counts[:, None]
            subset = replace(subset, class_target_counts=scaled / np.maximum(ctx.class_counts, 1)[:, None])
        return BaseLoss(params, subset)

    def loss(self, logits: torch.Tensor, batch: Batch) -> LossOutput:
        return LossOutput(self.per_sample_loss(logits, batch).mean(), {"retained_fraction": self.retained})

    def batches(self, inp: SamplerInput, batch_size: int, rng: np.random.Generator, epoch: int,
                sampler: str) -> Iterator[np.ndarray]:
        draw = rng if self.params.ds_resample == "epoch" else np.random.default_rng(self.params.ds_seed)
        subset = downsample(inp, self.ctx.n_classes, self.ctx.n_groups, draw)
        return super().batches(replace(inp, indices=subset), batch_size, rng, epoch, sampler)
