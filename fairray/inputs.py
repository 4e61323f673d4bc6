"""The inputs contract between datasets, models and the training loop (a leaf: imports nothing of fairray).

A dataset exposes **named inputs**, each of one kind:

========== ======================================== =====================================================
kind       stored per row                           a batch of rows (:meth:`InputStore.take`)
========== ======================================== =====================================================
vector     ``[D]`` fixed features (today's ``X``)   ``Tensor [B, D]``
sequence   ``[T_i, D]`` frames (SSL hidden states,  :class:`Padded` ``values [B, T, D]``, ``mask [B, T]``
           eGeMAPS low-level descriptors)
waveform   ``[S_i]`` 16 kHz mono samples            :class:`Padded` ``values [B, S]``, ``mask [B, S]``;
                                                    cropped (random in training, from the start
                                                    otherwise) or padded to ``max_length`` samples
tokens     ``[L_i]`` token ids (transcripts)        :class:`Padded` ``values [B, L]`` (int64, pad id),
                                                    ``mask [B, L]`` (the attention mask)
========== ======================================== =====================================================

:class:`InputSpec` describes an input without its data; model plugins are built from the specs and say
which kinds they accept. Dialogue corpora add each utterance's :class:`DialogueContext` (dialogue id,
position, speaker), which a context model or a graph method reads from the batch.

A :class:`Batch` carries the mapping ``name -> Tensor | Padded`` (``batch.inputs``), the labels and group
codes, and moves to a device in one call (:meth:`Batch.to`). ``batch.x`` is the one vector input, so
methods written against a feature matrix stay short.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np
import torch

Kind = Literal["vector", "sequence", "waveform", "tokens"]
KINDS: tuple[str, ...] = ("vector", "sequence", "waveform", "tokens")
#: The name of the vector input of a feature-matrix dataset (``SERData.X``).
FEATURES = "features"
#: Sample rate of every waveform input.
SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class InputSpec:
    """One named input without its data: what a model plugin is built from.

    ``dim``: features per row (vector) or per frame (sequence); None for waveform and tokens, and for
    inputs declared before the data is prepared (when a spec is loaded).
    ``max_length``: frames (sequence), samples (waveform) or tokens a batch is cropped to; None = the
    longest row of the batch. ``vocab_size`` / ``pad_id``: tokens only. ``meta``: what the producer knows
    about the layout (e.g. ``{"n_layers": 13}`` for stacked SSL layers), read by models that need it.
    """

    name: str
    kind: Kind
    dim: int | None = None
    max_length: int | None = None
    sample_rate: int | None = None
    vocab_size: int | None = None
    pad_id: int = 0
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"input {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind in ("vector", "sequence") and self.dim is not None and self.dim < 1:
            raise ValueError(f"input {self.name!r} ({self.kind}) needs dim >= 1 (None: not known yet), got {self.dim!r}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"input {self.name!r}: max_length must be >= 1 or None, got {self.max_length!r}")

    def describe(self) -> str:
        """``features: vector[88]``, ``audio: waveform[16 kHz, <= 48000]`` (one line, for errors and listings)."""
        dim = "?" if self.dim is None else self.dim
        detail = {"vector": f"[{dim}]", "sequence": f"[T x {dim}]",
                  "waveform": f"[{(self.sample_rate or SAMPLE_RATE) // 1000} kHz]", "tokens": "[ids]"}[self.kind]
        cap = f" <= {self.max_length}" if self.max_length else ""
        return f"{self.name}: {self.kind}{detail}{cap}"


@dataclass(frozen=True)
class Padded:
    """A padded batch of variable-length rows: ``values [B, T, ...]`` and ``mask [B, T]`` (True = valid)."""

    values: torch.Tensor
    mask: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """Valid positions per row ``[B]`` (int64)."""
        return self.mask.sum(dim=1)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Padded:
        return Padded(self.values.to(device, non_blocking=non_blocking),
                      self.mask.to(device, non_blocking=non_blocking))

    def __len__(self) -> int:
        return int(self.values.shape[0])


InputTensor = torch.Tensor | Padded


@dataclass(frozen=True)
class DialogueContext:
    """Where each utterance of a batch sits in its dialogue: dialogue code, position (0-based turn index)
    and speaker code, all ``[B]`` int64 (-1 = unknown). Context models and graph methods group by them."""

    dialogue: torch.Tensor
    position: torch.Tensor
    speaker: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DialogueContext:
        return DialogueContext(*(t.to(device, non_blocking=non_blocking) for t in
                                 (self.dialogue, self.position, self.speaker)))


def _to(value: Any, device: torch.device | str, non_blocking: bool) -> Any:
    return value if value is None else value.to(device, non_blocking=non_blocking)


@dataclass(frozen=True, kw_only=True)
class Batch:
    """One batch: the named inputs, labels, true attribute and stratum codes (-1 = unknown), the *training*
    group of each sample (from the spec's group source: the true attribute, or inferred groups) with its
    soft memberships, dataset row indices (for per-sample state such as EMA tables) and the training
    targets.

    ``inputs`` maps input names to a ``Tensor`` (vector) or a :class:`Padded` batch (sequence, waveform,
    tokens); models take this mapping. ``x=`` builds a batch with one vector input named
    :data:`FEATURES` (``Batch(x=X, y=...)``), and :attr:`x` reads the one vector input back.

    ``target`` float ``[B, C]`` is what base losses train on (``SERData.soft``): the one-hot of ``y`` for
    single-label data, the rater-vote soft labels for multi-label data (``y`` is then their argmax, used
    by samplers, class x group cells and class-wise normalisation only). None means the one-hot of ``y``;
    :attr:`loss_target` gives the right one.
    """

    y: torch.Tensor
    attr: torch.Tensor
    stratum: torch.Tensor
    index: torch.Tensor
    group: torch.Tensor
    group_prob: torch.Tensor
    target: torch.Tensor | None = None
    inputs: Mapping[str, InputTensor] = field(default_factory=dict)
    context: DialogueContext | None = None
    x: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.x is not None:
            if not self.inputs:
                object.__setattr__(self, "inputs", {FEATURES: self.x})
            elif not any(v is self.x for v in self.inputs.values()):  # dataclasses.replace passes both
                raise ValueError("Batch: pass either x= (one vector input) or inputs=, not both")
        else:
            vectors = [v for v in self.inputs.values() if isinstance(v, torch.Tensor)]
            object.__setattr__(self, "x", vectors[0] if len(vectors) == 1 else None)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def loss_target(self) -> torch.Tensor:
        """What losses take: the soft targets ``[B, C]`` (float), or the integer labels ``[B]`` when there are
        none; base losses, ``gce`` and ``cross_entropy`` accept both."""
        return self.y if self.target is None else self.target

    @property
    def device(self) -> torch.device:
        return self.y.device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch on ``device`` (inputs, labels, groups, targets and context), in one call."""
        if torch.device(device) == self.y.device:
            return self
        moved = {f.name: _to(getattr(self, f.name), device, non_blocking)
                 for f in fields(self) if f.name not in ("inputs", "x", "context")}
        return Batch(**moved, inputs={k: v.to(device, non_blocking=non_blocking) for k, v in self.inputs.items()},
                     context=_to(self.context, device, non_blocking))

    def labels_only(self) -> Batch:
        """This batch without its inputs (what ``on_epoch_end`` sees of a whole split)."""
        return replace(self, inputs={}, x=None)


def _pad(rows: Sequence[np.ndarray], length: int, dtype: torch.dtype, pad_value: float = 0.0,
         frame: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` padded to ``length`` positions of shape ``frame`` (``()`` for samples and tokens)."""
    values = torch.full((len(rows), length, *frame), pad_value, dtype=dtype)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, row in enumerate(rows):
        n = min(len(row), length)
        values[i, :n] = torch.as_tensor(row[:n])
        mask[i, :n] = True
    return values, mask


class InputStore:
    """The data of one named input for every dataset row; :meth:`take` gives a batch of rows.

    Subclasses: :class:`VectorStore`, :class:`SequenceStore` (sequence and waveform), :class:`TokenStore`.
    ``rng`` is given in training (random crops); evaluation passes None (deterministic crops).
    """

    spec: InputSpec

    def __len__(self) -> int:
        raise NotImplementedError

    def take(self, rows: np.ndarray, rng: np.random.Generator | None = None) -> InputTensor:
        raise NotImplementedError


class VectorStore(InputStore):
    """A dense ``[N, D]`` float matrix (a shared, read-only array: no copy is made)."""

    def __init__(self, name: str, X: np.ndarray, meta: Mapping[str, Any] | None = None) -> None:
        if X.ndim != 2:
            raise ValueError(f"vector input {name!r} needs a 2-d array [rows, dim], got shape {X.shape}")
        self.X = X
        self.spec = InputSpec(name, "vector", dim=int(X.shape[1]), meta=dict(meta or {}))

    def __len__(self) -> int:
        return len(self.X)

    def take(self, rows: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        return torch.as_tensor(self.X[rows])


class SequenceStore(InputStore):
    """Variable-length rows kept as one flat array and offsets (``values[offsets[i]:offsets[i+1]]``).

    ``kind="sequence"``: flat ``[sum T_i, D]`` frames; ``kind="waveform"``: flat ``[sum S_i]`` samples at
    :data:`SAMPLE_RATE`. A row longer than ``max_length`` is cropped: at a random offset when ``take`` gets
    an ``rng`` (training), from its start otherwise; shorter rows are zero-padded and masked.
    """

    def __init__(self, name: str, kind: Kind, flat: np.ndarray, offsets: np.ndarray, max_length: int | None = None,
                 meta: Mapping[str, Any] | None = None) -> None:
        if kind not in ("sequence", "waveform"):
            raise ValueError(f"input {name!r}: SequenceStore holds sequence or waveform inputs, not {kind!r}")
        offsets = np.asarray(offsets, dtype=np.int64)
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(flat) \
                or (np.diff(offsets) < 0).any():
            raise ValueError(f"input {name!r}: offsets must rise from 0 to len(flat)={len(flat)}")
        if kind == "sequence" and flat.ndim != 2:
            raise ValueError(f"sequence input {name!r} needs flat frames [sum T, dim], got shape {flat.shape}")
        if kind == "waveform" and flat.ndim != 1:
            raise ValueError(f"waveform input {name!r} needs flat samples [sum S], got shape {flat.shape}")
        self.flat, self.offsets = flat, offsets
        self.spec = InputSpec(name, kind, dim=int(flat.shape[1]) if kind == "sequence" else None,
                              max_length=max_length, sample_rate=SAMPLE_RATE if kind == "waveform" else None,
                              meta=dict(meta or {}))

    @classmethod
    def from_rows(cls, name: str, kind: Kind, rows: Sequence[np.ndarray], max_length: int | None = None,
                  meta: Mapping[str, Any] | None = None) -> SequenceStore:
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        flat = np.concatenate(rows) if len(rows) else np.zeros((0,), dtype=np.float32)
        return cls(name, kind, np.ascontiguousarray(flat, dtype=np.float32), np.concatenate([[0], np.cumsum(lengths)]),
                   max_length=max_length, meta=meta)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def take(self, rows: np.ndarray, rng: np.random.Generator | None = None) -> Padded:
        cap = self.spec.max_length
        parts = []
        for r in np.asarray(rows, dtype=np.int64):
            start, stop = int(self.offsets[r]), int(self.offsets[r + 1])
            if cap is not None and stop - start > cap:
                shift = int(rng.integers(0, stop - start - cap + 1)) if rng is not None else 0
                start += shift
                stop = start + cap
            parts.append(self.flat[start:stop])
        length = max((len(p) for p in parts), default=0)
        values, mask = _pad(parts, max(length, 1), torch.float32, frame=tuple(self.flat.shape[1:]))
        return Padded(values, mask)


class TokenStore(InputStore):
    """Token ids per row (ragged, flat + offsets), padded with ``pad_id``; ``mask`` is the attention mask.
    Rows longer than ``max_length`` keep their first ``max_length`` tokens."""

    def __init__(self, name: str, ids: Sequence[Sequence[int]], vocab_size: int, pad_id: int = 0,
                 max_length: int | None = None, meta: Mapping[str, Any] | None = None) -> None:
        lengths = np.array([len(r) for r in ids], dtype=np.int64)
        self.flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in ids]) if len(ids) else np.zeros(0, np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        if len(self.flat) and (self.flat.min() < 0 or self.flat.max() >= vocab_size):
            raise ValueError(f"tokens input {name!r}: ids must lie in 0..{vocab_size - 1}")
        self.spec = InputSpec(name, "tokens", max_length=max_length, vocab_size=vocab_size, pad_id=pad_id,
                              meta=dict(meta or {}))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def take(self, rows: np.ndarray, rng: np.random.Generator | None = None) -> Padded:
        cap = self.spec.max_length
        parts = [self.flat[self.offsets[r]:self.offsets[r + 1]][:cap] for r in np.asarray(rows, dtype=np.int64)]
        length = max((len(p) for p in parts), default=0)
        values, mask = _pad(parts, max(length, 1), torch.int64, pad_value=self.spec.pad_id)
        return Padded(values, mask)


def specs_of(stores: Mapping[str, InputStore]) -> dict[str, InputSpec]:
    """``name -> InputSpec`` of a dataset's input stores."""
    return {name: store.spec for name, store in stores.items()}


def take_inputs(stores: Mapping[str, InputStore], rows: np.ndarray, rng: np.random.Generator | None = None
                ) -> dict[str, InputTensor]:
    """One batch of every input (``rng``: random crops in training, None for evaluation)."""
    return {name: store.take(rows, rng) for name, store in stores.items()}
