"""Reweighting (RW, METHODS §3.4) and downsampling (DS, §3.5) over class x training-group cells."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

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
    batch_statistics = False  # a mean of per-sample terms w_i l_i

    def __init__(self, params: RWParams, ctx: TrainContext) -> None:
        super().__init__(params, ctx)
        self.table = torch.tensor(reweighting_table(ctx.class_group_counts, params.rw_mode, params.w_max),
                                  dtype=torch.float32)

    def loss(self, logits: torch.Tensor, batch: Batch) -> LossOutput:
        known = batch.group >= 0
        table = self.table.to(batch.device)
        w = torch.where(known, table[batch.y, batch.group.clamp(min=0)], torch.ones_like(batch.y, dtype=torch.float32))
        return LossOutput((w * self.per_sample_loss(logits, batch)).mean(), {})


def subset_sizes(class_group: np.ndarray, mode: str) -> np.ndarray:
    """Clips DS keeps of every class x group cell ``[C, G]`` (0 for an empty cell, which has none to draw).

    ``idi``: ``m_c = min`` over the class's non-empty groups of ``N_cg`` (METHODS §3.5: every group of the
    class down to its smallest). ``kc_uniform``: the cell's expected size under independence,
    ``N_c N_g / N`` rounded half up (Kamiran & Calders' uniform sampling); larger cells are subsampled,
    smaller ones duplicated.
    """
    n_cg = np.asarray(class_group, dtype=np.int64)
    nonempty = n_cg > 0
    if mode == "idi":
        m = np.where(nonempty, n_cg, np.iinfo(np.int64).max).min(axis=1, keepdims=True)
        return np.where(nonempty, m, 0)
    if mode == "kc_uniform":
        n = max(int(n_cg.sum()), 1)
        expected = n_cg.sum(axis=1, keepdims=True) * n_cg.sum(axis=0, keepdims=True) / n
        return np.where(nonempty, np.floor(expected + 0.5).astype(np.int64), 0)
    raise ValueError(f"ds_mode must be one of {DS_MODES}, got {mode!r}")


def downsample(inp: SamplerInput, n_classes: int, n_groups: int, rng: np.random.Generator,
               mode: str = "idi") -> np.ndarray:
    """The training subset DS trains on: every class x group cell drawn to its :func:`subset_sizes` size,
    without replacement up to the cell's size, the rest (``kc_uniform`` only) with replacement on top of the
    whole cell. Samples of unknown group are left out. Sorted; a duplicated clip appears several times."""
    idx = inp.indices[inp.group[inp.indices] >= 0]
    y, g = inp.y[idx], inp.group[idx]
    counts = np.zeros((n_classes, n_groups), dtype=np.int64)
    np.add.at(counts, (y, g), 1)
    sizes = subset_sizes(counts, mode)
    keep = []
    for c in range(n_classes):
        for k in range(n_groups):
            cell = idx[(y == c) & (g == k)]
            if not len(cell):
                continue
            size = int(sizes[c, k])
            if size <= len(cell):
                keep.append(rng.choice(cell, size=size, replace=False))
            else:
                keep += [cell, rng.choice(cell, size=size - len(cell), replace=True)]
    return np.sort(np.concatenate(keep)) if keep else idx[:0]


#: The DS variants (``ds_mode``).
DS_MODES = ("idi", "kc_uniform")


@dataclass(frozen=True)
class DSParams(BaseLossParams):
    #: idi = every cell of a class down to the class's smallest group (IDI); kc_uniform = every cell resampled
    #: to its expected size N_c N_g / N (Kamiran & Calders' uniform sampling; METHODS 3.5).
    ds_mode: Literal["idi", "kc_uniform"] = "idi"
    #: Redraw the subset every epoch (from the loop's epoch generator), or draw it once (seeded by ds_seed).
    ds_resample: Literal["epoch", "once"] = "epoch"
    ds_seed: int = 0


def _subset_counts(ctx: TrainContext, mode: str) -> np.ndarray:
    """Per class, the clips of the subset DS trains on (duplicates counted)."""
    return subset_sizes(ctx.class_group_counts, mode).sum(axis=1)


@METHODS.register("ds")
class Downsampling(BaseLossMethod):
    """Downsampling (METHODS §3.5): train with the base loss on a class x group balanced subset, its
    class-balanced weights recomputed on the subset.

    State: the current subset's dataset rows, with the draw that made it (``ds_seed`` for ``once``; for
    ``epoch``, the epoch whose generator drew it) — kept in checkpoints and logged as the method state. A
    resumed ``once`` trial trains on its stored subset. Per batch, ``retained_fraction`` (subset size over
    training-set size) is logged: with many clusters ``idi`` keeps little (METHODS §3.5 pitfall).
    """

    Params = DSParams
    requires = "true or inferred groups"
    sampler = "uniform"
    summary = "downsampling every class x group cell to the class's smallest group, or kc_uniform (METHODS 3.5)"
    batch_statistics = False  # a mean of per-sample terms

    def __init__(self, params: DSParams, ctx: TrainContext) -> None:
        super().__init__(params, ctx)
        self.retained = float(_subset_counts(ctx, params.ds_mode).sum() / max(ctx.n_train, 1))
        self.subset: np.ndarray | None = None  # dataset rows of the current subset
        self.drawn_epoch: int | None = None  # the epoch whose generator drew it (ds_resample: epoch)

    def base_loss(self, params: DSParams, ctx: TrainContext) -> BaseLoss:
        """Class-balanced weights from the class counts of the balanced subset DS trains on."""
        subset_counts = _subset_counts(ctx, params.ds_mode)
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
        p = self.params
        if p.ds_resample == "epoch":
            self.subset, self.drawn_epoch = downsample(inp, self.ctx.n_classes, self.ctx.n_groups, rng, p.ds_mode), epoch
        elif self.subset is None:
            draw = np.random.default_rng(p.ds_seed)
            self.subset = downsample(inp, self.ctx.n_classes, self.ctx.n_groups, draw, p.ds_mode)
        elif not np.isin(self.subset, inp.indices).all():
            raise ValueError("ds: the stored subset (ds_resample: once) holds rows outside this trial's training split; "
                             "was the checkpoint written for another dataset?")
        return super().batches(replace(inp, indices=self.subset), batch_size, rng, epoch, sampler)

    def state_dict(self) -> dict[str, Any]:
        once = self.params.ds_resample == "once"
        return {"subset": None if self.subset is None else self.subset.tolist(),
                "seed": self.params.ds_seed if once else None, "epoch": None if once else self.drawn_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the subset (checkpoints written before DS kept state hold none: it is drawn again)."""
        subset = state.get("subset")
        self.subset = None if subset is None else np.asarray(subset, dtype=np.int64)
        self.drawn_epoch = state.get("epoch")
