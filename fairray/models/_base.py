"""Model extension point: a registered ``nn.Module`` factory with typed ``Params``, built from input specs.

A model plugin says which input kinds it accepts (``accepts``, see :mod:`fairray.inputs`), checks a
dataset's input specs (``check``, called when the spec is loaded with what is declared, and again once
the data is prepared), and builds a module whose ``forward`` takes the batch's input mapping
(``batch.inputs``: name -> Tensor | Padded) and returns class logits.

Trainable state: the loop optimises and checkpoints only parameters with ``requires_grad`` (plus
buffers), so a plugin that freezes a backbone saves only what it trains (see
:mod:`fairray.train.checkpoint`).

Learning rates (the loop's parameter groups, :func:`fairray.train.loop.param_groups`): every parameter trains at
``train.lr`` times the product of the scales that apply to it, so a module says which of its parameters train
faster or slower without the loop knowing why. Two ways to declare one:

* a module (or any submodule) defines ``lr_scales()`` -> ``{parameter name prefix: multiplier}`` (a backbone
  below its head: ``{"backbone": 0.1}``; the longest matching prefix of one module applies);
* :func:`set_lr_scale` marks a whole submodule (a fusion model's encoder of one input: ``model.lr_scales``).
  The mark travels with the module, so a method that takes the encoders out of the model it builds (GEAR's
  robust and biased copies, CBERL's trunks) keeps each input's learning rate without saying so.

Scales compose: an encoder at 5x whose ``lr_scales()`` puts its backbone at 0.1x trains that backbone at 0.5x.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from fairray._registry import Registry
from fairray.errors import ConfigError, DataError
from fairray.inputs import FEATURES, InputSpec, InputTensor


class ModelPlugin(Protocol):
    """A model plugin: ``Params`` (frozen dataclass), ``accepts`` (input kinds) and ``build``."""

    Params: ClassVar[type]
    #: Input kinds the model can read (``vector``, ``sequence``, ``waveform``, ``tokens``).
    accepts: ClassVar[tuple[str, ...]]
    summary: ClassVar[str]

    @classmethod
    def build(cls, params: Any, inputs: Mapping[str, InputSpec], n_out: int) -> nn.Module: ...


MODELS: Registry[type[ModelPlugin]] = Registry("model")


def select_input(model: str, params: Any, inputs: Mapping[str, InputSpec], kinds: tuple[str, ...]) -> InputSpec:
    """The one input a single-input model reads: ``params.input`` when set, else the only input of an
    accepted kind. Errors name the model, the inputs there are and what to set."""
    wanted = getattr(params, "input", None)
    have = ", ".join(s.describe() for s in inputs.values()) or "none"
    if wanted is not None:
        if wanted not in inputs:
            raise ConfigError(f"model {model}: input {wanted!r} is not among the dataset's inputs ({have})")
        spec = inputs[wanted]
        if spec.kind not in kinds:
            raise ConfigError(f"model {model} reads {'/'.join(kinds)} inputs; {spec.describe()} is {spec.kind}")
        return spec
    usable = [s for s in inputs.values() if s.kind in kinds]
    if len(usable) != 1:
        why = "none is" if not usable else f"{len(usable)} are"
        raise ConfigError(f"model {model} reads one {'/'.join(kinds)} input but {why} in the dataset ({have}); "
                          + ("set model.input to one of them" if usable else "choose a model that accepts these inputs"))
    return usable[0]


def check_model(name: str, params: Any, inputs: Mapping[str, InputSpec]) -> None:
    """Refuse a model that cannot read the dataset's inputs (one line naming both); the plugin's own
    ``check`` (layout, dimensions) runs after."""
    plugin = MODELS.get(name)
    kinds = {s.kind for s in inputs.values()}
    if not kinds & set(plugin.accepts):
        have = ", ".join(s.describe() for s in inputs.values()) or "none"
        raise ConfigError(f"model {name} accepts {'/'.join(plugin.accepts)} inputs, but the dataset provides {have}; "
                          f"models for these inputs: {', '.join(models_for(kinds)) or 'none'}")
    if getattr(params, "input", None) is not None:  # a named input must exist and be of a kind the model reads
        select_input(name, params, inputs, tuple(plugin.accepts))
    check = getattr(plugin, "check", None)
    if check is not None:
        check(params, inputs)


#: The attribute :func:`set_lr_scale` sets on a submodule (read by the loop's parameter groups).
LR_SCALE = "lr_scale"


def set_lr_scale(module: nn.Module, scale: float) -> nn.Module:
    """Mark ``module``: every parameter under it trains at ``scale`` x ``train.lr`` (times other scales that
    apply to it). Returns ``module``."""
    if not (scale > 0 and scale < float("inf")):
        raise ValueError(f"a learning-rate scale must be a finite number > 0, got {scale!r}")
    setattr(module, LR_SCALE, float(scale))
    return module


def check_lr_scales(scales: Mapping[str, float] | None, names: Any, what: str) -> None:
    """Refuse a ``lr_scales`` entry that is not a finite number > 0 or names none of ``names`` (the inputs or
    encoder labels a model has; ``what`` says which), in one line naming the key and the value. ``names`` None:
    only the values are checked (the names are checked once the model sees the dataset's inputs)."""
    for key, value in (scales or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ValueError(f"lr_scales.{key}: must be a number > 0 (a multiple of train.lr), got {value!r}")
        if names is not None and key not in names:
            raise ValueError(f"lr_scales.{key}: names no {what} ({', '.join(names) or 'none'}); "
                             f"give a multiple of train.lr for one of those")


def models_for(kinds: set[str]) -> list[str]:
    return [n for n in MODELS.names() if set(MODELS.get(n).accepts) & kinds]


def as_specs(inputs: Mapping[str, InputSpec] | int) -> dict[str, InputSpec]:
    """Input specs; an int ``D`` means one vector input named ``features`` of width D (a feature matrix)."""
    if isinstance(inputs, int):
        return {FEATURES: InputSpec(FEATURES, "vector", dim=inputs)}
    return dict(inputs)


def build_model(name: str, params: Any, inputs: Mapping[str, InputSpec] | int, n_out: int) -> nn.Module:
    """A fresh module of the named plugin for the given input specs (or a feature width) with ``n_out`` outputs."""
    inputs = as_specs(inputs)
    check_model(name, params, inputs)
    return MODELS.get(name).build(params, inputs, n_out)


def vector_input(inputs: Mapping[str, InputTensor] | torch.Tensor, key: str) -> torch.Tensor:
    """The tensor of input ``key`` (a bare tensor is taken as that input, for direct calls ``model(x)``)."""
    return inputs if isinstance(inputs, torch.Tensor) else inputs[key]


class PretrainedBase:
    """Mixin of a module built on a pretrained base model loaded from a folder: ``base`` (the folder and its
    content hash, :func:`fairray._local_model.base_model_record`) travels with the trainable state in
    ``model.pt`` (torch's ``get_extra_state``), and a checkpoint trained on another base is refused in one
    line when it is loaded. ``who`` names the model in that line."""

    base: dict[str, str]
    who: str = "model"

    def get_extra_state(self) -> dict[str, str]:
        return {"base_model_path": self.base["path"], "base_model_digest": self.base["digest"]}

    def set_extra_state(self, state: Mapping[str, str]) -> None:
        saved, here = state.get("base_model_digest"), self.base["digest"]
        if saved != here:
            raise DataError(f"{self.who}: the base model in {self.base['path']} is not the one this checkpoint was "
                            f"trained on (content hash {here[:12]}, trained on {str(saved)[:12]} from "
                            f"{state.get('base_model_path')}); point model.model_path at that model's folder")
