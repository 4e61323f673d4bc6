"""The method extension point: hooks a method plugs into the one training loop.

Lifecycle of a :class:`Method` inside a trial::

    method = METHODS.get(name)(params, ctx)      # once, after the data is known
    method.load_state_dict(state)                # when resuming from a checkpoint
    for epoch ...:
        for batch ...:
            out = method.loss(logits, batch)     # -> LossOutput(loss, logs); the loop backprops
        logs = method.on_epoch_end(dev)          # dev outputs of the current model, no gradients
    method.state_dict()                          # saved with every checkpoint

The loop never branches on the method; everything method-specific lives in these hooks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from fairray._registry import Registry


@dataclass(frozen=True)
class Batch:
    """One batch: features, labels, true attribute and stratum codes (-1 = unknown), the *training*
    group of each sample (from the spec's group source: the true attribute, or inferred groups) with its
    soft memberships, and dataset row indices (for per-sample state such as EMA tables)."""

    x: torch.Tensor
    y: torch.Tensor
    attr: torch.Tensor
    stratum: torch.Tensor
    index: torch.Tensor
    group: torch.Tensor
    group_prob: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class TrainContext:
    """What a method may know about the training split when it is built.

    ``group_counts``/``class_group_counts`` count the training groups (hard ids) per group and per
    class x group; ``group_soft_counts`` sums the soft memberships (PGDRO's ``n_g``).
    """

    classes: tuple[str, ...]
    class_counts: np.ndarray
    attr_values: tuple[str, ...]
    strata_values: tuple[str, ...]
    n_train: int
    group_values: tuple[str, ...]
    group_counts: np.ndarray
    class_group_counts: np.ndarray
    group_soft_counts: np.ndarray

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_groups(self) -> int:
        return len(self.group_values)


@dataclass(frozen=True)
class SamplerInput:
    """What batch samplers see: training row indices and, per dataset row, label and group codes."""

    indices: np.ndarray
    y: np.ndarray
    attr: np.ndarray
    stratum: np.ndarray
    group: np.ndarray


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor
    logs: dict[str, float]


@dataclass(frozen=True)
class DevEval:
    """Logits of the current model on the whole dev split (no gradients) and the dev batch."""

    logits: torch.Tensor
    batch: Batch


class Method(ABC):
    """Base class of every training method.

    Subclasses set ``Params`` (a frozen dataclass of the method's hyperparameters, validated at spec
    load time), ``requires`` (what the method needs besides labels: ``"nothing"``, ``"true groups"``
    or ``"inferred groups"``) and ``sampler`` (preferred batch composition).
    """

    Params: ClassVar[type]
    requires: ClassVar[str] = "nothing"
    sampler: ClassVar[str] = "uniform"
    summary: ClassVar[str] = ""

    def __init__(self, params: Any, ctx: TrainContext) -> None:
        self.params = params
        self.ctx = ctx

    @abstractmethod
    def per_sample_loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The base loss ``l_i`` of every sample (METHODS 3.1); model selection uses its dev mean."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, batch: Batch) -> LossOutput:
        """The training objective of one batch."""

    def batches(self, inp: SamplerInput, batch_size: int, rng: np.random.Generator, epoch: int,
                sampler: str) -> Iterator[np.ndarray]:
        """Index batches of one epoch; by default the named sampler. Sampling-based methods (DS)
        override this to draw their subset first — the data side, not the loop."""
        from fairray.train._samplers import SAMPLERS

        return SAMPLERS.get(sampler)(inp, batch_size, rng)

    def on_epoch_end(self, dev: DevEval) -> dict[str, float]:
        """Update state from the dev split after each epoch; return values to log."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)}")


METHODS: Registry[type[Method]] = Registry("method")
