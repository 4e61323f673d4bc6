"""Frame sequences a corpus ships (MOSI / MOSEI's aligned GloVe, COVAREP, FACET steps) as ``sequence`` inputs.

:class:`FrameStore` is a :class:`~fairray.inputs.SequenceStore` that can be subset by dataset rows (the
protocol, the emotion filter and resampling keep every input aligned through ``subset``) and concatenated
across corpora (:func:`concat_frames`). :class:`FrameCache` stores one (corpus source, modality, rows)
entry through the feature cache's rules (:mod:`fairray.data.features._cache`): content-keyed, written once
under an exclusive lock, data first and its JSON record last, each through a temporary file and a rename,
so a reader sees no entry or a complete one; a record whose data fails its checksum is computed again::

    <cache root>/sequences/<key>.json            # the commit record: shape, sha256, identity, lengths summary
    <cache root>/sequences/<key>-<sha12>.npz     # flat frames [sum T_i, D] float32, offsets [n + 1], uids [n]

The key is the sha256 of the corpus adapter, the modality, the source files (path, size and a digest of
their first and last 64 KiB, as the feature cache fingerprints audio), the rows (uid and segment id, in
table order), the options that change the frames (``nonfinite``) and :data:`FRAMES_VERSION`.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairray.errors import DataError
from fairray.inputs import SequenceStore

#: Bump whenever the frames a source gives change (trimming rules, dtype): every entry is then rebuilt.
FRAMES_VERSION = 1
#: The cache folder (under the cache root) that holds the entries.
FOLDER = "sequences"


class FrameStore(SequenceStore):
    """Frames ``[T_i, D]`` per dataset row (flat + offsets), subsettable by rows; rows may have ``T_i = 0``
    (a modality with no valid frame: its batch row is all padding, mask all False)."""

    def __init__(self, name: str, flat: np.ndarray, offsets: np.ndarray, max_length: int | None = None,
                 meta: Mapping[str, Any] | None = None) -> None:
        super().__init__(name, "sequence", flat, offsets, max_length=max_length, meta=meta)

    @classmethod
    def from_frames(cls, name: str, rows: Sequence[np.ndarray], dim: int, meta: Mapping[str, Any] | None = None
                    ) -> FrameStore:
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        flat = (np.concatenate([np.asarray(r, dtype=np.float32).reshape(-1, dim) for r in rows])
                if len(rows) else np.zeros((0, dim), dtype=np.float32))
        return cls(name, np.ascontiguousarray(flat, dtype=np.float32),
                   np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)]), meta=meta)

    def subset(self, rows: np.ndarray) -> FrameStore:
        """The store of dataset rows ``rows`` (indices, in that order): the frames are gathered once."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, stops = self.offsets[rows], self.offsets[rows + 1]
        lengths = stops - starts
        ends = np.cumsum(lengths)
        # one gather: the flat index of every kept frame, row after row
        index = np.repeat(starts - (ends - lengths), lengths) + np.arange(int(ends[-1]) if len(ends) else 0)
        return FrameStore(self.spec.name, self.flat[index], np.concatenate([np.zeros(1, np.int64), ends]),
                          self.spec.max_length, self.spec.meta)


def concat_frames(stores: Sequence[FrameStore]) -> FrameStore:
    """One store over the rows of ``stores`` in order (corpora stacked); their frame widths must agree."""
    first = stores[0]
    dims = {int(s.flat.shape[1]) for s in stores}
    if len(dims) != 1:
        raise DataError(f"sequence input {first.spec.name!r}: the corpora give frames of different widths "
                        f"({sorted(dims)}); stack only corpora whose {first.spec.name} features are the same kind")
    if len(stores) == 1:
        return first
    offsets = [np.asarray(first.offsets)]
    for s in stores[1:]:
        offsets.append(s.offsets[1:] + offsets[-1][-1])
    return FrameStore(first.spec.name, np.concatenate([s.flat for s in stores]), np.concatenate(offsets),
                      first.spec.max_length, first.spec.meta)


