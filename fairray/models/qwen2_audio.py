"""Qwen2-Audio (audio encoder + Qwen2 language model) with LoRA adapters, classifying emotions from a prompt.

The MinMaxGAP paper's backbone: ``Qwen2AudioForConditionalGeneration`` loaded from a local folder
(``save_pretrained`` of ``Qwen/Qwen2-Audio-7B`` or ``-7B-Instruct``, with its processor files), peft
LoRA on the language model's attention projections, and a prompt that holds the utterance's audio and,
in the speech + text setting, its transcript.

**Inputs.** A ``waveform`` input (16 kHz): the folder's own processor (``WhisperFeatureExtractor``) turns
each clip into log-mel features of exactly ``2 x max_source_positions`` frames (30 s for the released
model; longer clips are cut there) with their ``feature_attention_mask``; the audio encoder gives
``N_i`` embeddings per clip (``audio_tower._get_feat_extract_output_lengths``), and the prompt holds
exactly ``N_i`` consecutive audio tokens for them. Speech + text: ``transcript`` names a ``tokens``
input whose ids come from **this folder's tokenizer** (the dataset tokenises the transcripts with it);
they are inserted into the prompt as ids, unchanged. ``transcript: null`` is the speech-only setting.

**Prompt.** ``prompt`` is text with one ``{audio}`` placeholder (replaced by ``<|AUDIO|>`` x ``N_i``)
and optionally ``{transcript}`` (replaced by ``transcript_prefix`` + the transcript ids +
``transcript_suffix`` when a transcript is given, by nothing otherwise; a spec that names a transcript
but whose prompt has no ``{transcript}`` is refused). The text pieces are tokenised once, without
special tokens added; rows are right-padded and the classifier reads the hidden state of each row's last
prompt token (the assistant turn's start: what the model would answer from).

**Classifier.** ``head``: an MLP head over that last hidden state (as ``Qwen2ForSequenceClassification``).
``label_words``: the language model's own next-token logits for one word per class (``label_words``,
in the dataset's class order; each word's first token), i.e. the verbaliser of prompt-based
classification, with no new weights but the adapters.

**Precision.** ``weights_dtype: auto`` loads the base in bfloat16 when CUDA is available (a 7B model is
~16 GB in bf16), float32 on the CPU; run with ``train.precision: bf16`` on GPUs. LoRA adapters and
the head stay float32 (peft casts the adapters). ``gradient_checkpointing`` trades compute for memory.

**What trains**: ``finetune: lora`` (adapters, default on ``.*language_model.*\\.(q_proj|v_proj)``, a
regex so the audio encoder's own ``q_proj``/``v_proj`` stay frozen) or ``frozen``; plus the head. The
checkpoint holds the adapters and the head only (see :mod:`fairray.models._peft`).

Example (YAML)::

    model: {name: qwen2_audio, model_path: /models/Qwen2-Audio-7B-Instruct, lora_r: 8,
            transcript: transcript, classifier: label_words,
            label_words: [anger, disgust, fear, joy, neutral, sadness, surprise]}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fairray._local_model import base_model_record, load_hf, require, resolve_model_dir
from fairray.errors import ConfigError, DataError
from fairray.inputs import SAMPLE_RATE, InputSpec, Padded
from fairray.models._base import MODELS, PretrainedBase, select_input
from fairray.models._peft import check_targets, set_finetune
from fairray.models.mlp import drop_classifier, head_embed, mlp_layers

#: Environment variable naming the model folder when ``model_path`` is not set.
QWEN2_AUDIO_ENV_VAR = "FAIRRAY_QWEN2_AUDIO_PATH"
_EXPECTED = ("config.json, the weights and the processor files (tokenizer + WhisperFeatureExtractor) of "
             "Qwen2-Audio, e.g. `Qwen2AudioForConditionalGeneration.from_pretrained('Qwen/Qwen2-Audio-7B-Instruct')"
             ".save_pretrained(DIR)` and `AutoProcessor...save_pretrained(DIR)` run on a machine with network access")
AUDIO, TRANSCRIPT = "{audio}", "{transcript}"
#: The Qwen2-Audio chat layout (its processor's default template) with one audio and the question.
DEFAULT_PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                  "Audio 1: <|audio_bos|>{audio}<|audio_eos|>\n{transcript}"
                  "Which emotion does the speaker express? Answer with one word.<|im_end|>\n<|im_start|>assistant\n")
#: LoRA on the decoder's query and value projections only (the audio encoder's have the same names).
DEFAULT_TARGETS = r".*language_model.*\.(q_proj|v_proj)"
WHO = "model qwen2_audio"
#: Shortest clip fed to the feature extractor: 7 mel frames of 160 samples, the fewest that give 2 audio tokens.
MIN_SAMPLES = 7 * 160


def load_processor(folder: Path) -> Any:
    """The folder's ``AutoProcessor``: Qwen2-Audio's tokenizer + WhisperFeatureExtractor, or one DataError line."""
    processor = load_hf("AutoProcessor", folder, WHO, _EXPECTED)
    if not hasattr(processor, "feature_extractor") or not hasattr(processor, "tokenizer"):
        raise DataError(f"{WHO}: {folder} holds a {type(processor).__name__}, not Qwen2-Audio's processor "
                        "(tokenizer + feature extractor)")
    return processor


def load_config(folder: Path) -> Any:
    config = load_hf("AutoConfig", folder, WHO, _EXPECTED)
    if config.model_type != "qwen2_audio":
        raise DataError(f"{WHO}: {folder} holds a {config.model_type!r} model, not qwen2_audio")
    return config


def resolve_dtype(name: str) -> torch.dtype:
    """``auto``: bfloat16 when CUDA is available, else float32."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


