"""The named inputs a corpus dataset builds besides its feature matrix: waveforms and transcript tokens.

``dataset.inputs`` (:class:`~fairray.config.InputConfig`) names them; :func:`build_inputs` makes one store
per name, row-aligned with the corpus table, and every later subset of the rows (emotion filter,
protocol, resampling) goes through :func:`subset_inputs`, which keeps each store aligned by indexing,
never by copying the samples.

* :class:`WaveformStore` reads the waveform cache (:mod:`fairray.data.features._waveforms`): memory-mapped
  flat samples + offsets per corpus; training takes a random crop of ``max_seconds`` (the loop's rng),
  evaluation whole clips (``eval: whole``) or the first ``max_seconds`` (``eval: crop``).
* :class:`RowTokenStore` holds the transcripts tokenised with a local tokenizer folder.

:func:`declared_specs` gives the same inputs' specs from the config alone (what the spec loader checks the
model against), and :func:`dialogue_context` each utterance's dialogue, position and speaker codes.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fairray.errors import DataError
from fairray.inputs import SAMPLE_RATE, InputSpec, InputStore, Padded, TokenStore, _pad

if TYPE_CHECKING:
    from fairray.config import DatasetConfig, InputConfig

log = logging.getLogger("fairray")

#: Files one of which a tokenizer folder must hold (fast tokenizer, or the vocabulary of a slow one).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")
#: Model weights that may share a tokenizer's folder; left out of the tokenizer's digest.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".onnx", ".msgpack")


# -- stores ------------------------------------------------------------------------------------------

class WaveformStore(InputStore):
    """16 kHz samples of every dataset row, read from one or more flat sample arrays (one per corpus).

    Row ``i`` is clip ``clip[i]`` of shard ``shard[i]``: ``shards[s] = (samples, offsets)`` with the clip's
    samples at ``samples[offsets[c]:offsets[c + 1]]`` (float32 or float16, memory-mapped). ``max_length``
    (samples) crops training rows at a random offset when :meth:`take` gets an rng; without one (evaluation)
    rows are whole (``eval_mode="whole"``) or cut to their first ``max_length`` samples (``"crop"``).
    Batches are float32 :class:`Padded` with the valid-sample mask.
    """

    def __init__(self, name: str, shards: Sequence[tuple[np.ndarray, np.ndarray]], shard: np.ndarray,
                 clip: np.ndarray, max_length: int | None = None, eval_mode: str = "whole",
                 meta: Mapping[str, Any] | None = None) -> None:
        if eval_mode not in ("whole", "crop"):
            raise ValueError(f"waveform input {name!r}: eval_mode must be whole or crop, got {eval_mode!r}")
        self.shards = tuple(shards)
        self.shard, self.clip = np.asarray(shard, dtype=np.int64), np.asarray(clip, dtype=np.int64)
        if self.shard.shape != self.clip.shape or (len(self.shard) and (
                self.shard.min() < 0 or self.shard.max() >= len(self.shards) or self.clip.min() < 0)):
            raise ValueError(f"waveform input {name!r}: every row needs a clip of one of {len(self.shards)} shards")
        self.eval_mode = eval_mode
        self.spec = InputSpec(name, "waveform", max_length=max_length, sample_rate=SAMPLE_RATE,
                              meta={"eval": eval_mode, **dict(meta or {})})

    def __len__(self) -> int:
        return len(self.shard)

    def bounds(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start, stop) sample offsets of ``rows`` in their shards."""
        rows = np.asarray(rows, dtype=np.int64)
        start = np.empty(len(rows), dtype=np.int64)
        stop = np.empty(len(rows), dtype=np.int64)
        for s, (_, offsets) in enumerate(self.shards):
            here = self.shard[rows] == s
            c = self.clip[rows][here]
            start[here], stop[here] = offsets[c], offsets[c + 1]
        return start, stop

    @property
    def lengths(self) -> np.ndarray:
        """Samples per row (whole clips)."""
        start, stop = self.bounds(np.arange(len(self)))
        return stop - start

    def take(self, rows: np.ndarray, rng: np.random.Generator | None = None) -> Padded:
        rows = np.asarray(rows, dtype=np.int64)
        cap = self.spec.max_length
        if rng is None and self.eval_mode == "whole":
            cap = None
        start, stop = self.bounds(rows)
        parts = []
        for r, a, b in zip(rows, start, stop, strict=True):
            a, b = int(a), int(b)
            if cap is not None and b - a > cap:
                a += int(rng.integers(0, b - a - cap + 1)) if rng is not None else 0
                b = a + cap
            # a float32 copy: the shard may be a read-only memory map, or float16
            parts.append(np.array(self.shards[self.shard[r]][0][a:b], dtype=np.float32))
        length = max((len(p) for p in parts), default=0)
        values, mask = _pad(parts, max(length, 1), _float32())
        return Padded(values, mask)

    def subset(self, rows: np.ndarray) -> WaveformStore:
        """The store of dataset rows ``rows`` (a view: the samples are shared, not copied)."""
        rows = np.asarray(rows, dtype=np.int64)
        meta = {k: v for k, v in self.spec.meta.items() if k != "eval"}
        return WaveformStore(self.spec.name, self.shards, self.shard[rows], self.clip[rows], self.spec.max_length,
                             self.eval_mode, meta)


