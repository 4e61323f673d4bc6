"""``ssl``: a self-supervised speech encoder (WavLM, wav2vec 2.0, HuBERT) fine-tuned from 16 kHz waveforms.

The backbone is ``transformers.AutoModel.from_pretrained(model_path, local_files_only=True)``: weights are
never downloaded; ``model_path`` is a folder written by ``save_pretrained`` (the model and its feature
extractor). Its content hash (:func:`fairray._local_model.folder_digest`) travels with every checkpoint, so
``fairray predict`` refuses a base model that is not the one the adapters and head were trained on.

Forward, per batch of padded waveforms (``Padded(values [B, S], mask [B, S])``):

1. padding is silence; with the feature extractor's ``do_normalize`` each clip is normalised to zero mean
   and unit variance over its valid samples (``Wav2Vec2FeatureExtractor``'s ``zero_mean_unit_var_norm``);
2. the backbone runs with the sample mask as ``attention_mask``. Models whose first convolution uses group
   norm over time (``feat_extract_norm: group``: WavLM Base / Base+, wav2vec 2.0 Base, HuBERT Base) would
   see the zeros of padding there, so their convolutional feature encoder runs clip by clip on the valid
   samples (the transformer still runs on the padded batch). Either way a clip gives the same logits alone
   and inside a padded batch, up to float rounding;
3. ``layers: weighted``: the SUPERB weighted sum, ``sum_l softmax(w)_l * h_l`` over the hidden states
   ``0..L`` (0 = before the first block; s3prl's Featurizer, weights initialised uniform, optional layer norm
   of each frame first); ``layers: last``: the last hidden state;
4. masked mean (``pooling: mean``) or mean + std (``stats``) over the valid frames only (the sample mask
   mapped to frames with the model's ``_get_feat_extract_output_lengths``), then the MLP head.

What trains (``finetune``, :mod:`fairray.models._peft`): ``frozen`` (the backbone in eval mode: SUPERB's
protocol), ``top_k`` (its last ``top_k`` transformer blocks), ``full``, or ``lora`` (peft LoRA adapters on
``target_modules``, default the attention's ``q_proj``/``v_proj``). The convolutional feature encoder stays
frozen unless ``freeze_feature_encoder: false`` with ``full`` (the usual wav2vec 2.0 fine-tuning recipe).
The layer weights and the head always train; ``backbone_lr_scale`` gives the backbone its own learning rate
(``train.lr`` x scale). The checkpoint holds only what trains: LoRA adapters, layer weights and head.

SpecAugment-style masking in the folder's config (``mask_time_prob``) is off unless ``spec_augment: true``:
transformers draws those masks from numpy's global random state, so a trial would not repeat from its seed.
``layerdrop`` (null = the folder's value) skips whole blocks at random; with ``top_k``/``full`` under DDP
set it to 0 (a skipped trainable block leaves parameters without gradients).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from fairray._local_model import base_model_record, hf_skeleton, load_hf, resolve_model_dir
from fairray.errors import ConfigError, DataError
from fairray.inputs import SAMPLE_RATE, InputSpec, Padded
from fairray.models._base import MODELS, select_input
from fairray.models._peft import check_targets, set_finetune, unreached_adapters
from fairray.models.mlp import PooledEncoder, mlp_layers
from fairray.models.sequence import masked_mean_std

WHO = "model ssl"
_EXPECTED = ("config.json, model.safetensors and preprocessor_config.json of a WavLM / wav2vec2 / HuBERT model, "
             "e.g. `AutoModel.from_pretrained('microsoft/wavlm-base-plus').save_pretrained(DIR)` and "
             "`AutoFeatureExtractor.from_pretrained(...).save_pretrained(DIR)` run on a machine with network access")
_REQUIRED = ("config.json", "preprocessor_config.json")
#: Epsilon of the per-clip normalisation (transformers' ``zero_mean_unit_var_norm``).
NORM_EPS = 1e-7


def zero_mean_unit_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row of ``x [B, S]`` normalised over its valid samples (``mask``); padding stays 0."""
    w = mask.to(x.dtype)
    n = w.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (x * w).sum(dim=1, keepdim=True) / n
    var = (((x - mean) ** 2) * w).sum(dim=1, keepdim=True) / n
    return (x - mean) / torch.sqrt(var + NORM_EPS) * w


# -- group-norm feature encoders: clip by clip --------------------------------------------------------