class Prompt:
    """The tokenised prompt: its text pieces, ``{audio}`` and ``{transcript}`` in template order,
    assembled per row (text tokenised once, here)."""

    def __init__(self, tokenizer: Any, template: str, audio_token_id: int, *, prefix: str | None,
                 suffix: str | None) -> None:
        self.audio_token_id = audio_token_id
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"] if text else []  # noqa: E731
        pattern = re.compile(f"({re.escape(AUDIO)}|{re.escape(TRANSCRIPT)})")
        self.segments: list[str | list[int]] = [p if p in (AUDIO, TRANSCRIPT) else encode(p)
                                               for p in pattern.split(template) if p]
        self.prefix, self.suffix = encode(prefix or ""), encode(suffix or "")

    def row(self, n_audio: int, transcript: list[int] | None) -> list[int]:
        """One row's ids: ``n_audio`` audio tokens at ``{audio}``, the transcript (if any) at ``{transcript}``."""
        out: list[int] = []
        for segment in self.segments:
            if segment == AUDIO:
                out += [self.audio_token_id] * n_audio
            elif segment == TRANSCRIPT:
                out += self.prefix + transcript + self.suffix if transcript is not None else []
            else:
                out += segment
        return out


class Qwen2AudioClassifier(PretrainedBase, nn.Module):
    """Qwen2-Audio over a waveform (and a transcript) input, classified from the prompt's last token.
    A fusion encoder (:mod:`fairray.models.fusion`): ``embed`` is what the classifier reads. The base
    model's folder and hash travel with its checkpoints (:class:`~fairray.models._base.PretrainedBase`)."""

    who = WHO

    def __init__(self, backbone: nn.Module, processor: Any, prompt: Prompt, *, audio_key: str,
                 transcript_key: str | None, head: nn.Sequential | None, label_ids: list[int] | None,
                 backbone_lr_scale: float, base: dict[str, str]) -> None:
        super().__init__()
        self.base = base
        self.backbone, self.head = backbone, head
        self.feature_extractor = processor.feature_extractor
        self.pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
        self.prompt, self.audio_key, self.transcript_key = prompt, audio_key, transcript_key
        self.backbone_lr_scale = backbone_lr_scale
        self.label_ids = label_ids
        hidden = self.qwen().config.text_config.hidden_size
        self.embed_dim = head[-1].in_features if head is not None else hidden

    def qwen(self) -> nn.Module:
        """The ``Qwen2AudioForConditionalGeneration`` (inside the peft wrapper for LoRA)."""
        return self.backbone.get_base_model() if hasattr(self.backbone, "peft_config") else self.backbone

    def features(self, wav: Padded) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel features ``[B, mels, frames]`` and their frame mask, by the folder's own feature extractor."""
        lengths = wav.mask.sum(dim=1).tolist()
        clips = [wav.values[i, :max(int(n), 1)].detach().float().cpu().numpy() for i, n in enumerate(lengths)]
        # a clip gives at least 2 audio tokens: with a single one in every row transformers would take the prompt
        # for an unexpanded (legacy) one; shorter clips are padded with silence
        clips = [np.pad(c, (0, max(0, MIN_SAMPLES - len(c)))) for c in clips]
        with torch.autocast("cpu", enabled=False):  # the extractor computes in float32 on the CPU, then numpy
            out = self.feature_extractor(clips, sampling_rate=SAMPLE_RATE, return_attention_mask=True,
                                         padding="max_length", return_tensors="pt")
        return out["input_features"], out["attention_mask"]

    def prompt_ids(self, inputs, n_audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded prompt ids ``[B, L]`` and attention mask, ``n_audio[i]`` audio tokens in row ``i``."""
        transcripts: list[list[int] | None] = [None] * len(n_audio)
        if self.transcript_key is not None:
            tokens: Padded = inputs[self.transcript_key]
            transcripts = [tokens.values[i][tokens.mask[i]].tolist() for i in range(len(tokens))]
        rows = [self.prompt.row(int(n), t) for n, t in zip(n_audio.tolist(), transcripts, strict=True)]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        return ids, mask

    def model_inputs(self, inputs) -> dict[str, torch.Tensor]:
        """What ``Qwen2AudioModel.forward`` takes for this batch (on the waveform's device)."""
        wav: Padded = inputs[self.audio_key]
        features, frame_mask = self.features(wav)
        _, n_audio = self.qwen().model.audio_tower._get_feat_extract_output_lengths(frame_mask.sum(-1))
        ids, mask = self.prompt_ids(inputs, n_audio)
        device = wav.values.device
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                "input_features": features.to(device), "feature_attention_mask": frame_mask.to(device)}

    def last_hidden(self, inputs) -> torch.Tensor:
        """The final hidden state at each row's last prompt token ``[B, hidden]`` (float32)."""
        batch = self.model_inputs(inputs)
        hidden = self.qwen().model(**batch, use_cache=False).last_hidden_state
        last = batch["attention_mask"].sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.head is not None:
            return self.head(pooled)
        if self.label_ids is None:  # the classifier was dropped (early fusion)
            return pooled
        weight = self.qwen().lm_head.weight[self.label_ids]
        return F.linear(pooled, weight.float())

    def forward(self, inputs) -> torch.Tensor:
        return self.classify(self.last_hidden(inputs))

    def embed(self, inputs) -> torch.Tensor:
        pooled = self.last_hidden(inputs)
        return head_embed(self.head, pooled) if self.head is not None else pooled

    def drop_classifier(self) -> None:
        if self.head is not None:
            drop_classifier(self.head)
        self.label_ids = None

    def lr_scales(self) -> dict[str, float]:
        return {"backbone": self.backbone_lr_scale}


#: Chat and audio special tokens Qwen2-Audio's processor and prompt use.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|audio_eos|>", "<|AUDIO|>")
#: Config sizes of :func:`write_random_model`: ``tiny`` (1 s of audio = 25 audio tokens, 32 wide, 2 + 2
#: blocks) and ``7b`` (Qwen2-Audio-7B's shapes: Whisper-large-v3 encoder, Qwen-7B decoder, 30 s of audio).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"audio_config": {"d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
                              "num_mel_bins": 128, "max_source_positions": 50},
             "text_config": {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                             "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 256},
             "audio_token_index": 255},
    "7b": {"audio_config": {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20,
                            "encoder_ffn_dim": 5120, "num_mel_bins": 128, "max_source_positions": 1500},
           "text_config": {"model_type": "qwen2", "hidden_size": 4096, "intermediate_size": 11008,
                           "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                           "vocab_size": 156032, "max_position_embeddings": 8192},
           "audio_token_index": 151646},
}


