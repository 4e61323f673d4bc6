"""Speaker-gender probabilities from a pretrained Hugging Face model in a local folder (IDI ◐ pseudo-labels).

One row per clip: the probabilities of the dataset's attribute values (e.g. ``F``, ``M``) the model's labels
are mapped to, summing to 1. The ``pseudo_hf`` group source (:mod:`fairray.data.groups`) reads them; as an
extractor they run once per clip and are cached like any feature (METHODS §3.3).

Architectures (``architecture``):

* ``age_gender`` — audeering's age-gender models (``audeering/wav2vec2-large-robust-24-ft-age-gender``, the
  model IDI used, and its 6-layer sibling), defined in their model card rather than in transformers: a
  ``Wav2Vec2Model`` backbone, hidden states mean-pooled over the clip, and two heads ``ModelHead(config, n)``
  = dropout → dense(hidden) → tanh → dropout → out_proj, ``age`` (1 output) and ``gender`` (3 logits in the
  order female, male, child). Its labels are therefore :data:`AGE_GENDER_LABELS`; the age output is unused.
* ``auto`` — any ``AutoModelForAudioClassification`` checkpoint; its labels are ``config.id2label``.

Label mapping (``label_map``): model label → attribute value (labels compared case-insensitively). Labels
the map does not name, or maps to ``null`` (the age-gender model's ``child``), are dropped, and the
probabilities of the rest are renormalised to sum to 1; several labels mapped to one value are summed.
Computed from the logits: ``p_v = Σ_{l→v} exp(z_l) / Σ_{l mapped} exp(z_l)``, which equals renormalising the
softmax over all labels without its underflow. Output columns: the distinct mapped values, sorted
(:func:`mapped_values`); the default map ``{female: F, male: M}`` gives columns ``(F, M)``.

Batching: clips are sorted by length; models with layer-normalised convolutions (``feat_extract_norm ==
"layer"``, e.g. wav2vec2-large-robust) run padded batches with an attention mask and pool only the valid
frames, so a clip's output does not depend on its batch; others batch only clips of equal length (see
:mod:`fairray.data.features.ssl`). GPU when available (``device: auto``).

The model is never downloaded: ``model_path`` or $FAIRRAY_GENDER_PATH must name a folder holding it, e.g.
made on a machine with network access by ``huggingface-cli download
audeering/wav2vec2-large-robust-24-ft-age-gender --local-dir DIR``. A checkpoint that lacks weights the
architecture needs (e.g. a plain wav2vec2 model loaded as ``age_gender``) is refused instead of running
with randomly initialised heads.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fairray.data.audio import TARGET_SR
from fairray.data.features._base import (
    EXTRACTORS,
    Extractor,
    folder_digest,
    hf_offline,
    require,
    resolve_device,
    resolve_model_dir,
)
from fairray.errors import ConfigError, DataError

GENDER_ENV_VAR = "FAIRRAY_GENDER_PATH"
ARCHITECTURES = ("age_gender", "auto")
#: Gender labels of the age-gender model's 3-way head, in output order (its model card).
AGE_GENDER_LABELS = ("female", "male", "child")
DEFAULT_LABEL_MAP = {"female": "F", "male": "M"}
_EXPECTED = ("config.json, the weights and preprocessor_config.json of audeering/wav2vec2-large-robust-24-ft-age-gender "
             "(architecture age_gender) or of an AutoModelForAudioClassification checkpoint whose id2label names "
             "genders (architecture auto), e.g. `huggingface-cli download audeering/wav2vec2-large-robust-24-ft-age-gender"
             " --local-dir DIR` run on a machine with network access")
#: Parameters a checkpoint may lack without changing the output (wav2vec2's training-time mask embedding).
_UNUSED_AT_INFERENCE = ("masked_spec_embed",)


def mapped_values(label_map: Mapping[str, str | None]) -> tuple[str, ...]:
    """The output columns for ``label_map``: its distinct non-null values, sorted."""
    return tuple(sorted({v for v in label_map.values() if v is not None}))


@functools.lru_cache(maxsize=1)
def age_gender_model_class() -> type:
    """``AgeGenderModel`` of the audeering model card (built on first use: importing torch is slow).

    Same module names as the card (``wav2vec2``, ``age``, ``gender``; heads ``dense``/``out_proj``), so its
    checkpoints load unchanged. ``forward`` returns, like the card's, (pooled hidden states, age, gender
    probabilities); with an ``attention_mask`` it pools only the valid frames of a padded batch.
    """
    import torch
    from torch import nn
    from transformers import Wav2Vec2Model, Wav2Vec2PreTrainedModel

    class ModelHead(nn.Module):
        def __init__(self, config: Any, num_labels: int) -> None:
            super().__init__()
            self.dense = nn.Linear(config.hidden_size, config.hidden_size)
            self.dropout = nn.Dropout(config.final_dropout)
            self.out_proj = nn.Linear(config.hidden_size, num_labels)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            x = self.dropout(features)
            x = torch.tanh(self.dense(x))
            return self.out_proj(self.dropout(x))

    class AgeGenderModel(Wav2Vec2PreTrainedModel):
        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.wav2vec2 = Wav2Vec2Model(config)
            self.age = ModelHead(config, 1)
            self.gender = ModelHead(config, len(AGE_GENDER_LABELS))
            self.post_init()

        def pooled(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
            hidden = self.wav2vec2(input_values, attention_mask=attention_mask)[0]
            if attention_mask is None:
                return hidden.mean(dim=1)
            frames = self.wav2vec2._get_feature_vector_attention_mask(hidden.shape[1], attention_mask)
            frames = frames.unsqueeze(-1).to(hidden.dtype)
            return (hidden * frames).sum(dim=1) / frames.sum(dim=1)

        def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple:
            pooled = self.pooled(input_values, attention_mask)
            return pooled, self.age(pooled), torch.softmax(self.gender(pooled), dim=1)

    return AgeGenderModel


@EXTRACTORS.register("hf_voice_gender")
class HFVoiceGender(Extractor):
    """Speaker-gender probabilities of a pretrained age-gender or audio-classification model (local folder),
    mapped to the dataset's attribute values and renormalised; see the module docstring."""

    name = "hf_voice_gender"
    version = 1
    modality = "audio"
    runtime_params = frozenset({"batch_size", "device"})

    @dataclass(frozen=True)
    class Params:
        #: Local model folder (``""`` reads $FAIRRAY_GENDER_PATH).
        model_path: str = ""
        #: ``age_gender``: audeering's model-card architecture; ``auto``: AutoModelForAudioClassification.
        architecture: Literal["age_gender", "auto"] = "age_gender"
        #: Model label → attribute value; unnamed or null labels are dropped and the rest renormalised.
        label_map: Mapping[str, str | None] = field(default_factory=lambda: dict(DEFAULT_LABEL_MAP))
        batch_size: int = 8
        #: ``"auto"``: cuda when available, else cpu.
        device: str = "auto"

        def __post_init__(self) -> None:
            if isinstance(self.label_map, Mapping):  # a plain dict: picklable (Ray, pools) and JSON-able (cache key)
                object.__setattr__(self, "label_map", dict(self.label_map))

    def _check_params(self) -> None:
        p = self.params
        if p.architecture not in ARCHITECTURES:
            raise ConfigError(f"{self.name}: architecture must be one of {ARCHITECTURES}, got {p.architecture!r}")
        if p.batch_size < 1:
            raise ConfigError(f"{self.name}: batch_size must be >= 1, got {p.batch_size}")
        if not isinstance(p.label_map, Mapping) or not p.label_map:
            raise ConfigError(f"{self.name}: label_map must be a non-empty mapping of model labels to attribute "
                              f"values, e.g. {DEFAULT_LABEL_MAP}, got {p.label_map!r}")
        seen: dict[str, str] = {}
        for key, value in p.label_map.items():
            if not isinstance(key, str) or not key.strip():
                raise ConfigError(f"{self.name}: label_map key {key!r} is not a label name")
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{self.name}: label_map[{key!r}] = {value!r}; expected an attribute value "
                                  "(a non-empty string) or null to drop the label")
            folded = key.strip().lower()
            if folded in seen:
                raise ConfigError(f"{self.name}: label_map keys {seen[folded]!r} and {key!r} name the same label "
                                  "(labels are compared case-insensitively)")
            seen[folded] = key
        if len(mapped_values(p.label_map)) < 2:
            raise ConfigError(f"{self.name}: label_map must map labels to at least two attribute values, got "
                              f"{dict(p.label_map)}")

    @property
    def columns(self) -> tuple[str, ...]:
        """The attribute value of each output column."""
        return mapped_values(self.params.label_map)

    @property
    def dim(self) -> int:
        return len(self.columns)

    # -- model --------------------------------------------------------------------------------------
    def _folder(self) -> Path:
        return resolve_model_dir(self.params.model_path, GENDER_ENV_VAR, self.name, _EXPECTED,
                                 ("config.json", "preprocessor_config.json"))

    def fingerprint(self) -> dict[str, str]:
        return {"weights": folder_digest(self._folder())}

    def _load(self) -> Any:
        folder = self._folder()
        hf_offline()
        transformers = require("transformers", self.name)
        architecture = self.params.architecture
        try:
            if architecture == "age_gender":
                feature_extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(folder, local_files_only=True)
                model, info = age_gender_model_class().from_pretrained(folder, local_files_only=True,
                                                                        output_loading_info=True)
                labels = AGE_GENDER_LABELS
            else:
                feature_extractor = transformers.AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
                model, info = transformers.AutoModelForAudioClassification.from_pretrained(
                    folder, local_files_only=True, output_loading_info=True)
                labels = tuple(str(model.config.id2label[i]) for i in range(model.config.num_labels))
        except (OSError, ValueError, KeyError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataError(f"{self.name}: cannot load {folder} as architecture {architecture!r} ({first}); it must "
                            f"hold {_EXPECTED}") from None
        missing = sorted(k for k in info.get("missing_keys", ()) if not any(u in k for u in _UNUSED_AT_INFERENCE))
        if missing:
            raise DataError(f"{self.name}: {folder} lacks weights of architecture {architecture!r} "
                            f"({len(missing)}, e.g. {missing[:3]}): its heads would be random; check `architecture` "
                            "and that the folder holds a fine-tuned gender model")
        groups = self._label_groups(labels, folder)
        device = resolve_device(self.params.device)
        return model.to(device).eval(), feature_extractor, device, groups

    def _label_groups(self, labels: tuple[str, ...], folder: Path) -> list[list[int]]:
        """For each output column, the indices of the model labels mapped to it."""
        folded = [label.strip().lower() for label in labels]
        if len(set(folded)) != len(folded):
            raise DataError(f"{self.name}: the model in {folder} has repeated labels {list(labels)}")
        index = {label: i for i, label in enumerate(folded)}
        groups: dict[str, list[int]] = {v: [] for v in self.columns}
        for key, value in self.params.label_map.items():
            i = index.get(key.strip().lower())
            if i is None:
                raise ConfigError(f"{self.name}: label_map key {key!r} (-> {value!r}) is not a label of the model in "
                                  f"{folder}; its labels: {', '.join(labels)}")
            if value is not None:
                groups[value].append(i)
        return [groups[v] for v in self.columns]

    # -- extraction ---------------------------------------------------------------------------------
    def _batches(self, lengths: list[int], padded_ok: bool) -> list[list[int]]:
        """Index batches, shortest first; without ``padded_ok`` only clips of equal length share a batch."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batches: list[list[int]] = []
        for i in order:
            last = batches[-1] if batches else None
            if last and len(last) < self.params.batch_size and (padded_ok or lengths[last[0]] == lengths[i]):
                last.append(i)
            else:
                batches.append([i])
        return batches

    def _logits(self, batch: list[np.ndarray], padded_ok: bool) -> Any:
        import torch

        model, feature_extractor, device, _ = self._model
        kwargs = {"return_attention_mask": True} if padded_ok else {}
        inputs = feature_extractor(batch, sampling_rate=TARGET_SR, padding=True, return_tensors="pt", **kwargs)
        with torch.no_grad():
            if self.params.architecture == "age_gender":
                mask = inputs.get("attention_mask")
                pooled = model.pooled(inputs["input_values"].to(device),
                                      None if mask is None else mask.to(device))
                return model.gender(pooled)
            accepted = inspect.signature(model.forward).parameters
            return model(**{k: v.to(device) for k, v in inputs.items() if k in accepted}).logits

    def _extract(self, items: list) -> np.ndarray:
        import torch

        model, _, _, groups = self._model
        padded_ok = getattr(model.config, "feat_extract_norm", None) == "layer"
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        for batch in self._batches([len(x) for x in items], padded_ok):
            logits = self._logits([items[i] for i in batch], padded_ok).double()
            per_value = torch.stack([torch.logsumexp(logits[:, idx], dim=1) for idx in groups], dim=1)
            out[batch] = torch.softmax(per_value, dim=1).cpu().numpy()
        return out