def _conv_frames(samples: int, schedule: tuple[tuple[int, int], ...]) -> int:
    for kernel, stride in schedule:
        samples = (samples - kernel) // stride + 1
    return samples


def _per_clip_forward(self, input_values: torch.Tensor) -> torch.Tensor:
    """The feature encoder on each clip's valid samples (``self.clip_lengths``), outputs zero-padded to
    the frames of the whole padded batch: what group norm over time must see is the clip, not its padding."""
    lengths = self.clip_lengths
    base_forward = super(type(self), self).forward
    total = input_values.shape[1]
    if lengths is None or bool((lengths == total).all()):
        return base_forward(input_values)
    frames = _conv_frames(total, self.conv_schedule)
    outs = [base_forward(input_values[i:i + 1, :n]) for i, n in enumerate(lengths.tolist())]
    return torch.cat([F.pad(o, (0, frames - o.shape[-1])) for o in outs], dim=0)


@cache
def _per_clip_class(cls: type) -> type:
    return type(f"PerClip{cls.__name__}", (cls,), {"forward": _per_clip_forward})


# -- WavLM attention through its projection modules ---------------------------------------------------

def _wavlm_self_attention(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
                          gated_position_bias: torch.Tensor) -> tuple[torch.Tensor, None]:
    """transformers' WavLM attention computed through ``q_proj``/``k_proj``/``v_proj``/``out_proj`` *calls*
    (the stock one hands their weights to ``F.multi_head_attention_forward``, which bypasses LoRA
    adapters), with ``F.scaled_dot_product_attention``: the same function (the gated relative position
    bias added to the scores, padded keys masked), fused kernels on GPU; attention weights are not returned."""
    bsz, tgt, _ = hidden_states.shape

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(bsz, tgt, self.num_heads, self.head_dim).transpose(1, 2)

    q, k, v = heads(self.q_proj(hidden_states)), heads(self.k_proj(hidden_states)), heads(self.v_proj(hidden_states))
    bias = gated_position_bias.view(bsz, self.num_heads, tgt, tgt).to(q.dtype)
    if attention_mask is not None:
        bias = bias.masked_fill(attention_mask.ne(1)[:, None, None, :], float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0)
    return self.out_proj(out.transpose(1, 2).reshape(bsz, tgt, self.embed_dim)), None


@cache
def _module_attention_class(cls: type) -> type:
    return type(f"ModuleCalls{cls.__name__}", (cls,), {"torch_multi_head_self_attention": _wavlm_self_attention})


def attention_through_modules(model: nn.Module) -> int:
    """Make every WavLM attention block of ``model`` call its projection modules (see
    :func:`_wavlm_self_attention`); parameter names stay those of the pretrained model. Returns how many."""
    n = 0
    for sub in model.modules():
        if hasattr(sub, "torch_multi_head_self_attention") and hasattr(sub, "q_proj"):
            sub.__class__ = _module_attention_class(type(sub))
            n += 1
    return n


def run_feature_encoder_per_clip(encoder: nn.Module, config: Any) -> None:
    """Make ``encoder`` (a wav2vec 2.0-style convolutional feature encoder) run clip by clip whenever its
    ``clip_lengths`` attribute holds the batch's sample lengths. Its class becomes a subclass that
    overrides ``forward`` only: parameter names and the state dict stay those of the pretrained model."""
    encoder.__class__ = _per_clip_class(type(encoder))
    encoder.clip_lengths = None
    encoder.conv_schedule = tuple(zip(config.conv_kernel, config.conv_stride, strict=True))


# -- the module ---------------------------------------------------------------------------------------

