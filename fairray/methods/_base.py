"""The method extension point: hooks a method plugs into the one training loop.

Lifecycle of a :class:`Method` inside a trial::

    method = METHODS.get(name)(params, ctx)      # once, after the data is known
    module = method.build_model(build)           # the training module (one net, or several)
    method.load_state_dict(state)                # when resuming from a checkpoint
    for epoch ...:
        for batch ...:
            out = method.loss(module(x), batch)  # -> LossOutput(loss, logs); the loop backprops
        net = method.inference_model(module)     # x -> class logits: dev/test, selection, predict
        logs = method.on_epoch_end(dev)          # dev logits of ``net``, no gradients
    method.state_dict()                          # saved with every checkpoint

The loop never branches on the method; everything method-specific lives in these hooks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fairray._registry import Registry


@dataclass(frozen=True)
class Batch:
    """One batch: features, labels, true attribute and stratum codes (-1 = unknown), the *training*
    group of each sample (from the spec's group source: the true attribute, or inferred groups) with its
    soft memberships, dataset row indices (for per-sample state such as EMA tables) and the training
    targets.

    ``target`` float ``[B, C]`` is what base losses train on (``SERData.soft``): the one-hot of ``y`` for
    single-label data, the rater-vote soft labels for multi-label data (``y`` is then their argmax, used
    by samplers, class x group cells and class-wise normalisation only). None means the one-hot of ``y``;
    :attr:`loss_target` gives the right one.
    """

    x: torch.Tensor
    y: torch.Tensor
    attr: torch.Tensor
    stratum: torch.Tensor
    index: torch.Tensor
    group: torch.Tensor
    group_prob: torch.Tensor
    target: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def loss_target(self) -> torch.Tensor:
        """What losses take: the soft targets ``[B, C]`` (float), or the integer labels ``[B]`` when there are
        none; :class:`~fairray.methods.BaseLoss`, ``gce`` and ``cross_entropy`` accept both."""
        return self.y if self.target is None else self.target


def _ints(v: Any) -> np.ndarray:
    return np.asarray(v, dtype=np.int64)


_FROM_PLAIN: dict[str, Callable[[Any], Any]] = {  # TrainContext field -> its type, from a JSON value
    "classes": tuple, "class_counts": _ints, "attr_values": tuple, "strata_values": tuple, "n_train": int,
    "group_values": tuple, "group_counts": _ints, "class_group_counts": _ints,
    "group_soft_counts": lambda v: np.asarray(v, dtype=np.float64), "n_rows": int, "epochs": int,
    "class_target_counts": lambda v: None if v is None else np.asarray(v),
}


@dataclass(frozen=True)
class TrainContext:
    """What a method may know about the training split when it is built.

    ``group_counts``/``class_group_counts`` count the training groups (hard ids) per group and per
    class x group; ``group_soft_counts`` sums the soft memberships (PGDRO's ``n_g``). ``n_rows`` is
    the number of dataset rows (all splits): ``Batch.index`` lies in ``0..n_rows-1``, so per-sample
    tables (LfF, DisEnt) have that size. ``epochs`` is the trial's length, for schedules.

    ``class_counts`` counts the training labels ``y`` (the argmax of the soft label for multi-label
    data). ``class_target_counts[k, c]`` counts the training samples of label ``k`` whose target is
    positive for class ``c`` (soft label ``> 1/|C|`` for multi-label data; ``k == c`` for single-label
    data, i.e. ``diag(class_counts)``, which None also means); its column sums :attr:`cb_counts` are the
    class-balanced weights' ``n_c`` (METHODS §3.1).

    Checkpoints keep it (``to_plain``) so ``fairray predict`` can rebuild the method that built the model.
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
    n_rows: int
    epochs: int
    class_target_counts: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def cb_counts(self) -> np.ndarray:
        """``n_c`` of the class-balanced weights: training samples whose target is positive for class c."""
        if self.class_target_counts is None:
            return self.class_counts
        return np.asarray(self.class_target_counts).sum(axis=0)

    @property
    def n_groups(self) -> int:
        return len(self.group_values)

    def to_plain(self) -> dict[str, Any]:
        """JSON-ready copy (tuples and arrays as lists); :meth:`from_plain` restores the values."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> TrainContext:
        """Inverse of :meth:`to_plain`; fields added later with a default (``class_target_counts``) may be
        absent (checkpoints written before them)."""
        missing = [f.name for f in fields(cls) if f.name not in plain and f.default is MISSING]
        if missing:
            raise ValueError(f"a stored TrainContext lacks {missing}; got keys {sorted(plain)}")
        return cls(**{f.name: _FROM_PLAIN[f.name](plain[f.name]) for f in fields(cls) if f.name in plain})


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

    def build_model(self, build: Callable[[int], nn.Module]) -> nn.Module:
        """The training module: the loop optimises its parameters and passes its output to :meth:`loss`.

        ``build(n_out)`` makes a fresh instance of the trial's model plugin with ``n_out`` outputs; call
        it once per network (LfF: two classifiers; DisEnt: two encoders). Default: one classifier.
        Only params and ``ctx.n_classes`` may shape the module — never training counts — so that
        ``fairray predict`` rebuilds it from a checkpoint.
        """
        return build(self.ctx.n_classes)

    def inference_model(self, train_module: nn.Module) -> nn.Module:
        """The part of the training module that maps features to class logits (sharing its weights).

        Used for dev/test evaluation, model selection, :meth:`per_sample_loss` on dev and
        ``fairray predict``. Default: the training module itself.
        """
        return train_module

    @abstractmethod
    def per_sample_loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The base loss ``l_i`` of every sample (METHODS 3.1) from *inference* logits; model
        selection uses its dev mean."""

    @abstractmethod
    def loss(self, outputs: Any, batch: Batch) -> LossOutput:
        """The training objective of one batch; ``outputs`` = the training module's forward output
        (class logits by default)."""

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
