"""Robust audio loading: every file is decoded to 16 kHz float32 mono, or skipped with a stated reason.

Two entry points:

* :func:`load_audio` is strict: it returns the signal or raises :class:`~fairray.errors.DataError`.
* :func:`scan_audio` (and :func:`load_checked`, which the feature cache calls per clip) never raises
  for a bad file: each utterance of a table is ``ok``, ``resampled`` (native rate differed) or
  ``skipped`` with a reason, and :class:`AudioReport` lists every skipped uid, so a dataset never
  becomes silently shorter.

Decoding is soundfile's (libsndfile: WAV, FLAC, OGG, MP3); channels are averaged; other rates are
resampled once with :func:`torchaudio.functional.resample` (band-limited sinc interpolation, Hann
window; :data:`RESAMPLER` names it in every cache key).

>>> report = scan_audio(table, root)                 # doctest: +SKIP
>>> print(report.format())                           # doctest: +SKIP
1440 clips: 1440 ok, 0 resampled, 0 skipped
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import asdict, dataclass
from math import gcd
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from fairray.errors import DataError

#: Rate every extractor receives.
TARGET_SR = 16000
#: The resampler (part of every cache key: another resampler gives other samples).
RESAMPLER = "torchaudio.functional.resample/sinc_interp_hann"

#: A clip whose absolute peak is below this (−80 dBFS; the 16-bit quantisation step is ≈ −90 dBFS)
#: holds no signal: it is skipped as ``silent``.
SILENCE_PEAK = 1e-4
#: Clips shorter than this (after resampling) are skipped as ``too short``: no extractor yields a
#: meaningful summary of less than a tenth of a second.
MIN_DURATION_S = 0.1

Status = Literal["ok", "resampled", "skipped"]
STATUSES: tuple[Status, ...] = ("ok", "resampled", "skipped")


class _Unreadable(Exception):
    """The file cannot be decoded; the message is the reason shown in the report."""


@dataclass(frozen=True)
class AudioEntry:
    """The verdict on one utterance: ``status``, and for ``skipped`` (or ``resampled``) the reason."""

    uid: str
    status: Status
    reason: str = ""
    sample_rate: int | None = None  # native rate of the file, when readable
    duration_s: float | None = None  # after resampling, when readable

    @property
    def kept(self) -> bool:
        return self.status != "skipped"


@dataclass(frozen=True)
class AudioReport:
    """Per-utterance verdicts in table order; :meth:`format` prints the summary and every skipped uid."""

    entries: tuple[AudioEntry, ...]

    @property
    def ok_mask(self) -> np.ndarray:
        """Boolean [n]: True for utterances that were decoded (``ok`` or ``resampled``)."""
        return np.array([e.kept for e in self.entries], dtype=bool)

    @property
    def skipped(self) -> list[AudioEntry]:
        return [e for e in self.entries if e.status == "skipped"]

    def counts(self) -> dict[str, int]:
        counted = Counter(e.status for e in self.entries)
        return {status: counted.get(status, 0) for status in STATUSES}

    def format(self, max_listed: int | None = None) -> str:
        """Summary line, the native rates that were resampled, then one line per skipped uid."""
        counts = self.counts()
        lines = [f"{len(self.entries)} clips: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES)]
        rates = Counter(e.sample_rate for e in self.entries if e.status == "resampled")
        if rates:
            lines.append("  resampled to 16 kHz from: " + ", ".join(f"{r} Hz ×{k}" for r, k in sorted(rates.items())))
        skipped = self.skipped
        for entry in skipped[:max_listed]:
            lines.append(f"  skipped {entry.uid}: {entry.reason}")
        if max_listed is not None and len(skipped) > max_listed:
            lines.append(f"  ... and {len(skipped) - max_listed} more skipped")
        return "\n".join(lines)

    def to_records(self) -> list[dict]:
        return [asdict(e) for e in self.entries]

    @classmethod
    def from_records(cls, records: list[dict]) -> AudioReport:
        return cls(tuple(AudioEntry(**r) for r in records))


def resample(signal: np.ndarray, sr: int, target_sr: int = TARGET_SR) -> np.ndarray:
    """``sr`` → ``target_sr`` with torchaudio's band-limited sinc resampler (identity when equal); float32 out."""
    if sr == target_sr:
        return signal.astype(np.float32, copy=False)
    import torch
    import torchaudio.functional as taf

    g = gcd(int(sr), int(target_sr))
    with torch.no_grad():
        out = taf.resample(torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32)), int(sr) // g,
                           int(target_sr) // g)
    return out.numpy()


