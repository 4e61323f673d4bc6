"""Self-supervised speech encoders (WavLM, wav2vec 2.0, HuBERT) from a local Hugging Face folder.

Hidden states are mean-pooled over the valid frames of each clip. Layer index 0 is the output of
the feature projection + positional convolution (before the first transformer block), index ``k``
the output of block ``k``; ``layers="all"`` takes 0..L.

Output layout:

* ``weighted_sum=False``: the mean of the selected layers' pooled vectors, [n, D].
* ``weighted_sum=True``: the pooled vectors of the selected layers side by side, [n, L_sel * D],
  layer-major: ``X.reshape(n, L_sel, D)[:, j]`` is layer ``layers[j]``, so a downstream model can
  learn softmax weights over ``j`` (the SUPERB weighted sum).

Padding: models whose first convolution uses group normalisation over time
(``feat_extract_norm == "group"``: WavLM Base/Base+, wav2vec 2.0 Base, HuBERT Base) would see the
zeros of a padded batch, so clips of different lengths are run one at a time (equal lengths
still share a batch); ``"layer"`` models run padded batches with an attention mask, which leaves
each clip's output unchanged. Inputs are normalised as the model's feature extractor says
(zero mean, unit variance per clip when ``do_normalize``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
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

ENV_VAR = "FAIRRAY_SSL_PATH"
_EXPECTED = ("config.json, the weights (model.safetensors) and preprocessor_config.json of a WavLM / wav2vec2 / "
             "HuBERT model, e.g. `AutoModel.from_pretrained('microsoft/wavlm-base-plus').save_pretrained(DIR)` and "
             "`AutoFeatureExtractor...save_pretrained(DIR)` run on a machine with network access")
POOLINGS = ("mean",)


@EXTRACTORS.register("hf_ssl")
class HFSpeechEncoder(Extractor):
    """Pooled hidden states of a WavLM / wav2vec 2.0 / HuBERT model loaded with ``AutoModel`` from a local folder."""

    name = "hf_ssl"
    version = 1
    modality = "audio"
    runtime_params = frozenset({"batch_size", "device"})

    @dataclass(frozen=True)
    class Params:
        #: Local model folder (required; ``""`` reads $FAIRRAY_SSL_PATH).
        model_path: str = ""
        #: Hidden-state indices (0 = before the first block) or ``"all"``.
        layers: tuple[int, ...] | str = "all"
        pooling: Literal["mean"] = "mean"
        #: True: per-layer vectors side by side (see the module docstring); False: their mean.
        weighted_sum: bool = False
        batch_size: int = 8
        #: ``"auto"``: cuda when available, else cpu.
        device: str = "auto"

    def _check_params(self) -> None:
        p = self.params
        if p.pooling not in POOLINGS:
            raise ConfigError(f"hf_ssl: pooling must be one of {POOLINGS}, got {p.pooling!r}")
        if isinstance(p.layers, str):
            if p.layers != "all":
                raise ConfigError(f"hf_ssl: layers must be 'all' or a tuple of hidden-state indices, got {p.layers!r}")
        elif not p.layers or not all(isinstance(i, int) and i >= 0 for i in p.layers):
            raise ConfigError(f"hf_ssl: layers must be non-negative hidden-state indices, got {p.layers!r}")
        if p.batch_size < 1:
            raise ConfigError(f"hf_ssl: batch_size must be >= 1, got {p.batch_size}")

    # -- model --------------------------------------------------------------------------------------
    def _folder(self):
        return resolve_model_dir(self.params.model_path, ENV_VAR, "hf_ssl", _EXPECTED, ("config.json",))

    def _config(self) -> Any:
        if self._model is not None:
            return self._model[0].config
        hf_offline()
        transformers = require("transformers", "hf_ssl")
        return transformers.AutoConfig.from_pretrained(self._folder(), local_files_only=True)

    @classmethod
    def input_meta(cls, params: Any) -> dict[str, Any]:
        """``stacked_layers``: False (one vector, the mean of the layers), the number of stacked layers
        (explicit ``layers``), or True (``layers: all``: the count is the model's, known once it is loaded)."""
        if not params.weighted_sum:
            return {"stacked_layers": False}
        return {"stacked_layers": True if isinstance(params.layers, str) else len(params.layers)}

    def _layer_indices(self, n_hidden_layers: int) -> tuple[int, ...]:
        if self.params.layers == "all":
            return tuple(range(n_hidden_layers + 1))
        bad = [i for i in self.params.layers if i > n_hidden_layers]
        if bad:
            raise ConfigError(f"hf_ssl: layers {bad} out of range; the model has hidden states 0..{n_hidden_layers}")
        return tuple(self.params.layers)

    @property
    def dim(self) -> int:
        config = self._config()
        layers = self._layer_indices(config.num_hidden_layers)  # also checks the indices
        return config.hidden_size * (len(layers) if self.params.weighted_sum else 1)

    def fingerprint(self) -> dict[str, str]:
        return {"weights": folder_digest(self._folder())}

    def _load(self) -> Any:
        folder = self._folder()
        hf_offline()
        transformers = require("transformers", "hf_ssl")
        try:
            feature_extractor = transformers.AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
            model = transformers.AutoModel.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise DataError(f"hf_ssl: cannot load {folder} ({first}); it must hold {_EXPECTED}") from None
        device = resolve_device(self.params.device)
        model = model.to(device).eval()
        layers = self._layer_indices(model.config.num_hidden_layers)
        return model, feature_extractor, device, layers

    # -- extraction ---------------------------------------------------------------------------------
    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Index batches, shortest first; group-norm models only batch clips of equal length."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        padded_ok = getattr(self._model[0].config, "feat_extract_norm", "layer") != "group"
        batches: list[list[int]] = []
        for i in order:
            last = batches[-1] if batches else None
            if last and len(last) < self.params.batch_size and (padded_ok or lengths[last[0]] == lengths[i]):
                last.append(i)
            else:
                batches.append([i])
        return batches

    def _extract(self, items: list) -> np.ndarray:
        import torch

        model, feature_extractor, device, layers = self._model
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        for batch in self._batches([len(x) for x in items]):
            inputs = feature_extractor([items[i] for i in batch], sampling_rate=TARGET_SR, padding=True,
                                       return_attention_mask=True, return_tensors="pt")
            mask = inputs["attention_mask"].to(device)
            with torch.no_grad(), warnings.catch_warnings():
                # torch's MHA warns about WavLM's bool padding mask beside a float bias; harmless.
                warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
                hidden = model(inputs["input_values"].to(device), attention_mask=mask,
                               output_hidden_states=True).hidden_states
            frames = model._get_feature_vector_attention_mask(hidden[0].shape[1], mask).unsqueeze(-1).float()
            pooled = torch.stack([(hidden[k] * frames).sum(1) / frames.sum(1) for k in layers], dim=1)  # [b, L, D]
            rows = pooled.flatten(1) if self.params.weighted_sum else pooled.mean(1)
            out[batch] = rows.float().cpu().numpy()
        return out
