"""A content-keyed, write-once store of small derived results (named arrays + a JSON record) beside the features.

Used for the group sources' results (k-means clusters, pseudo-labels: :func:`fairray.data.groups.infer_groups`),
so a second sweep over the same data does not refit them. It is a :class:`FeatureCache` rooted at
``<feature cache root>/<folder>`` and reuses its machinery unchanged: exclusive ``.lock`` with heartbeat and
stale-lock breaking, atomic writes (temporary file + rename, or one ``move`` on object stores), the record
written last, orphaned data files removed. Only the key and the payload differ.

Layout under ``<root>/<folder>``::

    <name>/<key>.json           # commit record: identity, sha256 and shapes of the data, the caller's record
    <name>/<key>-<sha12>.npz    # the arrays
    <name>/<key>.lock           # present while one process computes the entry

Key: sha256 of the caller's ``identity`` (JSON, sorted keys) and :data:`RESULT_FORMAT`. An entry whose
record does not parse, names another key, or whose data is missing, fails its checksum, or holds other
arrays/shapes/dtypes than recorded is treated as absent and recomputed (counted in ``stats.corrupt``),
never returned — as :class:`FeatureCache` does for features.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from fairray.data.features._cache import _HOST, FeatureCache, _parse

#: Version of this store's layout; part of every key.
RESULT_FORMAT = 1


@dataclass(frozen=True)
class CachedResult:
    arrays: dict[str, np.ndarray]
    record: dict[str, Any]
    key: str
    hit: bool


def identity_key(identity: Mapping[str, Any]) -> str:
    blob = json.dumps({"format": RESULT_FORMAT, **identity}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


class ResultCache(FeatureCache):
    """Write-once results under ``<root>/<folder>``; see the module docstring."""

    def __init__(self, root: str | os.PathLike, folder: str = "groups") -> None:
        super().__init__(f"{str(root).rstrip('/')}/{folder}")

    def __repr__(self) -> str:
        return f"ResultCache({self.uri!r})"

    def get_or_compute_result(self, name: str, identity: Mapping[str, Any],
                              compute: Callable[[], tuple[Mapping[str, np.ndarray], Mapping[str, Any]]], *,
                              wait_timeout_s: float | None = None) -> CachedResult:
        """The stored result of ``identity`` under ``name``, or ``compute()`` once (other callers wait) and store it.

        ``compute`` returns (arrays, record): named numeric arrays and a JSON-able dict.
        """
        key = identity_key(identity)

        def produce():
            t0 = time.perf_counter()
            arrays, record = compute()
            arrays, record = {k: np.asarray(v) for k, v in arrays.items()}, dict(record)
            self._publish_result(name, key, dict(identity), arrays, record, time.perf_counter() - t0)
            return arrays, record

        (arrays, record), hit = self._once(name, key, lambda: self._read_result(name, key), produce, wait_timeout_s,
                                           "result cache")
        return CachedResult(arrays, record, key=key, hit=hit)

    def _read_result(self, name: str, key: str) -> tuple[str, Any]:
        """("absent" | "corrupt" | "ok", payload); payload of "ok": (arrays, record)."""
        raw = self._get(self._path(name, f"{key}.json"))
        if raw is None:
            return "absent", None
        meta = _parse(raw)
        if meta is None or meta.get("key") != key or not isinstance(meta.get("arrays"), dict):
            return "corrupt", None
        data = self._get(self._path(name, str(meta.get("data"))))
        if data is None or len(data) != meta.get("bytes") or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            return "corrupt", None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (ValueError, OSError, KeyError, zipfile.BadZipFile):
            return "corrupt", None
        expected = meta["arrays"]
        if set(arrays) != set(expected) or any(
                [list(a.shape), a.dtype.str] != expected[k] for k, a in arrays.items()):
            return "corrupt", None
        return "ok", (arrays, meta.get("record", {}))

    def _publish_result(self, name: str, key: str, identity: dict, arrays: dict[str, np.ndarray], record: dict,
                        seconds: float) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        data_name = f"{key}-{sha[:12]}.npz"
        self._put(self._path(name, data_name), data)
        meta = {
            "format": RESULT_FORMAT, "key": key, "data": data_name, "sha256": sha, "bytes": len(data),
            "arrays": {k: [list(a.shape), a.dtype.str] for k, a in arrays.items()}, "identity": identity,
            "record": record, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": _HOST,
            "compute_seconds": round(seconds, 3),
        }
        self._put(self._path(name, f"{key}.json"), (json.dumps(meta, indent=1, default=str) + "\n").encode())
        self._remove_orphans(name, key, keep=data_name)
