"""The waveform cache: every clip of an utterance table decoded to 16 kHz mono once, read back memory-mapped.

Beside the features under the same cache root, keyed like them by content: sha256 of the table
fingerprint (uid, path, file size and edge digests, see :func:`~fairray.data.features._cache.table_fingerprint`),
the target sample rate, the audio rules that decide which clips are skipped, the sample dtype and the
decoder's version (:data:`DECODER_VERSION` plus the soundfile, libsndfile and torchaudio versions)::

    waveform/<key>.json          # the commit record, written last: sizes, digests, the AudioReport
    waveform/<key>-samples.npy   # every kept clip's samples end to end, float32 or float16, uid order
    waveform/<key>-index.npz     # uids [n] and offsets [n + 1]: clip i is samples[offsets[i]:offsets[i + 1]]
    waveform/<key>.lock          # present while one process decodes

The samples are streamed to a temporary file while clips are decoded (memory holds one chunk of clips,
not the corpus) and moved into place with ``os.replace``; the index and the record follow, the record
last, so a reader sees no entry or a complete one, and an interrupted decode leaves no file behind. A
reader memory-maps the samples (``np.load(mmap_mode="r")``): a large corpus is not read into RAM. A
record whose files are missing, have the wrong size, or fail their digest (the index in full, the
samples' size plus a sha256 of their first and last MiB: hashing gigabytes on every read would cost
more than it protects) is decoded again, never returned.

Local (or mounted) cache folders only: a memory map needs a file on this machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairray._atomic import atomic_write_bytes
from fairray.data import audio
from fairray.data.audio import AudioEntry, AudioReport
from fairray.data.features._cache import CHUNK_CLIPS, FeatureCache, table_fingerprint
from fairray.errors import DataError

#: Bump whenever decoding or resampling changes its output: every cached waveform is then decoded again.
DECODER_VERSION = 2
#: Version of the on-disk layout; part of every key.
WAVEFORM_FORMAT = 1
#: The cache folder (under the cache root) that holds the entries.
FOLDER = "waveform"
DTYPES = ("float32", "float16")
#: Bytes hashed at each end of the samples file for its digest.
_EDGE = 1 << 20


def decoder_identity() -> dict[str, Any]:
    """What determines the decoded samples besides the files: fairray's decoder and its libraries."""
    import soundfile as sf
    import torchaudio

    return {"version": DECODER_VERSION, "soundfile": sf.__version__, "libsndfile": sf.__libsndfile_version__,
            "torchaudio": torchaudio.__version__, "resampler": audio.RESAMPLER}


@dataclass(frozen=True)
class CachedWaveforms:
    """The decoded clips of one table: ``samples`` (flat, memory-mapped), ``offsets`` [n + 1] and ``uids`` [n]
    in uid order, the report (one entry per table row, table order: skipped rows have no samples), the key,
    and whether it came from the cache."""

    samples: np.ndarray
    offsets: np.ndarray
    uids: np.ndarray
    report: AudioReport = field(repr=False)
    key: str
    hit: bool

    def clips(self, uids) -> np.ndarray:
        """Clip index of each uid (int64; -1 for a uid without samples: skipped or not in the table)."""
        uids = np.asarray(uids, dtype=str)
        pos = np.searchsorted(self.uids, uids)
        pos = np.minimum(pos, max(len(self.uids) - 1, 0))
        found = (self.uids[pos] == uids) if len(self.uids) else np.zeros(len(uids), dtype=bool)
        return np.where(found, pos, -1).astype(np.int64)

    @property
    def kept_uids(self) -> set[str]:
        return set(self.uids.tolist())