class SSLClassifier(PooledEncoder):
    """Waveforms -> SSL encoder -> (weighted) hidden states -> pooled over valid frames -> head. A fusion
    encoder (:mod:`fairray.models.fusion`): ``embed`` is the head's last hidden layer."""

    def __init__(self, key: str, backbone: nn.Module, head: nn.Module, *, finetune: str, weighted: bool,
                 layer_norm: bool, pooling: str, do_normalize: bool, base: Mapping[str, str],
                 backbone_lr_scale: float = 1.0) -> None:
        super().__init__()
        self.key, self.finetune, self.weighted, self.layer_norm = key, finetune, weighted, layer_norm
        self.pooling, self.do_normalize, self.backbone_lr_scale = pooling, do_normalize, backbone_lr_scale
        self.base = dict(base)
        self.backbone = backbone
        config = self.hf.config
        #: Pre-softmax layer logits over hidden states 0..L; zeros = uniform (s3prl's Featurizer).
        self.layer_logits = nn.Parameter(torch.zeros(config.num_hidden_layers + 1)) if weighted else None
        self.head = head
        self.embed_dim = head[-1].in_features
        self.min_samples = self._min_samples(config)

    @property
    def hf(self) -> nn.Module:
        """The transformers model inside the backbone (the backbone itself unless peft wrapped it)."""
        get = getattr(self.backbone, "get_base_model", None)
        return get() if get is not None else self.backbone

    @staticmethod
    def _min_samples(config: Any) -> int:
        """The fewest samples that give one frame (400 = 25 ms for the usual encoder)."""
        samples = 1
        for kernel, stride in reversed(tuple(zip(config.conv_kernel, config.conv_stride, strict=True))):
            samples = (samples - 1) * stride + kernel
        return samples

    def layer_weights(self) -> torch.Tensor | None:
        """The normalised layer weights (softmax of the logits), detached; None with ``layers: last``."""
        return None if self.layer_logits is None else F.softmax(self.layer_logits.detach(), dim=-1)

    def train(self, mode: bool = True) -> SSLClassifier:
        super().train(mode)
        if self.finetune == "frozen":  # a frozen upstream runs as at inference (no dropout)
            self.backbone.eval()
        return self

    def lr_scales(self) -> dict[str, float]:
        return {"backbone": self.backbone_lr_scale}

    def pool(self, inputs) -> torch.Tensor:
        """The pooled (layer-weighted) backbone output of the waveform input: ``[B, D]`` or ``[B, 2D]``."""
        wav: Padded = inputs[self.key]
        x, mask = wav.values, wav.mask
        if x.shape[1] < self.min_samples:  # shorter than the receptive field: pad with silence
            pad = self.min_samples - x.shape[1]
            x, mask = F.pad(x, (0, pad)), F.pad(mask, (0, pad))
        x = x * mask.to(x.dtype)
        if self.do_normalize:
            x = zero_mean_unit_var(x, mask)
        lengths = mask.sum(dim=1).clamp(min=self.min_samples)  # a clip shorter than one frame keeps one
        attention = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        hf = self.hf
        encoder = hf.feature_extractor
        per_clip = hasattr(encoder, "clip_lengths")
        if per_clip:
            encoder.clip_lengths = lengths
        try:
            with warnings.catch_warnings():
                # torch's MHA warns about WavLM's bool padding mask beside a float position bias; harmless
                warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
                out = self.backbone(input_values=x, attention_mask=attention.long(),
                                    output_hidden_states=self.weighted)
        finally:
            if per_clip:
                encoder.clip_lengths = None
        frames = hf._get_feat_extract_output_lengths(lengths).clamp(min=1)
        hidden = out.hidden_states if self.weighted else (out.last_hidden_state,)
        frame_mask = torch.arange(hidden[0].shape[1], device=x.device)[None, :] < frames[:, None]
        h = self._combine(hidden)
        mean, std = masked_mean_std(h, frame_mask)
        return mean if self.pooling == "mean" else torch.cat([mean, std], dim=-1)

    def _combine(self, hidden: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self.layer_logits is None:
            return hidden[-1]
        weights = F.softmax(self.layer_logits, dim=-1)
        total = None
        for k, h in enumerate(hidden):
            if self.layer_norm:
                h = F.layer_norm(h, (h.shape[-1],))
            total = weights[k] * h if total is None else total + weights[k] * h
        return total

    # the base model's folder and content hash travel with the trainable state (model.pt)
    def get_extra_state(self) -> dict[str, str]:
        return {"base_model_path": self.base["path"], "base_model_digest": self.base["digest"]}

    def set_extra_state(self, state: Mapping[str, str]) -> None:
        saved, here = state.get("base_model_digest"), self.base["digest"]
        if saved != here:
            raise DataError(f"{WHO}: the base model in {self.base['path']} is not the one this checkpoint was trained "
                            f"on (content hash {here[:12]}, trained on {str(saved)[:12]} from "
                            f"{state.get('base_model_path')}); point model.model_path at that model's folder")


@MODELS.register("ssl")
class SSLModel:
    accepts = ("waveform",)
    summary = ("WavLM / wav2vec2 / HuBERT from a local folder on 16 kHz waveforms: frozen, top-k, full or LoRA "
               "fine-tuning, SUPERB layer weights, pooling over valid frames, MLP head")

    @dataclass(frozen=True)
    class Params:
        #: Local folder of the pretrained model (``save_pretrained`` of the model and its feature extractor).
        model_path: str
        #: What trains: frozen | top_k | full | lora (see the module docstring).
        finetune: Literal["frozen", "top_k", "full", "lora"] = "frozen"
        #: Transformer blocks that train with ``finetune: top_k`` (the last ones).
        top_k: int = field(default=2, metadata={"ge": 1})
        #: LoRA rank, scale numerator (``alpha / r``), dropout, and the modules it adapts.
        lora_r: int = field(default=8, metadata={"ge": 1})
        lora_alpha: float = field(default=16.0, metadata={"gt": 0})
        lora_dropout: float = field(default=0.05, metadata={"ge": 0, "lt": 1})
        target_modules: tuple[str, ...] = ("q_proj", "v_proj")
        #: Keep the convolutional feature encoder frozen (matters with ``finetune: full``).
        freeze_feature_encoder: bool = True
        #: Recompute activations in the backward pass (less memory, about a third more compute).
        gradient_checkpointing: bool = False
        #: ``weighted``: SUPERB's learnable softmax weights over all hidden states; ``last``: the last one.
        layers: Literal["weighted", "last"] = "weighted"
        #: Layer norm (no affine) of each frame of each hidden state before the weighted sum.
        layer_norm: bool = False
        pooling: Literal["mean", "stats"] = "mean"
        #: The head: ``depth`` hidden layers of ``hidden`` units (0 = linear), dropout.
        hidden: int = field(default=256, metadata={"ge": 1})
        depth: int = field(default=1, metadata={"ge": 0})
        dropout: float = field(default=0.1, metadata={"ge": 0, "lt": 1})
        #: Learning rate of the backbone as a multiple of train.lr (layer weights and head: train.lr).
        backbone_lr_scale: float = field(default=1.0, metadata={"gt": 0})
        #: Keep the folder's SpecAugment masking (mask_time_prob ...) in training; not seed-reproducible.
        spec_augment: bool = False
        #: Probability of skipping a transformer block in training; null = the folder's config.
        layerdrop: float | None = field(default=None, metadata={"ge": 0, "lt": 1})
        #: The waveform input to read; null = the dataset's only waveform input.
        input: str | None = None

    @staticmethod
    def folder(params: Params) -> Path:
        return resolve_model_dir(params.model_path, None, WHO, _EXPECTED, _REQUIRED, key="model.model_path")

    @classmethod
    def check(cls, params: Params, inputs: Mapping[str, InputSpec]) -> None:
        """When the spec is loaded: the input, the folder and its config, ``top_k`` against the model's
        blocks and the LoRA ``target_modules`` against its module names (on a weightless meta skeleton)."""
        select_input("ssl", params, inputs, cls.accepts)
        config = load_hf("AutoConfig", cls.folder(params), WHO, _EXPECTED)
        if not hasattr(config, "conv_kernel") or not hasattr(config, "num_hidden_layers"):
            raise ConfigError(f"{WHO}: {params.model_path} holds a {config.model_type!r} model, not a wav2vec 2.0-style "
                              "speech encoder (WavLM, wav2vec2, HuBERT, data2vec-audio)")
        if params.finetune == "top_k" and params.top_k > config.num_hidden_layers:
            raise ConfigError(f"{WHO}: top_k {params.top_k} exceeds the model's {config.num_hidden_layers} "
                              "transformer blocks")
        if params.finetune == "lora":
            check_targets(hf_skeleton(config), params.target_modules, WHO)

    @classmethod
    def build(cls, params: Params, inputs: Mapping[str, InputSpec], n_out: int) -> SSLClassifier:
        spec = select_input("ssl", params, inputs, cls.accepts)
        folder = cls.folder(params)
        extractor = load_hf("AutoFeatureExtractor", folder, WHO, _EXPECTED)
        rate = getattr(extractor, "sampling_rate", SAMPLE_RATE)
        if rate != SAMPLE_RATE:
            raise ConfigError(f"{WHO}: {folder} expects {rate} Hz audio; waveform inputs are {SAMPLE_RATE} Hz")
        overrides: dict[str, Any] = {} if params.spec_augment else {"apply_spec_augment": False}
        if params.layerdrop is not None:
            overrides["layerdrop"] = params.layerdrop
        hf = load_hf("AutoModel", folder, WHO, _EXPECTED, **overrides)
        if not hasattr(hf, "_get_feat_extract_output_lengths") or not hasattr(hf, "feature_extractor"):
            raise ConfigError(f"{WHO}: {folder} holds a {type(hf).__name__}, not a wav2vec 2.0-style speech encoder")
        config = hf.config
        if params.gradient_checkpointing:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if getattr(config, "feat_extract_norm", "layer") == "group":
            run_feature_encoder_per_clip(hf.feature_extractor, config)
        attention_through_modules(hf)  # WavLM: LoRA on q/k/v/out_proj must be called to count
        encoder = hf.encoder
        extra = [encoder.layer_norm] if getattr(config, "do_stable_layer_norm", False) else []
        backbone = set_finetune(hf, params.finetune, who=WHO, layers=encoder.layers, top_k=params.top_k, extra=extra,
                                lora={"r": params.lora_r, "alpha": params.lora_alpha, "dropout": params.lora_dropout,
                                      "target_modules": params.target_modules})
        features = hf.feature_extractor
        if params.freeze_feature_encoder or not any(p.requires_grad for p in features.parameters()):
            features._freeze_parameters()  # also stops it marking its input as requiring grad
        width = config.hidden_size * (2 if params.pooling == "stats" else 1)
        head = nn.Sequential(*mlp_layers(width, params.hidden, params.depth, params.dropout, n_out))
        model = SSLClassifier(spec.name, backbone, head, finetune=params.finetune,
                              weighted=params.layers == "weighted", layer_norm=params.layer_norm,
                              pooling=params.pooling, do_normalize=bool(getattr(extractor, "do_normalize", True)),
                              base=base_model_record(folder), backbone_lr_scale=params.backbone_lr_scale)
        if params.finetune == "lora":
            probe = torch.zeros(1, 2 * model.min_samples)
            dead = unreached_adapters(backbone, lambda: model.eval()({spec.name: Padded(probe, probe > -1)}))
            model.train()
            if dead:
                raise ConfigError(f"{WHO}: LoRA adapters on {dead[:3]}{' ...' if len(dead) > 3 else ''} are never "
                                  f"called by {type(hf).__name__}'s forward (it reads their weights directly); "
                                  "choose other target_modules")
        return model


# -- random models, for tests and benchmarks (no weights can be downloaded there) ---------------------

#: Architecture -> transformers config class name.
ARCHITECTURES = {"wavlm": "WavLMConfig", "wav2vec2": "Wav2Vec2Config", "hubert": "HubertConfig"}
#: A tiny encoder: 32 wide, 2 blocks, a 3-layer convolution (320 samples = 20 ms per frame).
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "conv_dim": (32, 32, 32), "conv_stride": (5, 4, 4), "conv_kernel": (10, 4, 4), "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2, "num_buckets": 16, "max_bucket_distance": 64}


def write_random_model(folder: str | Path, arch: str = "wavlm", size: str = "tiny", norm: str = "layer",
                       seed: int = 0, **config: Any) -> Path:
    """A randomly initialised ``arch`` encoder and its feature extractor saved to ``folder`` (what
    ``model_path`` expects), for tests and benchmarks: ``size`` ``tiny`` (:data:`TINY`) or ``base`` (the
    transformers defaults: 768 wide, 12 blocks, WavLM Base / wav2vec 2.0 Base sized); ``norm``: the feature
    encoder's ``layer`` or ``group`` norm; ``config``: further config overrides."""
    import transformers

    if arch not in ARCHITECTURES:
        raise ConfigError(f"write_random_model: arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    settings = {**(TINY if size == "tiny" else {}), "feat_extract_norm": norm,
                "do_stable_layer_norm": norm == "layer", "mask_time_prob": 0.0, **config}
    if arch != "wavlm":
        settings = {k: v for k, v in settings.items() if k not in ("num_buckets", "max_bucket_distance")}
    cfg = getattr(transformers, ARCHITECTURES[arch])(**settings)
    torch.manual_seed(seed)
    folder = Path(folder)
    transformers.AutoModel.from_config(cfg).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                          do_normalize=True, return_attention_mask=norm == "layer"
                                          ).save_pretrained(folder)
    return folder