def write_random_model(folder: str | Path, size: str = "tiny", words: tuple[str, ...] = (), seed: int = 0,
                       device: str = "cpu") -> Path:
    """A randomly initialised Qwen2-Audio and a processor for it saved to ``folder`` (what ``model_path``
    expects), for tests and benchmarks; nothing is downloaded.

    The processor: a lower-casing word-level tokenizer (``tokenizers`` WordLevel, whitespace split) over
    :data:`SPECIAL_TOKENS` and ``words``, its ids filled densely up to the vocabulary size (``<|AUDIO|>`` at
    the config's ``audio_token_index``), and a ``WhisperFeatureExtractor`` (128 mel bins) whose chunk is
    the encoder's ``2 x max_source_positions`` frames. ``size``: a key of :data:`SIZES`; ``device``: where
    the weights are initialised (``cuda`` makes the 7B one quickly), saved in bfloat16 for ``7b``.
    """
    import tokenizers
    import transformers

    if size not in SIZES:
        raise ConfigError(f"write_random_model: size must be one of {', '.join(SIZES)}, got {size!r}")
    shapes = SIZES[size]
    vocab_size, audio_id = shapes["text_config"]["vocab_size"], shapes["audio_token_index"]
    names = ["[UNK]", *SPECIAL_TOKENS[:-1], *dict.fromkeys(w.lower() for w in words)]
    vocab = {t: i for i, t in enumerate(names + [f"<w{i}>" for i in range(len(names), vocab_size)])}
    vocab = {t: i for t, i in vocab.items() if i != audio_id} | {SPECIAL_TOKENS[-1]: audio_id}
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    model.normalizer = tokenizers.normalizers.Lowercase()
    model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=model, unk_token="[UNK]",
                                                     pad_token=SPECIAL_TOKENS[0],
                                                     additional_special_tokens=list(SPECIAL_TOKENS[1:]))
    chunk_s = 2 * shapes["audio_config"]["max_source_positions"] * 160 // SAMPLE_RATE  # 160-sample mel hop
    features = transformers.WhisperFeatureExtractor(feature_size=128, chunk_length=chunk_s)
    folder = Path(folder)
    transformers.Qwen2AudioProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(folder)
    torch.manual_seed(seed)
    dtype = torch.bfloat16 if size == "7b" else torch.float32
    with torch.device(device):
        net = transformers.Qwen2AudioForConditionalGeneration._from_config(transformers.Qwen2AudioConfig(**shapes),
                                                                          dtype=dtype)
    net.save_pretrained(folder)
    return folder