def _float32():
    import torch

    return torch.float32


class RowTokenStore(TokenStore):
    """A :class:`~fairray.inputs.TokenStore` that can be subset by dataset rows (:meth:`subset`)."""

    def row(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    def subset(self, rows: np.ndarray) -> RowTokenStore:
        s = self.spec
        return RowTokenStore(s.name, [self.row(int(r)) for r in np.asarray(rows, dtype=np.int64)], s.vocab_size,
                             s.pad_id, s.max_length, s.meta)


def subset_inputs(stores: Mapping[str, InputStore], rows: np.ndarray) -> dict[str, InputStore]:
    """Every store restricted to dataset rows ``rows`` (a boolean mask or indices), in that order."""
    rows = np.asarray(rows)
    if rows.dtype == bool:
        rows = np.flatnonzero(rows)
    return {name: store.subset(rows) for name, store in stores.items()}


# -- tokens ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenizerFacts:
    """What a tokenizer folder gives a tokens input spec: vocabulary size, pad id and a content digest."""

    folder: str
    vocab_size: int
    pad_id: int
    digest: str


def _tokenizer_dir(folder: str) -> Path:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DataError(f"tokenizer folder {path} does not exist; give a local folder holding a Hugging Face "
                        "tokenizer (save one with tokenizer.save_pretrained(folder); nothing is downloaded)")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise DataError(f"tokenizer folder {path} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                        "save one there with tokenizer.save_pretrained(folder)")
    return path.resolve()


@functools.lru_cache(maxsize=8)
def _load_tokenizer(folder: str, stamp: tuple) -> Any:
    from fairray.data.features._base import hf_offline, require

    hf_offline()
    transformers = require("transformers", "a tokens input")
    try:
        return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"tokenizer folder {folder}: AutoTokenizer could not load it "
                        f"({str(exc).strip().splitlines()[0]})") from None


def load_tokenizer(folder: str) -> Any:
    """The tokenizer saved in ``folder`` (offline, local files only; loaded once per process and folder state)."""
    path = _tokenizer_dir(folder)
    return _load_tokenizer(str(path), _stamp(path))


def tokenizer_facts(folder: str) -> TokenizerFacts:
    """Vocabulary size (``len(tokenizer)``: added tokens included), pad id and digest of a tokenizer folder."""
    tokenizer = load_tokenizer(folder)
    pad = tokenizer.pad_token_id
    if pad is None:
        raise DataError(f"tokenizer folder {folder}: the tokenizer has no pad token; set one "
                        "(tokenizer.pad_token = tokenizer.eos_token) and save it again")
    path = _tokenizer_dir(folder)
    return TokenizerFacts(str(path), int(len(tokenizer)), int(pad), _tokenizer_digest(str(path), _stamp(path)))


def _stamp(path: Path) -> tuple:
    """Names, sizes and mtimes of a folder's files: a loaded tokenizer is reused while they stay the same."""
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file()))


