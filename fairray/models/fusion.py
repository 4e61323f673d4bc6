"""Fusion of per-input encoders (audio + text, GEAR's and CBERL's modalities): ``late`` or ``early``.

Each encoder is a registered model plugin built with its own typed parameters for the dataset's inputs
(``seq_pool`` / ``mlp`` for features, ``text`` for transcripts, ``ssl`` / ``wav_cnn`` for waveforms); it
picks its input as it would alone (its ``input`` parameter, or the only input of a kind it reads).

* ``late``: every encoder keeps its own head; the class logits are the mean of the encoders' logits.
* ``early``: every encoder's classifier (its final linear layer) is dropped; the embeddings are
  concatenated and one MLP head (``hidden``, ``depth``, ``dropout``) classifies them.

**The encoder protocol** (what a model's module implements to be fused; ``mlp``, ``seq_pool``,
``wav_cnn``, ``text``, ``qwen2_audio`` and fusion itself do):

``embed(inputs) -> Tensor [B, embed_dim]``
    the representation the module's final linear classifier reads (its last hidden layer; the pooled
    backbone output when the head has no hidden layer), computed from the batch's input mapping;
``embed_dim: int``
    its width;
``drop_classifier() -> None``
    replace that final linear layer by the identity, so its parameters leave the module (no unused,
    gradient-less weights in the optimiser or the checkpoint); ``forward`` then equals ``embed``.

``forward(inputs)`` stays the class logits: ``classifier(embed(inputs))``. Late fusion needs only
``forward``; early fusion needs the whole protocol and refuses an encoder without it, in one line.

YAML: the encoders are a mapping ``label -> model section``, written as the top-level ``model`` section is
(``name`` plus that plugin's parameters), validated when the spec is loaded (errors name the key path)::

    model:
      name: fusion
      mode: early
      hidden: 128
      encoders:
        audio: {name: seq_pool, pooling: stats, hidden: 64}
        text: {name: text, model_path: /models/minilm, finetune: lora}
      lr_scales: {audio: 5}   # the audio encoder at 5 x train.lr, the rest (text, the head) at train.lr

``lr_scales`` (encoder label -> multiple of ``train.lr``, each > 0) gives an encoder its own learning rate: it
marks the encoder's module (:func:`~fairray.models._base.set_lr_scale`), so the mark stays with the encoder when
a method (GEAR, CBERL) takes it out of the fusion model; nested scales (a text encoder's ``backbone_lr_scale``)
multiply it.

Reuse (GEAR, CBERL): :class:`FusionModel` keeps the encoders in ``encoders`` (an ``nn.ModuleDict``);
:meth:`FusionModel.embeddings` and :meth:`FusionModel.encoder_logits` give each modality's embedding and
logits by label, for per-modality losses or a graph over utterances.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from fairray._typed import Where, build, to_plain
from fairray.errors import ConfigError, FairrayError
from fairray.inputs import KINDS, InputSpec
from fairray.models._base import MODELS, check_lr_scales, check_model, set_lr_scale
from fairray.models.mlp import drop_classifier, head_embed, mlp_layers

#: The methods a module must have to be fused early (see the module docstring).
PROTOCOL = ("embed", "embed_dim", "drop_classifier")


@dataclass(frozen=True)
class Encoder:
    """One encoder of a fusion model: a registered model plugin's name and its typed ``Params``.

    From YAML (:meth:`from_plain`) it is written as a ``model`` section: ``{name: text, pooling: cls}``.
    In Python: ``Encoder("seq_pool", MODELS.get("seq_pool").Params(hidden=8))`` (``params`` None = the
    plugin's defaults).
    """

    name: str
    params: Any = None

    def __post_init__(self) -> None:
        plugin = MODELS.get(self.name)  # an unknown name lists the registered ones
        if self.params is None:
            object.__setattr__(self, "params", plugin.Params())
        elif not isinstance(self.params, plugin.Params):
            raise ValueError(f"encoder {self.name}: params must be {self.name}'s Params, got "
                             f"{type(self.params).__name__}")

    @classmethod
    def from_plain(cls, data: Any, where: Where) -> Encoder:
        if isinstance(data, str):
            data = {"name": data}
        if not isinstance(data, Mapping):
            raise where.error(f"expected a model section ({{name: <model>, <its params>...}}), got {data!r}")
        if "name" not in data:
            raise where.child("name").error("required key is missing (the registered model of this encoder)")
        try:
            plugin = MODELS.get(data["name"])
        except FairrayError as exc:
            raise where.child("name").error(str(exc)) from None
        return cls(data["name"], build(plugin.Params, {k: v for k, v in data.items() if k != "name"}, where))

    def to_plain(self) -> dict[str, Any]:
        return {"name": self.name, **to_plain(self.params)}


def check_encoders(encoders: Mapping[str, Encoder], inputs: Mapping[str, InputSpec], who: str) -> None:
    """Every encoder can read the dataset's inputs (its own checks); errors name ``encoders.<label>``."""
    for label, enc in encoders.items():
        try:
            check_model(enc.name, enc.params, inputs)
        except FairrayError as exc:
            raise type(exc)(f"{who}: encoders.{label}: {exc}") from None


def build_encoders(encoders: Mapping[str, Encoder], inputs: Mapping[str, InputSpec], n_out: int, *, who: str,
                   embed: bool) -> dict[str, nn.Module]:
    """Each encoder's module for ``inputs`` with ``n_out`` logits; with ``embed`` its classifier is dropped
    (it must implement the encoder protocol, else one ConfigError line)."""
    built: dict[str, nn.Module] = {}
    for label, enc in encoders.items():
        try:
            module = MODELS.get(enc.name).build(enc.params, inputs, n_out)
        except FairrayError as exc:
            raise type(exc)(f"{who}: encoders.{label}: {exc}") from None
        if embed:
            missing = [m for m in PROTOCOL if not hasattr(module, m)]
            if missing:
                raise ConfigError(f"{who}: encoders.{label}: model {enc.name} gives no embedding ({type(module).__name__} "
                                  f"lacks {', '.join(missing)}); use mode: late, or a model that implements "
                                  "the encoder protocol of fairray.models.fusion")
            module.drop_classifier()
        built[label] = module
    return built


class FusionModel(nn.Module):
    """Encoders by label and, in ``early`` mode, one head over their concatenated embeddings. ``lr_scales``:
    encoder label -> multiple of ``train.lr`` for that encoder's parameters (set on the encoder's module)."""

    def __init__(self, encoders: Mapping[str, nn.Module], mode: str, head: nn.Sequential | None = None,
                 lr_scales: Mapping[str, float] | None = None) -> None:
        super().__init__()
        if (mode == "early") != (head is not None):
            raise ValueError("FusionModel: early fusion needs a head, late fusion takes none")
        check_lr_scales(lr_scales, list(encoders), "encoder of the model")
        self.mode = mode
        self.encoders = nn.ModuleDict(dict(encoders))
        for label, scale in (lr_scales or {}).items():
            set_lr_scale(self.encoders[label], scale)
        self.head = head
        self.embed_dim = (head[-1].in_features if head is not None
                          else sum(e.embed_dim for e in self.encoders.values()))

    def embeddings(self, inputs) -> dict[str, torch.Tensor]:
        """Each encoder's embedding ``[B, embed_dim_i]``, by label."""
        return {label: enc.embed(inputs) for label, enc in self.encoders.items()}

    def encoder_logits(self, inputs) -> dict[str, torch.Tensor]:
        """Each encoder's own class logits (late mode), by label."""
        if self.mode != "late":
            raise RuntimeError("encoder_logits: early fusion drops the encoders' classifiers")
        return {label: enc(inputs) for label, enc in self.encoders.items()}

    def fused(self, inputs) -> torch.Tensor:
        """The concatenated encoder embeddings ``[B, sum embed_dim_i]`` (what the early head reads)."""
        return torch.cat(list(self.embeddings(inputs).values()), dim=-1)

    def forward(self, inputs) -> torch.Tensor:
        if self.head is None:
            return torch.stack(list(self.encoder_logits(inputs).values())).mean(dim=0)
        return self.head(self.fused(inputs))

    def embed(self, inputs) -> torch.Tensor:
        """Early: the fusion head's last hidden layer; late: the encoders' embeddings side by side."""
        if self.head is None:
            return self.fused(inputs)
        return head_embed(self.head, self.fused(inputs))

    def drop_classifier(self) -> None:
        if self.head is None:
            for enc in self.encoders.values():
                enc.drop_classifier()
        else:
            drop_classifier(self.head)


@MODELS.register("fusion")
class Fusion:
    accepts = KINDS  # whatever its encoders read; each encoder's own check says what is missing
    summary = "per-input encoders (registered models) fused late (mean of logits) or early (embeddings + head)"

    @dataclass(frozen=True)
    class Params:
        #: Encoder label -> model section ({name: <model>, <its params>}); at least one.
        encoders: Mapping[str, Encoder]
        #: ``late``: mean of the encoders' logits; ``early``: concatenated embeddings under one head.
        mode: Literal["early", "late"] = "early"
        #: The early-fusion head (unused in late mode: each encoder's own head classifies).
        hidden: int = field(default=128, metadata={"ge": 1})
        depth: int = field(default=1, metadata={"ge": 0})
        dropout: float = field(default=0.1, metadata={"ge": 0, "lt": 1})
        #: Encoder label -> multiple of train.lr for that encoder (e.g. {audio: 5}); the others at train.lr.
        lr_scales: Mapping[str, float] | None = None

        def __post_init__(self) -> None:
            if not self.encoders:
                raise ValueError("encoders: give at least one encoder ({label: {name: <model>, ...}})")
            check_lr_scales(self.lr_scales, list(self.encoders), "encoder of the model")

    @classmethod
    def check(cls, params: Params, inputs: Mapping[str, InputSpec]) -> None:
        check_encoders(params.encoders, inputs, "model fusion")

    @classmethod
    def build(cls, params: Params, inputs: Mapping[str, InputSpec], n_out: int) -> FusionModel:
        early = params.mode == "early"
        encoders = build_encoders(params.encoders, inputs, n_out, who="model fusion", embed=early)
        head = None
        if early:
            width = sum(e.embed_dim for e in encoders.values())
            head = nn.Sequential(*mlp_layers(width, params.hidden, params.depth, params.dropout, n_out))
        return FusionModel(encoders, params.mode, head, params.lr_scales)
