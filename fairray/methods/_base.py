"""The method extension point: hooks a method plugs into the one training loop.

Lifecycle of a :class:`Method` inside a trial::

    method = METHODS.get(name)(params, ctx)      # once, after the data is known
    module = method.build_model(build)           # the training module (one net, or several)
    method.load_state_dict(state)                # when resuming from a checkpoint
    method.to(device)                            # state tensors follow the model
    method.on_train_start(steps_per_epoch)       # optimiser steps per epoch, for step schedules
    for epoch ...:
        for step ...:                            # one optimiser step = ``train.accumulate`` micro-batches
            out = method.loss(module(batch.inputs), batch)   # pure: LossOutput(loss, logs, update)
            ... backward, optimiser step ...
            method.on_step(outs)                 # commit the step's ``update``s (skipped steps: not called)
            every ``round_steps`` steps: method.on_round(dev subset)   # optional dev rounds
        net = method.inference_model(module)     # inputs -> class logits: dev/test, selection, predict
        logs = method.on_epoch_end(dev)          # dev logits of ``net``, no gradients
    method.state_dict()                          # saved with every checkpoint

``loss()`` computes and never mutates the method: a state change it implies (a q step, an EMA update, a
step counter) travels in ``LossOutput.update`` and is committed by :meth:`Method.on_step` once the
optimiser step is taken, so a skipped step (a non-finite loss) changes nothing and an accumulated step
sees the same state in every micro-batch. The per-batch ``logs`` are averaged per epoch and logged as
``method/<key>``. The loop never branches on the method; everything method-specific lives in these hooks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fairray._registry import Registry
from fairray.inputs import Batch
from fairray.methods._samplers import SAMPLERS, SamplerInput


def _ints(v: Any) -> np.ndarray:
    return np.asarray(v, dtype=np.int64)


_FROM_PLAIN: dict[str, Callable[[Any], Any]] = {  # TrainContext field -> its type, from a JSON value
    "classes": tuple, "class_counts": _ints, "attr_values": tuple, "strata_values": tuple, "n_train": int,
    "group_values": tuple, "group_counts": _ints, "class_group_counts": _ints,
    "group_soft_counts": lambda v: np.asarray(v, dtype=np.float64), "n_rows": int, "epochs": int,
    "class_target_counts": lambda v: None if v is None else np.asarray(v), "task": str,
}


_NOT_STORED = frozenset({"train_group_prob"})


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
    #: Soft group memberships of the training rows ``[n_train, G]`` (PGDRO's sharpened ``n_g``); not stored in
    #: checkpoints (``to_plain``): building a model never needs it.
    train_group_prob: np.ndarray | None = None
    #: ``dataset.targets``: ``single``, ``multi`` or ``regression`` (no classes; one output, a float target).
    task: str = "single"

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_outputs(self) -> int:
        """Outputs of the model: one per class, or one for a regression."""
        return 1 if self.task == "regression" else self.n_classes

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
            if f.name in _NOT_STORED:
                continue
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
class LossOutput:
    """The objective of one (micro-)batch, what to log of it (floats, averaged per epoch as ``method/<key>``),
    and the state change it implies, committed by :meth:`Method.on_step` only if the step is taken."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)
    update: Any = None


@dataclass(frozen=True)
class DevEval:
    """Logits of the current inference model (no gradients) on dev rows and their labels-only batch: the whole
    dev split for ``on_epoch_end``, the fixed round rows (:meth:`Method.round_rows`) for ``on_round``."""

    logits: torch.Tensor
    batch: Batch