@functools.lru_cache(maxsize=8)
def _tokenizer_digest(folder: str, stamp: tuple) -> str:
    """sha256 of the tokenizer's own files in ``folder`` (not the model weights that may share it)."""
    path = Path(folder)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file() and p.suffix not in WEIGHT_SUFFIXES):
        digest.update(f"{f.name}:".encode())
        digest.update(hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()


def transcripts(table: pd.DataFrame, column: str) -> list[str | None]:
    """The stripped transcript of every row (None where it is empty or missing)."""
    return [t.strip() if isinstance(t, str) and t.strip() else None for t in table[column]]


def tokenize(texts: Sequence[str], folder: str, max_length: int) -> list[list[int]]:
    """Token ids of each text (special tokens added, truncated to ``max_length``)."""
    tokenizer = load_tokenizer(folder)
    ids: list[list[int]] = []
    for start in range(0, len(texts), 1024):
        ids += tokenizer(list(texts[start:start + 1024]), truncation=True, max_length=max_length,
                         add_special_tokens=True)["input_ids"]
    return ids


# -- what the spec declares ----------------------------------------------------------------------------

def declared_specs(cfg: DatasetConfig) -> dict[str, InputSpec]:
    """The specs of ``cfg.inputs`` known before any data is read (tokens: vocabulary size and pad id from the
    tokenizer folder)."""
    specs: dict[str, InputSpec] = {}
    for name, icfg in cfg.inputs.items():
        specs[name] = input_spec(name, icfg)
    return specs


def input_spec(name: str, icfg: InputConfig) -> InputSpec:
    if icfg.kind == "waveform":
        cap = None if icfg.max_seconds is None else int(round(icfg.max_seconds * SAMPLE_RATE))
        return InputSpec(name, "waveform", max_length=cap, sample_rate=SAMPLE_RATE,
                         meta={"eval": icfg.eval_mode, "dtype": icfg.sample_dtype})
    facts = tokenizer_facts(icfg.tokenizer)
    return InputSpec(name, "tokens", max_length=icfg.token_limit, vocab_size=facts.vocab_size, pad_id=facts.pad_id,
                     meta={"tokenizer": facts.folder, "tokenizer_digest": facts.digest, "column": icfg.text_column})


# -- building ----------------------------------------------------------------------------------------

@dataclass
class CorpusInputs:
    """Per corpus source: its waveform entries (by input name) and their cache keys."""

    waveforms: dict[str, Any]
    keys: list[str]


def decode_waveforms(cfg: DatasetConfig, cache: Any, table: pd.DataFrame, root: str) -> CorpusInputs:
    """Decode (or read from the cache) the clips of one corpus table for every waveform input."""
    from fairray.data.features._waveforms import WaveformCache

    out: dict[str, Any] = {}
    keys = []
    waveform_cache = None
    for name, icfg in cfg.inputs.items():
        if icfg.kind != "waveform":
            continue
        waveform_cache = waveform_cache or WaveformCache(cache)
        cached = waveform_cache.get_or_decode(table, root, dtype=icfg.sample_dtype,
                                              num_workers=cfg.extract_workers)
        if cached.report.skipped:
            log.warning("%s: waveforms: %s", root, cached.report.format())
        out[name] = cached
        keys.append(cached.key)
    return CorpusInputs(out, keys)


def build_inputs(cfg: DatasetConfig, tables: Sequence[pd.DataFrame], decoded: Sequence[CorpusInputs]
                 ) -> tuple[dict[str, InputStore], list[str]]:
    """One store per ``cfg.inputs`` name over the concatenated ``tables`` (rows in their order) and the keys
    that fingerprint them. Every row must have its clip (the caller keeps only rows decoded everywhere)."""
    stores: dict[str, InputStore] = {}
    keys: list[str] = []
    meta = pd.concat(list(tables), ignore_index=True) if tables else pd.DataFrame()
    for name, icfg in cfg.inputs.items():
        spec = input_spec(name, icfg)
        if icfg.kind == "waveform":
            shards, shard, clip = [], [], []
            for s, (table, corpus) in enumerate(zip(tables, decoded, strict=True)):
                cached = corpus.waveforms[name]
                c = cached.clips(table["uid"].astype(str).to_numpy())
                if (c < 0).any():
                    raise DataError(f"input {name!r}: uid {table['uid'].iloc[int(np.flatnonzero(c < 0)[0])]!r} has "
                                    "no decoded waveform (a bug: rows without audio should have been left out)")
                shards.append((cached.samples, cached.offsets))
                shard.append(np.full(len(c), s, dtype=np.int64))
                clip.append(c)
            stores[name] = WaveformStore(name, shards, np.concatenate(shard) if shard else np.zeros(0, np.int64),
                                         np.concatenate(clip) if clip else np.zeros(0, np.int64),
                                         spec.max_length, icfg.eval_mode, {"dtype": icfg.sample_dtype})
        else:
            texts = transcripts(meta, icfg.text_column)
            if any(t is None for t in texts):
                raise DataError(f"input {name!r}: rows without a transcript should have been left out (a bug)")
            ids = tokenize(texts, icfg.tokenizer, icfg.token_limit)
            stores[name] = RowTokenStore(name, ids, spec.vocab_size, spec.pad_id, spec.max_length, spec.meta)
            keys.append(f"tokens:{spec.meta['tokenizer_digest']}:{icfg.token_limit}:{icfg.text_column}")
    return stores, keys


def rows_with_transcripts(cfg: DatasetConfig, table: pd.DataFrame, source: str) -> np.ndarray:
    """Mask of the rows that have every transcript a tokens input reads; the rest are left out and counted
    in one warning (never a silently shorter dataset). A missing column is a :class:`DataError`."""
    keep = np.ones(len(table), dtype=bool)
    for name, icfg in cfg.inputs.items():
        if icfg.kind != "tokens":
            continue
        if icfg.text_column not in table.columns:
            raise DataError(f"{source}: input {name!r} reads the transcript column {icfg.text_column!r}, which this "
                            f"corpus table lacks; columns: {list(table.columns)}")
        has = np.array([t is not None for t in transcripts(table, icfg.text_column)], dtype=bool)
        if not has.all():
            first = table["uid"].iloc[int(np.flatnonzero(~has)[0])]
            log.warning("%s: %d of %d utterances have no transcript (%r, first %r) and are left out", source,
                        int((~has).sum()), len(table), icfg.text_column, first)
        keep &= has
    return keep


def dialogue_context(meta: pd.DataFrame) -> np.ndarray | None:
    """``[N, 3]`` int64 dialogue, position and speaker codes (-1 unknown) when the table has dialogues
    (``dialogue_id`` and ``utt_pos`` columns: MELD, MELD-ST, IEMOCAP), else None. Dialogue codes are per
    (corpus, dialogue id); positions are the utterance's 0-based turn index."""
    if "dialogue_id" not in meta.columns or "utt_pos" not in meta.columns:
        return None
    corpus = meta["corpus"].astype(str) if "corpus" in meta.columns else pd.Series("", index=meta.index)
    dialogue = meta["dialogue_id"]
    known = dialogue.notna() & (dialogue.astype(str) != "")
    codes, _ = pd.factorize(corpus + "\x1f" + dialogue.astype(str))
    position = pd.to_numeric(meta["utt_pos"], errors="coerce")
    speaker, _ = pd.factorize(meta["speaker"].astype(str))
    return np.stack([np.where(known, codes, -1), np.where(position.notna() & known, position.fillna(-1), -1),
                     speaker], axis=1).astype(np.int64)


# -- load-time checks ----------------------------------------------------------------------------------

def transcript_corpora() -> list[str]:
    """Registered adapters whose tables carry transcripts (what a tokens input reads)."""
    from fairray.data.corpora import CORPORA

    return [name for name in CORPORA if CORPORA.get(name).transcripts]


def missing_transcripts(adapter: str, root: str, column: str) -> str | None:
    """Why corpus ``adapter`` at ``root`` has no transcripts in ``column`` for a tokens input, or None when it
    has them (or when only reading the corpus can tell: the rows without one are then left out and counted).

    Adapters declare it (``CorpusAdapter.transcripts``); a manifest is judged by its header and ``corpus``
    column: rows of a registered acted corpus (RAVDESS, CREMA-D, EmoDB, nEMO) hold scripted sentences."""
    from fairray.data.corpora import CORPORA

    declared = CORPORA.get(adapter).transcripts
    scripted = "acted corpora speak a few scripted sentences in every emotion, so their text is no transcript"
    if declared is True:
        return None
    if declared is False:
        return f"corpus adapter {adapter!r} has no transcripts ({scripted})"
    manifest = Path(root) / "manifest.csv"
    if not manifest.is_file():
        return None  # reading the corpus names the missing file
    try:
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None
    if column not in table.columns or not table[column].str.strip().astype(bool).any():
        return f"{manifest} has no {column!r} column with text"
    names = set(table["corpus"].str.strip()) if "corpus" in table.columns else {Path(root).resolve().name}
    acted = sorted(n for n in names if n in CORPORA and CORPORA.get(n).transcripts is False)
    if acted:
        return f"{manifest} holds {', '.join(map(repr, acted))} rows ({scripted})"
    return None