def _wav_truncation(path: Path) -> str | None:
    """For a RIFF/WAVE file whose ``data`` chunk declares more bytes than the file holds, the reason.

    libsndfile silently shortens such files to what is present; a cut-off download must not pass
    as a shorter clip. Streaming writers' placeholder sizes (0, 0xFFFFFFFF) are not judged.
    """
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        endian = "<" if head[:4] == b"RIFF" else ">"
        size = os.fstat(fh.fileno()).st_size
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            chunk_id, chunk_len = struct.unpack(endian + "4sI", fh.read(8))
            if chunk_id == b"data":
                if chunk_len in (0, 0xFFFFFFFF):
                    return None
                available = size - pos - 8
                if chunk_len > available:
                    return f"corrupt: truncated WAV (data chunk declares {chunk_len} bytes, file holds {available})"
                return None
            pos += 8 + chunk_len + (chunk_len & 1)
    return None


def _read(path: Path) -> tuple[np.ndarray, int]:
    """Decode to float32 mono at the native rate; :class:`_Unreadable` with the reason otherwise."""
    import soundfile as sf

    if not path.is_file():
        raise _Unreadable("missing file")
    if path.stat().st_size == 0:
        raise _Unreadable("empty: zero-byte file")
    try:
        info = sf.info(str(path))
        signal, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _Unreadable(f"unreadable: {str(exc).strip().splitlines()[0]}") from None
    truncated = _wav_truncation(path)
    if truncated:
        raise _Unreadable(truncated)
    # MP3 frame counts are estimates unless a Xing header gives them, so the check is for the other formats.
    if info.format != "MP3" and 0 < signal.shape[0] < info.frames:
        raise _Unreadable(f"corrupt: truncated (decoded {signal.shape[0]} of {info.frames} frames)")
    if signal.shape[0] == 0:
        raise _Unreadable("empty: no audio frames")
    if not np.isfinite(signal).all():
        raise _Unreadable("corrupt: non-finite samples")
    return signal.mean(axis=1), int(sr)


def load_audio(path: str | os.PathLike, target_sr: int = TARGET_SR) -> np.ndarray:
    """Decode ``path`` to float32 mono at ``target_sr``; :class:`DataError` naming the file if impossible."""
    try:
        signal, sr = _read(Path(path))
    except _Unreadable as exc:
        raise DataError(f"{path}: {exc}") from None
    return resample(signal, sr, target_sr)


def load_checked(path: str | os.PathLike, uid: str, target_sr: int = TARGET_SR) -> tuple[AudioEntry, np.ndarray | None]:
    """Decode one clip and judge it; never raises for a bad file. Returns the entry and the signal (None if skipped)."""
    try:
        signal, sr = _read(Path(path))
    except _Unreadable as exc:
        return AudioEntry(uid, "skipped", str(exc)), None
    signal = resample(signal, sr, target_sr)
    duration = signal.shape[0] / target_sr
    peak = float(np.abs(signal).max())
    if duration < MIN_DURATION_S:
        return AudioEntry(uid, "skipped", f"too short: {duration:.3f} s < {MIN_DURATION_S} s", sr, duration), None
    if peak < SILENCE_PEAK:
        return AudioEntry(uid, "skipped", f"silent: peak {peak:.1e} < {SILENCE_PEAK:.0e}", sr, duration), None
    if sr != target_sr:
        return AudioEntry(uid, "resampled", f"{sr} Hz -> {target_sr} Hz", sr, duration), signal
    return AudioEntry(uid, "ok", "", sr, duration), signal


def scan_audio(table: pd.DataFrame, root: str | os.PathLike, target_sr: int = TARGET_SR) -> AudioReport:
    """Decode every clip of ``table`` (``uid``, ``path`` relative to ``root``) and report each verdict."""
    missing = [c for c in ("uid", "path") if c not in table.columns]
    if missing:
        raise DataError(f"utterance table: missing column(s) {missing}; scan_audio needs uid and path")
    root = Path(root)
    entries = [load_checked(root / rel, str(uid), target_sr)[0]
               for uid, rel in zip(table["uid"], table["path"], strict=True)]
    return AudioReport(tuple(entries))