class Method(ABC):
    """Base class of every training method.

    Subclasses set ``Params`` (a frozen dataclass of the method's hyperparameters, validated at spec
    load time), ``requires`` (what the method needs besides labels: ``"nothing"``, ``"true groups"``
    or ``"inferred groups"``) and ``sampler`` (preferred batch composition).
    """

    Params: ClassVar[type]
    #: Whether the method trains on ``dataset.targets: regression`` (a float target, no class counts); a method
    #: that reads class counts (class-balanced losses, class x group cells, class-conditional GANs) leaves it
    #: False and the spec loader refuses the combination.
    regression: ClassVar[bool] = False
    requires: ClassVar[str] = "nothing"
    sampler: ClassVar[str] = "uniform"
    summary: ClassVar[str] = ""

    def __init__(self, params: Any, ctx: TrainContext) -> None:
        self.params = params
        self.ctx = ctx

    @classmethod
    def check_dataset(cls, params: Any, dataset: Any, dialogues: bool | None = None) -> str | None:
        """What in the spec's ``dataset`` section (a ``DatasetConfig``) this method cannot train on, in one line,
        or None. Called when a spec is loaded, before anything runs or is written. ``dialogues``: whether the
        data has dialogue ids (False: known to have none, None: unknown until loaded). Default: nothing."""
        return None

    def build_model(self, build: Callable[[int], nn.Module]) -> nn.Module:
        """The training module: the loop optimises its parameters and passes its output to :meth:`loss`.

        ``build(n_out)`` makes a fresh instance of the trial's model plugin with ``n_out`` outputs; call
        it once per network (LfF: two classifiers; DisEnt: two encoders). Default: one classifier.
        Only params and ``ctx.n_classes`` may shape the module — never training counts — so that
        ``fairray predict`` rebuilds it from a checkpoint.
        """
        return build(self.ctx.n_outputs)

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
        return SAMPLERS.get(sampler)(inp, batch_size, rng)

    #: Whether ``loss()`` reduces over the batch beyond a mean of per-sample terms (group means, gaps, q
    #: steps, all through :func:`fairray.methods.batch_sum`). With ``train.accumulate > 1`` the loop then
    #: gives every micro-batch the whole step's batch sums (one extra forward pass without gradients), so
    #: the accumulated gradient is the gradient of the whole batch. False: the loop skips that pass, and a
    #: ``batch_sum`` during accumulation is an error.
    batch_statistics: ClassVar[bool] = True

    #: Optimiser steps between dev rounds (:meth:`on_round`); None = no rounds within an epoch.
    round_steps: int | None = None

    def on_train_start(self, steps_per_epoch: int) -> None:
        """Called once before training (and on resume): optimiser steps in an epoch, for step schedules."""
        return None

    def on_step(self, outputs: Sequence[LossOutput]) -> None:
        """After the optimiser step: commit the state changes ``loss()`` computed (``LossOutput.update``).

        ``outputs`` holds one :class:`LossOutput` per micro-batch of the step (one without accumulation), in
        order; under data parallelism every worker gets the same updates when ``loss()`` reduced its inputs
        across workers. Not called for a skipped step. Default: nothing to commit."""
        for out in outputs:
            if out.update is not None:
                raise TypeError(f"{type(self).__name__}.loss returned an update but the method has no on_step")

    def round_rows(self, dev: SamplerInput, rng: np.random.Generator) -> np.ndarray:
        """The fixed dev rows every :meth:`on_round` sees (drawn once per trial). Default: the whole dev split."""
        return dev.indices

    def on_round(self, dev: DevEval) -> dict[str, float]:
        """A dev round every :attr:`round_steps` optimiser steps on :meth:`round_rows`; return values to log."""
        return {}

    def on_epoch_end(self, dev: DevEval) -> dict[str, float]:
        """Update state from the dev split after each epoch; return values to log."""
        return {}

    def to(self, device: torch.device | str) -> Method:
        """Move every state tensor of the method (its own and those of fairray helpers it holds, e.g. a base
        loss's class weights or EMA tables) to ``device``; the loop calls it with the model's device."""
        _move_tensors(self, torch.device(device), set())
        return self

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)}")


def _move_tensors(obj: Any, device: torch.device, seen: set[int]) -> None:
    """Move tensor attributes of ``obj`` and of the fairray objects it holds (lists, dicts included) in place."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    items = vars(obj).items() if hasattr(obj, "__dict__") else ()
    for name, value in list(items):
        if isinstance(value, torch.Tensor):
            setattr(obj, name, value.to(device))
        elif isinstance(value, list | tuple | dict):
            for v in value.values() if isinstance(value, dict) else value:
                if type(v).__module__.startswith("fairray"):
                    _move_tensors(v, device, seen)
        elif type(value).__module__.startswith("fairray") and not isinstance(value, type) and hasattr(value, "__dict__"):
            _move_tensors(value, device, seen)


METHODS: Registry[type[Method]] = Registry("method")