class WaveformCache:
    """Decode-once store of 16 kHz waveforms in the feature cache's root (its lock and layout rules)."""

    def __init__(self, cache: FeatureCache) -> None:
        if not cache.local:
            raise DataError(f"waveform inputs are memory-mapped from a local cache folder, but the cache is "
                            f"{cache.uri}; set dataset.cache to a local (or mounted) folder")
        self.cache = cache

    def key(self, table: pd.DataFrame, root: str | os.PathLike, dtype: str = "float32") -> str:
        return self._identity(table, root, dtype)[0]

    def get_or_decode(self, table: pd.DataFrame, root: str | os.PathLike, *, dtype: str = "float32",
                      num_workers: int = 1, progress: bool = True,
                      wait_timeout_s: float | None = None) -> CachedWaveforms:
        """The waveforms of every row of ``table`` (``uid``, ``path`` relative to ``root``), from the cache or
        decoded once (``num_workers`` decoding threads) and stored; see the module docstring."""
        if dtype not in DTYPES:
            raise DataError(f"waveform dtype must be one of {DTYPES}, got {dtype!r}")
        missing = [c for c in ("uid", "path") if c not in table.columns]
        if missing:
            raise DataError(f"utterance table: missing column(s) {missing}; waveforms read uid and path")
        dup = table["uid"].astype(str).duplicated()
        if dup.any():
            raise DataError(f"utterance table: uid {table['uid'].iloc[int(np.flatnonzero(dup)[0])]!r} repeats")
        key, identity = self._identity(table, root, dtype)

        def produce():
            return self._decode(key, identity, table, root, dtype, num_workers, progress)

        (samples, offsets, uids, report), hit = self.cache._once(
            FOLDER, key, lambda: self._read(key), produce, wait_timeout_s, "waveform cache")
        by_uid = {e.uid: e for e in report.entries}
        entries = tuple(by_uid[uid] for uid in table["uid"].astype(str))
        return CachedWaveforms(samples, offsets, uids, AudioReport(entries), key, hit)

    # -- key -----------------------------------------------------------------------------------------
    def _identity(self, table: pd.DataFrame, root: str | os.PathLike, dtype: str) -> tuple[str, dict]:
        identity = {
            "format": WAVEFORM_FORMAT, "decoder": decoder_identity(), "sample_rate": audio.TARGET_SR,
            "dtype": dtype,
            "audio_rules": {"silence_peak": audio.SILENCE_PEAK, "min_duration_s": audio.MIN_DURATION_S},
            "table": table_fingerprint(table, root, "audio"), "n": int(len(table)),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest(), identity

    def _file(self, name: str) -> Path:
        return Path(self.cache._path(FOLDER, name))

    # -- read ----------------------------------------------------------------------------------------
    def _read(self, key: str) -> tuple[str, Any]:
        """("absent" | "corrupt" | "ok", (samples, offsets, uids, report) in uid order)."""
        record = self._file(f"{key}.json")
        if not record.is_file():
            return "absent", None
        try:
            meta = json.loads(record.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return "corrupt", None
        if not isinstance(meta, dict) or meta.get("key") != key:
            return "corrupt", None
        samples_file, index_file = self._file(meta["samples"]), self._file(meta["index"])
        try:
            if samples_file.stat().st_size != meta["samples_bytes"] or _edge_digest(samples_file) != meta["samples_edges"]:
                return "corrupt", None
            index_bytes = index_file.read_bytes()
        except OSError:
            return "corrupt", None
        if hashlib.sha256(index_bytes).hexdigest() != meta["index_sha256"]:
            return "corrupt", None
        try:
            with np.load(io.BytesIO(index_bytes), allow_pickle=False) as npz:
                uids, offsets = npz["uids"], npz["offsets"]
            samples = np.load(samples_file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, KeyError, zipfile.BadZipFile):
            return "corrupt", None
        if (samples.ndim != 1 or str(samples.dtype) != meta["dtype"] or len(offsets) != len(uids) + 1
                or int(offsets[-1]) != len(samples) or len(uids) != meta["n_clips"]):
            return "corrupt", None
        return "ok", (samples, offsets.astype(np.int64), uids, AudioReport.from_records(meta["report"]))

    # -- decode and publish ----------------------------------------------------------------------------
    def _decode(self, key: str, identity: dict, table: pd.DataFrame, root: str | os.PathLike, dtype: str,
                num_workers: int, progress: bool) -> tuple:
        from tqdm import tqdm

        t0 = time.perf_counter()
        uids = table["uid"].astype(str).to_numpy()
        order = np.argsort(uids, kind="stable")
        rows = [(uids[i], str(Path(root) / table["path"].astype(str).iloc[i])) for i in order]
        chunks = [rows[i:i + CHUNK_CLIPS] for i in range(0, len(rows), CHUNK_CLIPS)]
        samples_file = self._file(f"{key}-samples.npy")
        samples_file.parent.mkdir(parents=True, exist_ok=True)
        entries: list[AudioEntry] = []
        kept_uids: list[str] = []
        lengths: list[int] = []
        fd, tmp = tempfile.mkstemp(prefix=f".{samples_file.name}.", suffix=".tmp", dir=samples_file.parent)
        bar = tqdm(total=len(rows), desc="waveform", unit="clip", disable=not progress)
        try:
            with os.fdopen(fd, "wb") as fh, ThreadPoolExecutor(max(1, num_workers)) as pool:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                          "shape": (0,)}
                np.lib.format.write_array_header_1_0(fh, header)
                data_start = fh.tell()
                for decoded in pool.map(_decode_chunk, chunks):  # in order: the file follows uid order
                    for entry, signal in decoded:
                        entries.append(entry)
                        if signal is not None:
                            fh.write(np.ascontiguousarray(signal, dtype=dtype).tobytes())
                            kept_uids.append(entry.uid)
                            lengths.append(len(signal))
                    bar.update(len(decoded))
                total = int(sum(lengths))
                fh.seek(0)  # numpy leaves room in the header for the final length (GROWTH_AXIS_MAX_DIGITS)
                np.lib.format.write_array_header_1_0(fh, {**header, "shape": (total,)})
                if fh.tell() != data_start:
                    raise DataError(f"waveform cache: the .npy header of {total} samples does not fit its reserved "
                                    "space (a numpy layout change?)")
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, samples_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        finally:
            bar.close()
        offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
        buf = io.BytesIO()
        np.savez(buf, uids=np.array(kept_uids, dtype=str), offsets=offsets)
        index_bytes = buf.getvalue()
        index_file = self._file(f"{key}-index.npz")
        try:
            atomic_write_bytes(index_file, index_bytes)
            report = AudioReport(tuple(entries))
            meta = {
                "format": WAVEFORM_FORMAT, "key": key, "dtype": dtype, "sample_rate": audio.TARGET_SR,
                "samples": samples_file.name, "samples_bytes": samples_file.stat().st_size,
                "samples_edges": _edge_digest(samples_file), "index": index_file.name,
                "index_sha256": hashlib.sha256(index_bytes).hexdigest(), "n_clips": len(kept_uids),
                "n_samples": int(offsets[-1]), "identity": identity, "report": report.to_records(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "decode_seconds": round(time.perf_counter() - t0, 3),
            }
            atomic_write_bytes(self._file(f"{key}.json"), (json.dumps(meta, indent=1) + "\n").encode())
        except BaseException:  # no record: the data files alone are no entry, remove them
            for f in (samples_file, index_file):
                with contextlib.suppress(OSError):
                    f.unlink()
            raise
        self.cache.stats.extractions += len(kept_uids)
        samples = np.load(samples_file, mmap_mode="r", allow_pickle=False)
        return samples, offsets, np.array(kept_uids, dtype=str), report


def _decode_chunk(rows: list[tuple[str, str]]) -> list[tuple[AudioEntry, np.ndarray | None]]:
    return [audio.load_checked(path, uid) for uid, path in rows]


def _edge_digest(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(_EDGE))
        if size > _EDGE:
            fh.seek(max(_EDGE, size - _EDGE))
            digest.update(fh.read())
    return digest.hexdigest()
