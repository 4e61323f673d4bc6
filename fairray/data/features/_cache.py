"""The feature cache: each (utterance table, extractor) pair is extracted once and read back everywhere.

Key: sha256 of

* the table fingerprint: per utterance, sorted by uid, ``uid``, ``path``, the file size and a
  sha256 of its first and last 64 KiB (text extractors: ``uid`` and the text). Content, not
  mtime, so a corpus copied to another machine or a cluster node keeps its key, while a file
  replaced in place changes it even when its size does not (an edit confined to the middle of a
  file larger than 128 KiB is not seen: the sizes of such corpora make full hashing too slow);
* the extractor's name, ``version``, its output-determining params and :meth:`~Extractor.fingerprint`
  (library version or weight digest);
* the audio rules (target rate, silence and length thresholds) that decide which clips are skipped.

Layout under ``root`` (a local folder or any ``pyarrow.fs`` URI: ``s3://bucket/prefix``, ``gs://...``)::

    <extractor name>/<key>.json           # the commit record: shape, sha256, the AudioReport, provenance
    <extractor name>/<key>-<sha12>.npz    # X (float32, rows sorted by uid) and uids
    <extractor name>/<key>.lock           # present while one process computes the entry

Writes are atomic (temporary file + rename; on object stores one final ``move`` of a fully
written object) and the ``.json`` is written last, so readers see no entry or a complete one. A
record whose data is missing or fails its checksum (e.g. a truncated ``.npz``) is recomputed,
never returned.

Concurrency: the first caller creates ``<key>.lock`` (``O_CREAT | O_EXCL`` on a local or shared
POSIX file system) and computes; the others poll until the record appears. The owner refreshes
the lock's mtime every :data:`LOCK_HEARTBEAT_S`; a lock is broken when its owner is a dead pid on
this host, or when it has not been refreshed for :data:`LOCK_STALE_S` (an owner on another host
that died). Caveat: object stores have no exclusive create, so there the lock is best effort
(check, write, read back); two hosts may then both compute, which costs time but stays correct,
since both publish the same bytes atomically. Stale detection across hosts assumes clocks agree
to well within :data:`LOCK_STALE_S`.

>>> cache = FeatureCache("~/.cache/fairray/features")                      # doctest: +SKIP
>>> feats = cache.get_or_compute(table, root, make_extractor("opensmile_egemaps"), num_workers=2)  # doctest: +SKIP
>>> feats.X.shape, feats.hit, feats.report.counts()                       # doctest: +SKIP
((1440, 88), False, {'ok': 1440, 'resampled': 0, 'skipped': 0})
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairray._atomic import atomic_write_bytes
from fairray.data import audio
from fairray.data.audio import AudioEntry, AudioReport
from fairray.data.features._base import Extractor
from fairray.errors import DataError

#: Version of the on-disk layout; part of every key.
CACHE_FORMAT = 1
#: The lock owner touches the lock this often while it computes.
LOCK_HEARTBEAT_S = 30.0
#: A lock not touched for this long is stale (its owner died on another host, or hung).
LOCK_STALE_S = 300.0
#: Clips per unit of work (a pool/Ray task, a progress-bar step); with workers, smaller so each gets >= 4.
CHUNK_CLIPS = 32
#: Bytes hashed at each end of an audio file for the table fingerprint.
EDGE_BYTES = 64 * 1024

_HOST = socket.gethostname()
#: (path, size, mtime_ns, inode) → content digest; only spares re-reading unchanged files in one process.
_DIGESTS: dict[tuple, str] = {}
#: Extractors loaded in a pool or Ray worker process, reused across the chunks it runs.
_WORKER_EXTRACTORS: dict[tuple, Extractor] = {}


@dataclass
class CacheStats:
    """Counters of one :class:`FeatureCache` instance (this process only)."""

    hits: int = 0  # calls answered from a stored entry (including after waiting for another process)
    misses: int = 0  # calls that computed the entry
    extractions: int = 0  # clips passed through an extractor
    corrupt: int = 0  # stored entries that failed their checksum and were recomputed
    broken_locks: int = 0  # stale locks removed
    waits: int = 0  # calls that waited for another process's lock


@dataclass(frozen=True)
class CachedFeatures:
    """Features of the kept utterances, in table order: ``X[i]`` belongs to ``uids[i]``.

    ``report`` has one entry per table row (table order); the rows it marks ``skipped``
    (unreadable, silent, too short, no text, non-finite features) have no row in ``X``, and
    :attr:`ok` (a mask over the table rows) selects the rows that do: ``table[feats.ok]`` lines up
    with ``X``.
    """

    X: np.ndarray
    uids: np.ndarray
    key: str
    hit: bool
    report: AudioReport = field(repr=False)

    @property
    def ok(self) -> np.ndarray:
        return self.report.ok_mask


# -- fingerprints ----------------------------------------------------------------------------------

def _file_digest(path: Path) -> tuple[int, str]:
    """(size, sha256 of the first and last :data:`EDGE_BYTES`); (-1, "missing") for an absent file."""
    try:
        st = path.stat()
    except OSError:
        return -1, "missing"
    memo = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if memo not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            digest.update(fh.read(EDGE_BYTES))
            if st.st_size > EDGE_BYTES:
                fh.seek(max(EDGE_BYTES, st.st_size - EDGE_BYTES))
                digest.update(fh.read())
        _DIGESTS[memo] = digest.hexdigest()
    return st.st_size, _DIGESTS[memo]


def _texts(table: pd.DataFrame) -> list[str | None]:
    return [t.strip() if isinstance(t, str) and t.strip() else None for t in table["text"]]


def table_fingerprint(table: pd.DataFrame, root: str | os.PathLike, modality: str) -> str:
    """Digest of what an extractor reads from ``table`` (see the module docstring)."""
    digest = hashlib.sha256()
    if modality == "text":
        rows = sorted(zip(table["uid"].astype(str), _texts(table), strict=True))
        for uid, text in rows:
            digest.update(f"{uid}\t{hashlib.sha256((text or '').encode()).hexdigest() if text else '-'}\n".encode())
    else:
        root = Path(root)
        for uid, rel in sorted(zip(table["uid"].astype(str), table["path"].astype(str), strict=True)):
            size, content = _file_digest(root / rel)
            digest.update(f"{uid}\t{rel}\t{size}\t{content}\n".encode())
    return digest.hexdigest()


# -- the unit of work (runs in this process, a pool process or a Ray task) ------------------------

def _compute_chunk(extractor: Extractor, rows: list[tuple[str, str | None]], modality: str,
                   in_worker: bool = False) -> tuple[np.ndarray, list[AudioEntry]]:
    """Decode/check each row's input, extract the kept ones; skipped rows are NaN."""
    if in_worker:
        ident = (type(extractor).__module__, type(extractor).__qualname__, repr(extractor.params))
        extractor = _WORKER_EXTRACTORS.setdefault(ident, extractor)
    entries: list[AudioEntry] = []
    items: list = []
    for uid, source in rows:
        if modality == "text":
            entry, item = (AudioEntry(uid, "ok"), source) if source else (AudioEntry(uid, "skipped", "no text"), None)
        else:
            entry, item = audio.load_checked(source, uid)
        entries.append(entry)
        if item is not None:
            items.append(item)
    X = np.full((len(rows), extractor.dim), np.nan, dtype=np.float32)
    kept = np.flatnonzero([e.kept for e in entries])
    if len(kept):
        X[kept] = extractor.extract(items)
        for i in kept[~np.isfinite(X[kept]).all(axis=1)]:
            X[i] = np.nan
            entries[i] = AudioEntry(entries[i].uid, "skipped", f"non-finite features from {extractor.name}",
                                    entries[i].sample_rate, entries[i].duration_s)
    return X, entries