@MODELS.register("qwen2_audio")
class Qwen2Audio:
    accepts = ("waveform",)
    summary = "Qwen2-Audio (local folder) with LoRA, prompt with the audio (+ transcript), head or label words"

    @dataclass(frozen=True)
    class Params:
        #: Folder with config.json, weights and processor files; null = $FAIRRAY_QWEN2_AUDIO_PATH.
        model_path: str | None = None
        finetune: Literal["lora", "frozen"] = "lora"
        lora_r: int = field(default=8, metadata={"ge": 1})
        lora_alpha: float = field(default=16.0, metadata={"gt": 0})
        lora_dropout: float = field(default=0.05, metadata={"ge": 0, "lt": 1})
        #: Module names, or one regex over full module names (peft semantics): the decoder's q/v by default.
        target_modules: str | tuple[str, ...] = DEFAULT_TARGETS
        #: Prompt text with one {audio} and optionally {transcript} (see the module docstring).
        prompt: str = DEFAULT_PROMPT
        #: The tokens input holding each utterance's transcript (this folder's tokenizer); null = speech only.
        transcript: str | None = None
        transcript_prefix: str | None = "Transcript: "
        transcript_suffix: str | None = "\n"
        #: ``head``: MLP head over the last hidden state; ``label_words``: the LM's logits of one word per class.
        classifier: Literal["head", "label_words"] = "head"
        #: One word per class, in the dataset's class order (``classifier: label_words``).
        label_words: tuple[str, ...] = ()
        hidden: int = field(default=256, metadata={"ge": 1})
        #: Hidden layers of the head (0: one linear layer, as Qwen2ForSequenceClassification's ``score``).
        depth: int = field(default=0, metadata={"ge": 0})
        dropout: float = field(default=0.1, metadata={"ge": 0, "lt": 1})
        #: Base weights' dtype: auto = bfloat16 with CUDA, float32 on the CPU.
        weights_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
        gradient_checkpointing: bool = False
        #: Learning rate of the adapters as a multiple of train.lr (the head trains at train.lr).
        backbone_lr_scale: float = field(default=1.0, metadata={"gt": 0})
        #: The waveform input to read; null = the dataset's only waveform input.
        input: str | None = None

        def __post_init__(self) -> None:
            if self.prompt.count(AUDIO) != 1:
                raise ValueError(f"prompt must hold {AUDIO} exactly once (where the audio tokens go), "
                                 f"found {self.prompt.count(AUDIO)}")
            if self.prompt.count(TRANSCRIPT) > 1:
                raise ValueError(f"prompt holds {TRANSCRIPT} more than once")
            if self.transcript is not None and TRANSCRIPT not in self.prompt:
                raise ValueError(f"transcript is {self.transcript!r} but the prompt has no {TRANSCRIPT} "
                                 "placeholder: the transcript would be dropped")
            if self.classifier == "label_words" and not self.label_words:
                raise ValueError("classifier label_words needs label_words: one word per class, in class order")

    @staticmethod
    def folder(params: Params) -> Path:
        return resolve_model_dir(params.model_path or "", QWEN2_AUDIO_ENV_VAR, WHO, _EXPECTED, ("config.json",))

    @classmethod
    def _transcript_spec(cls, params: Params, inputs: Mapping[str, InputSpec]) -> InputSpec | None:
        if params.transcript is None:
            return None
        spec = inputs.get(params.transcript)
        if spec is None or spec.kind != "tokens":
            have = ", ".join(s.describe() for s in inputs.values()) or "none"
            raise ConfigError(f"{WHO}: transcript {params.transcript!r} must name a tokens input of the dataset "
                              f"({have})")
        return spec

    @staticmethod
    def _label_ids(processor: Any, words: tuple[str, ...]) -> list[int]:
        """Each label word's first token id; words that share it cannot be told apart."""
        ids = []
        for word in words:
            tokens = processor.tokenizer(word, add_special_tokens=False)["input_ids"]
            if not tokens:
                raise ConfigError(f"{WHO}: label word {word!r} tokenises to nothing")
            if tokens[0] == processor.tokenizer.unk_token_id:
                raise ConfigError(f"{WHO}: label word {word!r} starts with the unknown token of the model's tokenizer")
            ids.append(tokens[0])
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{WHO}: label_words {list(words)} do not start with distinct tokens "
                              f"(first token ids {ids}); choose words that differ in their first token")
        return ids

    @classmethod
    def _check_audio(cls, config: Any, processor: Any) -> None:
        frames = 2 * config.audio_config.max_source_positions
        fe = processor.feature_extractor
        if getattr(fe, "nb_max_frames", frames) != frames:
            raise DataError(f"{WHO}: the feature extractor gives {fe.nb_max_frames} mel frames but the audio encoder "
                            f"takes {frames} (2 x max_source_positions); the folder's processor and model disagree")
        if processor.audio_token_id != config.audio_token_id:
            raise DataError(f"{WHO}: the tokenizer's audio token id {processor.audio_token_id} is not the model's "
                            f"audio_token_id {config.audio_token_id}")

    @classmethod
    def check(cls, params: Params, inputs: Mapping[str, InputSpec]) -> None:
        """At load time: the folder and processor read and agree, the transcript input exists and fits the
        vocabulary, the label words are distinct, the LoRA targets exist (on a meta-device skeleton)."""
        select_input("qwen2_audio", params, inputs, cls.accepts)
        transcript = cls._transcript_spec(params, inputs)
        folder = cls.folder(params)
        config, processor = load_config(folder), load_processor(folder)
        cls._check_audio(config, processor)
        vocab = config.text_config.vocab_size
        if transcript is not None and transcript.vocab_size is not None and transcript.vocab_size > vocab:
            raise ConfigError(f"{WHO}: transcript {transcript.name!r} has token ids up to {transcript.vocab_size - 1} "
                              f"but the model's vocabulary holds {vocab}; tokenise with the model folder's tokenizer")
        if params.classifier == "label_words":
            cls._label_ids(processor, params.label_words)
        if params.finetune == "lora":
            transformers = require("transformers", WHO)
            with torch.device("meta"):
                skeleton = transformers.Qwen2AudioForConditionalGeneration._from_config(config)
            check_targets(skeleton, params.target_modules, WHO)

    @classmethod
    def build(cls, params: Params, inputs: Mapping[str, InputSpec], n_out: int) -> Qwen2AudioClassifier:
        audio = select_input("qwen2_audio", params, inputs, cls.accepts)
        transcript = cls._transcript_spec(params, inputs)
        folder = cls.folder(params)
        processor = load_processor(folder)
        model = load_hf("Qwen2AudioForConditionalGeneration", folder, WHO, _EXPECTED,
                        dtype=resolve_dtype(params.weights_dtype))
        cls._check_audio(model.config, processor)
        label_ids = None
        if params.classifier == "label_words":
            if len(params.label_words) != n_out:
                raise ConfigError(f"{WHO}: {len(params.label_words)} label_words for {n_out} classes; give one word "
                                  "per class, in the dataset's class order")
            label_ids = cls._label_ids(processor, params.label_words)
        lora = {"r": params.lora_r, "alpha": params.lora_alpha, "dropout": params.lora_dropout,
                "target_modules": params.target_modules}
        model = set_finetune(model, params.finetune, who=WHO, lora=lora)
        if params.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hidden = model.config.text_config.hidden_size
        head = None
        if params.classifier == "head":
            head = nn.Sequential(*mlp_layers(hidden, params.hidden, params.depth, params.dropout, n_out))
        prompt = Prompt(processor.tokenizer, params.prompt, processor.audio_token_id,
                        prefix=params.transcript_prefix, suffix=params.transcript_suffix)
        return Qwen2AudioClassifier(model, processor, prompt, audio_key=audio.name,
                                    transcript_key=None if transcript is None else transcript.name, head=head,
                                    label_ids=label_ids, backbone_lr_scale=params.backbone_lr_scale,
                                    base=base_model_record(folder))
