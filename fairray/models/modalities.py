"""One encoder per input, chosen by the input's kind, fused early: GEAR's per-modality encoders.

``modalities`` builds, for each input it reads, the encoder section of that input's kind — ``lstm`` for a
``sequence`` (MOSI/MOSEI's aligned GloVe / COVAREP / FACET frames), ``mlp`` for a ``vector`` (utterance
features), and, when given, a section for ``tokens`` (``text``) or ``waveform`` (``wav_cnn``, ``ssl``) — and
fuses their embeddings under one MLP head, as ``fusion: early`` does (it is a
:class:`~fairray.models.fusion.FusionModel`, labelled by input name). GEAR takes a robust and a biased copy of
every encoder from it, so with ``sequences: true`` on MOSI each modality gets its own robust and biased LSTM::

    model:
      name: modalities
      sequence: {name: lstm, hidden: 16, out: 16}     # every sequence input (text, audio, vision)
      vector: {name: mlp, hidden: 64, depth: 1}       # every vector input
      inputs: null                                    # null: every input of a kind with an encoder section
      encoders: {audio: {name: lstm, hidden: 16}}     # an input's own section, replacing its kind's
      lr_scales: {audio: 5, vision: 5}                # x train.lr for those inputs' encoders; the rest at train.lr

``lr_scales`` gives an input's encoder its own learning rate, as a multiple of ``train.lr`` (the convention of
``backbone_lr_scale``: searching ``train.lr`` keeps the ratio), and GEAR's robust and biased copies of that encoder
both train at it (the scale marks the encoder's module; see :class:`~fairray.models.fusion.FusionModel`). A
scale <= 0, or one for an input the model does not encode, is refused in one line naming the inputs it encodes.

An input of a kind without a section is refused when it is named in ``inputs``, in one line that says which
section to add; with ``inputs: null`` it is left out only if other inputs remain (no encoder at all is refused).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from fairray.errors import ConfigError
from fairray.inputs import KINDS, InputSpec
from fairray.models._base import MODELS, check_lr_scales
from fairray.models.fusion import Encoder, FusionModel, build_encoders, check_encoders
from fairray.models.mlp import mlp_layers


@MODELS.register("modalities")
class Modalities:
    accepts = KINDS  # whatever has an encoder section; the sections' own checks say what is missing
    summary = "one encoder per input chosen by its kind (lstm for sequences, mlp for vectors, ...), fused early"

    @dataclass(frozen=True)
    class Params:
        #: Encoder of every sequence input (frames x dims with lengths); a name means that model's defaults.
        sequence: Encoder = "lstm"  # type: ignore[assignment]  # made an Encoder in __post_init__
        #: Encoder of every vector input.
        vector: Encoder = "mlp"  # type: ignore[assignment]
        #: Encoder of every tokens input (e.g. {name: text, model_path: /models/minilm}); null: none.
        tokens: Encoder | None = None
        #: Encoder of every waveform input (e.g. {name: wav_cnn}); null: none.
        waveform: Encoder | None = None
        #: The inputs to encode, by name; null = every input of a kind with an encoder section.
        inputs: tuple[str, ...] | None = None
        #: Input name -> its own encoder section, replacing its kind's (e.g. a smaller LSTM for audio).
        encoders: Mapping[str, Encoder] | None = None
        #: The early-fusion head over the concatenated embeddings.
        hidden: int = field(default=128, metadata={"ge": 1})
        depth: int = field(default=1, metadata={"ge": 0})
        dropout: float = field(default=0.1, metadata={"ge": 0, "lt": 1})
        #: Input name -> multiple of train.lr for that input's encoder (e.g. {audio: 5}); the others, and the
        #: fusion head, at train.lr.
        lr_scales: Mapping[str, float] | None = None

        def __post_init__(self) -> None:
            check_lr_scales(self.lr_scales, None, "input")
            for kind in ("sequence", "vector", "tokens", "waveform"):
                if isinstance(getattr(self, kind), str):
                    object.__setattr__(self, kind, Encoder(getattr(self, kind)))
            if self.inputs is not None and (not self.inputs or len(set(self.inputs)) != len(self.inputs)):
                raise ValueError(f"inputs: give distinct input names (or null for all), got {list(self.inputs)}")

    @classmethod
    def encoders(cls, params: Params, inputs: Mapping[str, InputSpec]) -> dict[str, Encoder]:
        """Input name -> its encoder section (with ``input`` set to that name)."""
        have = ", ".join(s.describe() for s in inputs.values()) or "none"
        sections = {kind: getattr(params, kind) for kind in KINDS}
        own = dict(params.encoders or {})
        unknown = [n for n in own if n not in inputs]
        if unknown:
            raise ConfigError(f"model modalities: encoders.{unknown[0]} names no input of the dataset ({have})")
        if params.inputs is not None:
            missing = [n for n in params.inputs if n not in inputs]
            if missing:
                raise ConfigError(f"model modalities: input {missing[0]!r} is not among the dataset's inputs ({have})")
            chosen = [inputs[n] for n in params.inputs]
            bare = [s for s in chosen if sections[s.kind] is None and s.name not in own]
            if bare:
                raise ConfigError(f"model modalities: input {bare[0].describe()} is {bare[0].kind}, which has no "
                                  f"encoder section; set model.{bare[0].kind} (e.g. {{name: "
                                  f"{'text' if bare[0].kind == 'tokens' else 'wav_cnn'}, ...}})")
        else:
            chosen = [s for s in inputs.values() if sections[s.kind] is not None or s.name in own]
            if not chosen:
                raise ConfigError(f"model modalities: no input of a kind with an encoder section ({have}); set "
                                  "model.tokens or model.waveform for these inputs")
        out = {}
        for s in chosen:
            section = own.get(s.name, sections[s.kind])
            if not hasattr(section.params, "input"):
                raise ConfigError(f"model modalities: encoder {section.name} (model.{s.kind}) reads no named input "
                                  "(it has no `input` parameter); choose a model that does")
            out[s.name] = Encoder(section.name, dataclasses.replace(section.params, input=s.name))
        try:  # a scale for an input the model does not encode would be dropped silently
            check_lr_scales(params.lr_scales, list(out), "input the model encodes")
        except ValueError as exc:
            raise ConfigError(f"model modalities: {exc}") from None
        return out

    @classmethod
    def check(cls, params: Params, inputs: Mapping[str, InputSpec]) -> None:
        check_encoders(cls.encoders(params, inputs), inputs, "model modalities")

    @classmethod
    def build(cls, params: Params, inputs: Mapping[str, InputSpec], n_out: int) -> FusionModel:
        encoders = build_encoders(cls.encoders(params, inputs), inputs, n_out, who="model modalities", embed=True)
        width = sum(e.embed_dim for e in encoders.values())
        head = nn.Sequential(*mlp_layers(width, params.hidden, params.depth, params.dropout, n_out))
        return FusionModel(encoders, "early", head, params.lr_scales)