def _ray_if_initialised() -> Any:
    ray = sys.modules.get("ray")  # never import Ray just to learn that it is not running
    return ray if ray is not None and ray.is_initialized() else None


# -- the cache -------------------------------------------------------------------------------------

class FeatureCache:
    """Content-keyed, write-once store of extracted features; see the module docstring."""

    def __init__(self, root: str | os.PathLike) -> None:
        import pyarrow.fs as pafs

        uri = str(root)
        if "://" not in uri:
            uri = str(Path(uri).expanduser().resolve())
        self.uri = uri
        self.fs, self.base = pafs.FileSystem.from_uri(uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.fs.create_dir(self.base, recursive=True)
        self.stats = CacheStats()

    def __repr__(self) -> str:
        return f"FeatureCache({self.uri!r})"

    # -- public ------------------------------------------------------------------------------------
    def key(self, table: pd.DataFrame, root: str | os.PathLike, extractor: Extractor) -> str:
        return self._identity(table, root, extractor)[0]

    def get_or_compute(self, table: pd.DataFrame, root: str | os.PathLike, extractor: Extractor, *,
                       progress: bool = True, num_workers: int = 1,
                       wait_timeout_s: float | None = None) -> CachedFeatures:
        """Features of every row of ``table`` by ``extractor``, from the cache or computed once and stored.

        ``root`` is the folder the table's ``path`` column is relative to (local or mounted: pool
        processes and Ray tasks read the files from there). ``num_workers > 1`` runs chunks of
        :data:`CHUNK_CLIPS` clips as Ray tasks when Ray is initialised, else in a spawned process
        pool (the extractor class must then be importable, and a script needs the usual
        ``if __name__ == "__main__":`` guard); each worker loads the model once.
        ``wait_timeout_s`` bounds the wait for another process computing the same key (None: wait;
        a dead owner's lock is broken anyway).
        """
        self._check_table(table, extractor)
        key, identity = self._identity(table, root, extractor)

        def produce():
            t0 = time.perf_counter()
            X, entries = self._compute(table, root, extractor, progress, num_workers)
            return self._publish(extractor.name, key, identity, table, X, entries, time.perf_counter() - t0)

        stored, hit = self._once(extractor.name, key, lambda: self._read_entry(extractor.name, key), produce,
                                 wait_timeout_s, "feature cache")
        return self._aligned(stored, table, key, hit=hit)

    def _once(self, name: str, key: str, read: Callable[[], tuple[str, Any]], produce: Callable[[], Any],
              wait_timeout_s: float | None, what: str) -> tuple[Any, bool]:
        """The stored value of ``key`` (``read() -> (state, value)``), or ``produce()`` it — compute and
        publish — under the key's exclusive lock, exactly once across processes and hosts; others wait,
        and a dead owner's lock is broken. Returns (value, hit)."""
        lock = self._path(name, f"{key}.lock")
        started, delay, waited = time.monotonic(), 0.05, False
        while True:
            state, value = read()
            if state == "ok":
                self.stats.hits += 1
                return value, True
            token = self._try_lock(lock)
            if token is not None:
                try:
                    state, value = read()  # published while we raced?
                    if state == "ok":
                        self.stats.hits += 1
                        return value, True
                    self.stats.corrupt += state == "corrupt"
                    self.stats.misses += 1
                    with self._heartbeat(lock):
                        return produce(), False
                finally:
                    self._release(lock, token)
            raw, stale_reason = self._stale(lock)
            if stale_reason:
                self._break(lock, raw)
                continue
            if not waited:
                self.stats.waits += 1
                waited = True
            if wait_timeout_s is not None and time.monotonic() - started > wait_timeout_s:
                owner = _parse(raw) or {}
                raise DataError(f"{what}: waited {wait_timeout_s:g} s for {self._display(lock)}, held by "
                                f"{owner.get('host', '?')} pid {owner.get('pid', '?')}; a lock without heartbeat "
                                f"for {LOCK_STALE_S:g} s is broken, or delete the file if that process is gone")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    # -- key ---------------------------------------------------------------------------------------
    def _identity(self, table: pd.DataFrame, root: str | os.PathLike, extractor: Extractor) -> tuple[str, dict]:
        identity = {
            "format": CACHE_FORMAT,
            "extractor": extractor.name,
            "version": extractor.version,
            "params": extractor.key_params(),
            "fingerprint": extractor.fingerprint(),
            "modality": extractor.modality,
            "audio_rules": {"target_sr": audio.TARGET_SR, "silence_peak": audio.SILENCE_PEAK,
                            "min_duration_s": audio.MIN_DURATION_S, "resampler": audio.RESAMPLER},
            "table": table_fingerprint(table, root, extractor.modality),
            "n": int(len(table)),
        }
        blob = json.dumps(identity, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest(), identity

    @staticmethod
    def _check_table(table: pd.DataFrame, extractor: Extractor) -> None:
        needed = ("uid", "text") if extractor.modality == "text" else ("uid", "path")
        missing = [c for c in needed if c not in table.columns]
        if missing:
            raise DataError(f"utterance table: missing column(s) {missing}; extractor {extractor.name!r} "
                            f"({extractor.modality}) reads {list(needed)}")
        dup = table["uid"].astype(str).duplicated()
        if dup.any():
            raise DataError(f"utterance table: uid {table['uid'].iloc[int(np.flatnonzero(dup)[0])]!r} repeats")

    # -- compute -----------------------------------------------------------------------------------
    def _compute(self, table: pd.DataFrame, root: str | os.PathLike, extractor: Extractor, progress: bool,
                 num_workers: int) -> tuple[np.ndarray, list[AudioEntry]]:
        from tqdm import tqdm

        uids = table["uid"].astype(str).tolist()
        if extractor.modality == "text":
            sources = _texts(table)
        else:
            sources = [str(Path(root) / rel) for rel in table["path"].astype(str)]
        rows = list(zip(uids, sources, strict=True))
        size = CHUNK_CLIPS if num_workers <= 1 else max(1, min(CHUNK_CLIPS, -(-len(rows) // (4 * num_workers))))
        chunks = [rows[i:i + size] for i in range(0, len(rows), size)]
        results: list[Any] = [None] * len(chunks)
        bar = tqdm(total=len(rows), desc=extractor.name, unit="clip", disable=not progress)
        try:
            ray = _ray_if_initialised() if num_workers > 1 else None
            if num_workers <= 1 or len(chunks) <= 1:
                for i, chunk in enumerate(chunks):
                    results[i] = _compute_chunk(extractor, chunk, extractor.modality)
                    bar.update(len(chunk))
            elif ray is not None:
                task = ray.remote(_compute_chunk)
                ref = ray.put(extractor)
                todo, running = list(enumerate(chunks)), {}
                while todo or running:
                    while todo and len(running) < 2 * num_workers:
                        i, chunk = todo.pop(0)
                        running[task.remote(ref, chunk, extractor.modality, True)] = i
                    done, _ = ray.wait(list(running), num_returns=1)
                    i = running.pop(done[0])
                    results[i] = ray.get(done[0])
                    bar.update(len(chunks[i]))
            else:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor, as_completed

                # spawn, not fork: the parent may hold torch/OpenMP threads that a forked child would inherit broken
                with ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                    futures = {pool.submit(_compute_chunk, extractor, chunk, extractor.modality, True): i
                               for i, chunk in enumerate(chunks)}
                    for future in as_completed(futures):
                        i = futures[future]
                        results[i] = future.result()
                        bar.update(len(chunks[i]))
        finally:
            bar.close()
        X = np.concatenate([r[0] for r in results]) if results else np.zeros((0, extractor.dim), np.float32)
        entries = [e for r in results for e in r[1]]
        self.stats.extractions += sum(e.kept for e in entries)
        return X, entries

    # -- entries -----------------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])

    def _display(self, path: str) -> str:
        return path if self.local else f"{self.uri.split('://')[0]}://{path}"

    def _get(self, path: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(path) as fh:
                return fh.read()
        except (FileNotFoundError, OSError):
            return None

    def _put(self, path: str, data: bytes) -> None:
        """Atomic write: readers see the old object, or none, or all of ``data``."""
        if self.local:
            atomic_write_bytes(path, data)
            return
        parent, name = path.rsplit("/", 1)
        tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
        self.fs.create_dir(parent, recursive=True)
        try:
            with self.fs.open_output_stream(tmp) as fh:
                fh.write(data)
            self.fs.move(tmp, path)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.delete_file(tmp)
            raise

    def _read_entry(self, name: str, key: str) -> tuple[str, Any]:
        """("absent" | "corrupt" | "ok", payload); payload of "ok": (X, uids, report) sorted by uid."""
        raw = self._get(self._path(name, f"{key}.json"))
        if raw is None:
            return "absent", None
        meta = _parse(raw)
        if meta is None or meta.get("key") != key:
            return "corrupt", None
        data = self._get(self._path(name, meta["data"]))
        if data is None or len(data) != meta["bytes"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
            return "corrupt", None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                X, uids = npz["X"], npz["uids"]
        except (ValueError, OSError, KeyError, zipfile.BadZipFile):
            return "corrupt", None
        if list(X.shape) != meta["shape"] or len(uids) != X.shape[0] or len(uids) != sum(
                r["status"] != "skipped" for r in meta["report"]):
            return "corrupt", None
        return "ok", (X, uids, AudioReport.from_records(meta["report"]))

    def _publish(self, name: str, key: str, identity: dict, table: pd.DataFrame, X: np.ndarray,
                 entries: list[AudioEntry], seconds: float) -> tuple:
        uids = table["uid"].astype(str).to_numpy()
        order = np.argsort(uids, kind="stable")
        kept = np.array([entries[i].kept for i in order], dtype=bool)
        X_sorted, uids_sorted = np.ascontiguousarray(X[order][kept]), uids[order][kept]
        report = AudioReport(tuple(entries[i] for i in order))
        buf = io.BytesIO()
        np.savez(buf, X=X_sorted, uids=uids_sorted.astype(str))
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        data_name = f"{key}-{sha[:12]}.npz"
        self._put(self._path(name, data_name), data)
        meta = {
            "format": CACHE_FORMAT, "key": key, "data": data_name, "sha256": sha, "bytes": len(data),
            "shape": list(X_sorted.shape), "identity": identity, "report": report.to_records(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": _HOST,
            "compute_seconds": round(seconds, 3),
        }
        self._put(self._path(name, f"{key}.json"), (json.dumps(meta, indent=1) + "\n").encode())
        self._remove_orphans(name, key, keep=data_name)
        return X_sorted, uids_sorted, report

    def _remove_orphans(self, name: str, key: str, keep: str) -> None:
        """Data files of this key other than ``keep`` (left by a corrupt entry that was recomputed)."""
        import pyarrow.fs as pafs

        for info in self.fs.get_file_info(pafs.FileSelector(self._path(name), allow_not_found=True)):
            base = info.path.rsplit("/", 1)[-1]
            if base.startswith(f"{key}-") and base.endswith(".npz") and base != keep:
                with contextlib.suppress(OSError):
                    self.fs.delete_file(info.path)

    @staticmethod
    def _aligned(payload: tuple, table: pd.DataFrame, key: str, hit: bool) -> CachedFeatures:
        """Stored (uid-sorted) arrays → the kept rows in table order, and the report in table order."""
        X_sorted, uids_sorted, report = payload
        by_uid = {e.uid: e for e in report.entries}
        entries = tuple(by_uid[uid] for uid in table["uid"].astype(str))
        kept = np.array([e.uid for e in entries if e.kept], dtype=str)
        rows = np.searchsorted(uids_sorted, kept)
        return CachedFeatures(X=X_sorted[rows], uids=kept, key=key, hit=hit, report=AudioReport(entries))

    # -- lock --------------------------------------------------------------------------------------
    def _try_lock(self, lock: str) -> str | None:
        """Create the lock exclusively; the owner token, or None if another process holds it."""
        token = uuid.uuid4().hex
        body = json.dumps({"host": _HOST, "pid": os.getpid(), "token": token, "created": time.time()}).encode()
        if self.local:
            Path(lock).parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return None
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
            return token
        # Object store: no exclusive create; check, write, read back (best effort, see module docstring).
        if self._get(lock) is not None:
            return None
        self._put(lock, body)
        owner = _parse(self._get(lock) or b"")
        return token if owner and owner.get("token") == token else None

    def _release(self, lock: str, token: str) -> None:
        owner = _parse(self._get(lock) or b"")
        if owner and owner.get("token") == token:
            with contextlib.suppress(OSError):
                self.fs.delete_file(lock)

    def _stale(self, lock: str) -> tuple[bytes, str | None]:
        """The lock's bytes and why it is stale (None: alive, or already gone)."""
        raw = self._get(lock)
        if raw is None:
            return b"", None
        owner = _parse(raw)
        if owner and owner.get("host") == _HOST and not _pid_alive(int(owner.get("pid", -1))):
            return raw, f"owner pid {owner.get('pid')} is dead"
        info = self.fs.get_file_info(lock)
        if info.mtime is not None:
            age = time.time() - info.mtime.timestamp()
            if age > LOCK_STALE_S:
                return raw, f"no heartbeat for {age:.0f} s"
        return raw, None

    def _break(self, lock: str, raw: bytes) -> None:
        """Remove a stale lock, but never a fresh one that replaced it meanwhile."""
        if self.local:
            aside = f"{lock}.stale.{uuid.uuid4().hex}"
            try:
                os.rename(lock, aside)
            except FileNotFoundError:
                return
            if Path(aside).read_bytes() != raw:  # we moved a new owner's lock: put it back
                with contextlib.suppress(FileExistsError):
                    os.link(aside, lock)
                os.unlink(aside)
                return
            os.unlink(aside)
        else:
            if self._get(lock) != raw:
                return
            with contextlib.suppress(OSError):
                self.fs.delete_file(lock)
        self.stats.broken_locks += 1

    @contextlib.contextmanager
    def _heartbeat(self, lock: str):
        stop = threading.Event()
        body = self._get(lock) or b""

        def beat() -> None:
            while not stop.wait(LOCK_HEARTBEAT_S):
                with contextlib.suppress(OSError):
                    if self.local:
                        os.utime(lock)
                    else:
                        self._put(lock, body)

        thread = threading.Thread(target=beat, name="fairray-cache-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def _parse(raw: bytes) -> dict | None:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