def _file_identity(path: Path) -> dict[str, Any]:
    from fairray.data.features._cache import _file_digest

    size, digest = _file_digest(path)
    return {"name": path.name, "size": size, "digest": digest}


class FrameCache:
    """Content-keyed, write-once frames of one corpus source per modality (see the module docstring), on the
    feature cache's storage (a local folder or a ``pyarrow.fs`` URI) with its lock."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache  # a FeatureCache: its storage, atomic puts and exclusive-lock protocol
        self.hits = 0
        self.misses = 0

    @staticmethod
    def identity(adapter: str, modality: str, sources: Sequence[Path], table: pd.DataFrame,
                 options: Mapping[str, Any]) -> tuple[str, dict]:
        rows = hashlib.sha256()
        for uid, segment in zip(table["uid"].astype(str), table["segment_id"].astype(str), strict=True):
            rows.update(f"{uid}\t{segment}\n".encode())
        identity = {"version": FRAMES_VERSION, "adapter": adapter, "modality": modality,
                    "sources": [_file_identity(Path(p)) for p in sources], "rows": rows.hexdigest(),
                    "n": int(len(table)), "options": dict(options)}
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest(), identity

    def get_or_read(self, name: str, key: str, identity: dict, read: Callable[[], tuple[list[np.ndarray], int]],
                    uids: np.ndarray, meta: Mapping[str, Any] | None = None) -> FrameStore:
        """The frames of entry ``key`` (rows in ``uids`` order), or ``read()`` them — ``(per-row [T_i, D]
        arrays, D)`` — once, publish them and return them. ``name`` is the input's name."""
        c = self.cache

        def produce() -> tuple[np.ndarray, np.ndarray]:
            t0 = time.perf_counter()
            rows, dim = read()
            store = FrameStore.from_frames(name, rows, dim)
            self._publish(key, identity, store.flat, store.offsets, uids, time.perf_counter() - t0)
            return store.flat, store.offsets

        (flat, offsets), hit = c._once(FOLDER, key, lambda: self._read(key, uids), produce, None, "sequence cache")
        self.hits += hit
        self.misses += not hit
        return FrameStore(name, flat, offsets, meta=meta)

    def _read(self, key: str, uids: np.ndarray) -> tuple[str, Any]:
        c = self.cache
        raw = c._get(c._path(FOLDER, f"{key}.json"))
        if raw is None:
            return "absent", None
        try:
            record = json.loads(raw)
        except ValueError:
            return "corrupt", None
        data = c._get(c._path(FOLDER, str(record.get("data"))))
        if (record.get("key") != key or data is None or len(data) != record.get("bytes")
                or hashlib.sha256(data).hexdigest() != record.get("sha256")):
            return "corrupt", None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                flat, offsets, stored = npz["flat"], npz["offsets"], npz["uids"]
        except (ValueError, OSError, KeyError, zipfile.BadZipFile):
            return "corrupt", None
        if list(flat.shape) != record.get("shape") or len(offsets) != len(uids) + 1 or list(stored) != list(uids):
            return "corrupt", None
        return "ok", (flat, offsets)

    def _publish(self, key: str, identity: dict, flat: np.ndarray, offsets: np.ndarray, uids: np.ndarray,
                 seconds: float) -> None:
        c = self.cache
        buf = io.BytesIO()
        np.savez(buf, flat=flat, offsets=offsets, uids=np.asarray(uids, dtype=str))
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        data_name = f"{key}-{sha[:12]}.npz"
        c._put(c._path(FOLDER, data_name), data)  # the data first ...
        lengths = np.diff(offsets)
        record = {"key": key, "data": data_name, "sha256": sha, "bytes": len(data), "shape": list(flat.shape),
                  "identity": identity, "rows": int(len(uids)), "empty_rows": int((lengths == 0).sum()),
                  "max_frames": int(lengths.max()) if len(lengths) else 0,
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "compute_seconds": round(seconds, 3)}
        c._put(c._path(FOLDER, f"{key}.json"), (json.dumps(record, indent=1) + "\n").encode())  # ... the record last
        c._remove_orphans(FOLDER, key, keep=data_name)

