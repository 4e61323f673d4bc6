"""Feature cache: hits without extraction, content keys, atomic write-once entries, locks across processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fairray.data.features import FeatureCache, make_extractor
from fairray.data.features import _cache as cache_module
from fairray.data.features._base import Extractor
from fairray.errors import DataError


class Stats(Extractor):
    """A real, tiny audio extractor (mean, std, peak, seconds × scale) that records each call.

    Not registered: the cache takes instances, and the conformance suite covers registered ones.
    """

    name = "test_stats"
    version = 1
    modality = "audio"
    runtime_params = frozenset({"batch_size", "calls_dir", "sleep_s"})
    calls = 0

    @dataclass(frozen=True)
    class Params:
        scale: float = 1.0
        batch_size: int = 8
        calls_dir: str = ""  # one marker file per call, to count calls across processes
        sleep_s: float = 0.0  # widens the window in which a second process could race

    @property
    def dim(self) -> int:
        return 4

    def _load(self):
        return True

    def _extract(self, items):
        type(self).calls += 1
        if self.params.calls_dir:
            Path(self.params.calls_dir, f"{os.getpid()}-{time.time_ns()}").touch()
        time.sleep(self.params.sleep_s)
        return np.array([[x.mean(), x.std(), np.abs(x).max(), len(x) / 16000] for x in items]) * self.params.scale


class StatsV2(Stats):
    version = 2


class TextLen(Extractor):
    """Characters and words of a text."""

    name = "test_textlen"
    version = 1
    modality = "text"

    @dataclass(frozen=True)
    class Params:
        pass

    @property
    def dim(self) -> int:
        return 2

    def _load(self):
        return True

    def _extract(self, items):
        return np.array([[len(t), len(t.split())] for t in items])


@pytest.fixture
def corpus(tmp_path, tone, make_table):
    """Six FLAC clips of different lengths; (root, table)."""
    clips = {f"u{i}": tone(0.3 + 0.1 * i, 100 + 20 * i, seed=i) for i in range(6)}
    root = tmp_path / "audio"
    return root, make_table(root, clips)


def _no_partial_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_second_call_hits_without_extracting(tmp_path, corpus):
    root, table = corpus
    Stats.calls = 0
    cache = FeatureCache(tmp_path / "cache")
    first = cache.get_or_compute(table, root, Stats(), progress=False)
    assert not first.hit and Stats.calls == 1 and first.X.shape == (6, 4)
    assert first.uids.tolist() == table["uid"].tolist()
    second = cache.get_or_compute(table, root, Stats(), progress=False)
    assert second.hit and Stats.calls == 1 and second.key == first.key
    np.testing.assert_array_equal(second.X, first.X)
    assert (cache.stats.hits, cache.stats.misses, cache.stats.extractions) == (1, 1, 6)
    other = FeatureCache(str(tmp_path / "cache"))  # another process's view of the same folder
    assert other.get_or_compute(table, root, Stats(), progress=False).hit and Stats.calls == 1
    assert other.stats.extractions == 0


def test_key_follows_content_params_and_version(tmp_path, corpus, tone):
    root, table = corpus
    cache = FeatureCache(tmp_path / "cache")
    key = cache.key(table, root, Stats())
    assert cache.key(table, root, Stats(Stats.Params(scale=2.0))) != key
    assert cache.key(table, root, Stats(Stats.Params(batch_size=1))) == key  # runtime parameter
    assert cache.key(table, root, StatsV2()) != key
    assert cache.key(table.iloc[::-1], root, Stats()) == key  # row order is not content
    path = root / table["path"].iloc[0]
    os.utime(path, (time.time() + 100, time.time() + 100))
    assert cache.key(table, root, Stats()) == key  # mtime alone is not content
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, different bytes
    assert cache.key(table, root, Stats()) != key


def test_reordered_table_gets_aligned_rows(tmp_path, corpus):
    root, table = corpus
    cache = FeatureCache(tmp_path / "cache")
    forward = cache.get_or_compute(table, root, Stats(), progress=False)
    backward = cache.get_or_compute(table.iloc[::-1].reset_index(drop=True), root, Stats(), progress=False)
    assert backward.hit and backward.uids.tolist() == forward.uids.tolist()[::-1]
    np.testing.assert_array_equal(backward.X, forward.X[::-1])


def test_skipped_clips_are_listed_not_hidden(tmp_path, corpus):
    import soundfile as sf

    root, table = corpus
    sf.write(root / "silent.flac", np.zeros(8000, np.float32), 16000)
    (root / "broken.flac").write_bytes(b"fLaC" + b"\0" * 40)
    table = pd.concat([table, pd.DataFrame({"uid": ["silent", "broken"], "path": ["silent.flac", "broken.flac"]})],
                      ignore_index=True)
    cache = FeatureCache(tmp_path / "cache")
    for expect_hit in (False, True):
        feats = cache.get_or_compute(table, root, Stats(), progress=False)
        assert feats.hit is expect_hit
        assert feats.X.shape == (6, 4) and np.isfinite(feats.X).all()
        assert feats.uids.tolist() == [f"u{i}" for i in range(6)]
        assert feats.ok.tolist() == [True] * 6 + [False, False]
        assert [e.uid for e in feats.report.skipped] == ["silent", "broken"]
        assert "skipped silent: silent" in feats.report.format()


def test_text_rows_without_text_are_skipped(tmp_path):
    table = pd.DataFrame({"uid": ["a", "b", "c", "d"], "text": ["two words", "", None, "three more words"]})
    cache = FeatureCache(tmp_path / "cache")
    feats = cache.get_or_compute(table, tmp_path, TextLen(), progress=False)
    assert feats.uids.tolist() == ["a", "d"] and feats.X.tolist() == [[9, 2], [16, 3]]
    assert [(e.uid, e.reason) for e in feats.report.skipped] == [("b", "no text"), ("c", "no text")]
    assert cache.get_or_compute(table, tmp_path, TextLen(), progress=False).hit
    changed = table.assign(text=["two words!", "", None, "three more words"])
    assert cache.key(changed, tmp_path, TextLen()) != feats.key
    with pytest.raises(DataError, match=r"missing column\(s\) \['text'\]"):
        cache.get_or_compute(table.drop(columns="text"), tmp_path, TextLen())


def test_crash_during_write_leaves_nothing_at_the_final_path(tmp_path, corpus, monkeypatch):
    root, table = corpus
    cache = FeatureCache(tmp_path / "cache")

    def crash(fd):
        raise OSError("simulated crash: disk full")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", crash)
        with pytest.raises(OSError, match="simulated crash"):
            cache.get_or_compute(table, root, Stats(), progress=False)
    assert _no_partial_files(tmp_path / "cache") == []  # no .npz, .json, .tmp or .lock left
    Stats.calls = 0
    feats = cache.get_or_compute(table, root, Stats(), progress=False)
    assert not feats.hit and Stats.calls == 1
    names = _no_partial_files(tmp_path / "cache")
    assert names == sorted([f"{feats.key}.json", next(n for n in names if n.endswith(".npz"))])


class _CrashingStream:
    def __init__(self, stream):
        self.stream = stream

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()

    def write(self, data):
        self.stream.write(data[: len(data) // 2])
        raise OSError("simulated crash: connection reset")


class _CrashingFS:
    """A pyarrow file system whose uploads die half-way (the object-store code path)."""

    def __init__(self, fs):
        self.fs = fs

    def __getattr__(self, name):
        return getattr(self.fs, name)

    def open_output_stream(self, path):
        return _CrashingStream(self.fs.open_output_stream(path))


def test_object_store_path_is_atomic_too(corpus):
    import pyarrow.fs as pafs

    root, table = corpus
    cache = FeatureCache("mock:///features")
    assert not cache.local
    real = cache.fs
    cache.fs = _CrashingFS(real)
    with pytest.raises(OSError, match="connection reset"):
        cache.get_or_compute(table, root, Stats(), progress=False)
    cache.fs = real
    listing = real.get_file_info(pafs.FileSelector("features", recursive=True, allow_not_found=True))
    assert [i.path for i in listing if i.type == pafs.FileType.File] == []
    assert not cache.get_or_compute(table, root, Stats(), progress=False).hit
    assert cache.get_or_compute(table, root, Stats(), progress=False).hit
    listing = real.get_file_info(pafs.FileSelector("features", recursive=True))
    assert sorted(i.path.rsplit(".", 1)[-1] for i in listing if i.type == pafs.FileType.File) == ["json", "npz"]


def test_corrupt_entry_is_recomputed_not_returned(tmp_path, corpus):
    root, table = corpus
    cache = FeatureCache(tmp_path / "cache")
    good = cache.get_or_compute(table, root, Stats(), progress=False)
    npz = next((tmp_path / "cache" / "test_stats").glob("*.npz"))
    npz.write_bytes(npz.read_bytes()[:-200])  # truncated
    Stats.calls = 0
    again = cache.get_or_compute(table, root, Stats(), progress=False)
    assert not again.hit and Stats.calls == 1 and cache.stats.corrupt == 1
    np.testing.assert_array_equal(again.X, good.X)
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one bit pattern changed: only the checksum sees it
    npz.write_bytes(bytes(data))
    assert not cache.get_or_compute(table, root, Stats(), progress=False).hit and cache.stats.corrupt == 2
    (tmp_path / "cache" / "test_stats" / f"{good.key}.json").write_text("{not json")
    assert not cache.get_or_compute(table, root, Stats(), progress=False).hit and cache.stats.corrupt == 3
    assert cache.get_or_compute(table, root, Stats(), progress=False).hit
    assert len(list((tmp_path / "cache" / "test_stats").glob("*.npz"))) == 1


def _race(cache_dir, root, table, calls_dir, queue):
    cache = FeatureCache(cache_dir)
    feats = cache.get_or_compute(table, root, Stats(Stats.Params(calls_dir=calls_dir, sleep_s=0.5)), progress=False)
    queue.put((feats.hit, feats.X, cache.stats.waits))


def test_two_processes_compute_once(tmp_path, corpus):
    root, table = corpus
    calls = tmp_path / "calls"
    calls.mkdir()
    ctx = multiprocessing.get_context("fork")  # the extractor lives in this test module: no pickling by name
    queue = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "cache"), root, table, str(calls), queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len(list(calls.iterdir())) == 1  # one extraction in all
    assert sorted(r[0] for r in results) == [False, True]
    assert sum(r[2] for r in results) == 1  # the loser waited
    np.testing.assert_array_equal(results[0][1], results[1][1])


def _lock_path(cache, table, root, extractor) -> Path:
    key = cache.key(table, root, extractor)
    path = Path(cache.base) / extractor.name / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_stale_locks_are_broken(tmp_path, corpus):
    root, table = corpus
    cache = FeatureCache(tmp_path / "cache")
    lock = _lock_path(cache, table, root, Stats())
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    lock.write_text(json.dumps({"host": cache_module._HOST, "pid": dead, "token": "x", "created": time.time()}))
    feats = cache.get_or_compute(table, root, Stats(), progress=False, wait_timeout_s=5)
    assert not feats.hit and cache.stats.broken_locks == 1 and not lock.exists()

    other = StatsV2()  # a second key, locked by a silent owner on another host
    lock = _lock_path(cache, table, root, other)
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "y", "created": 0}))
    old = time.time() - cache_module.LOCK_STALE_S - 60
    os.utime(lock, (old, old))
    assert not cache.get_or_compute(table, root, other, progress=False, wait_timeout_s=5).hit
    assert cache.stats.broken_locks == 2 and cache.stats.waits == 0


def test_live_lock_is_waited_for(tmp_path, corpus):
    root, table = corpus
    cache = FeatureCache(tmp_path / "cache")
    lock = _lock_path(cache, table, root, Stats())
    lock.write_text(json.dumps({"host": "gpu-node-7", "pid": 4242, "token": "z", "created": time.time()}))
    with pytest.raises(DataError) as err:
        cache.get_or_compute(table, root, Stats(), progress=False, wait_timeout_s=0.3)
    assert "held by gpu-node-7 pid 4242" in str(err.value) and "\n" not in str(err.value)
    assert lock.exists() and cache.stats.waits == 1 and cache.stats.misses == 0


def test_order_preserved_with_a_process_pool(tmp_path, corpus, monkeypatch):
    root, table = corpus
    monkeypatch.setattr(cache_module, "CHUNK_CLIPS", 2)  # three chunks over two processes
    extractor = make_extractor("opensmile_egemaps")
    serial = FeatureCache(tmp_path / "serial").get_or_compute(table, root, extractor, progress=False)
    pooled = FeatureCache(tmp_path / "pooled").get_or_compute(table, root, extractor, progress=False, num_workers=2)
    assert pooled.uids.tolist() == serial.uids.tolist() == table["uid"].tolist()
    np.testing.assert_allclose(pooled.X, serial.X, rtol=1e-6)


@pytest.mark.slow
def test_order_preserved_with_ray_tasks(tmp_path, corpus, monkeypatch):
    import ray

    root, table = corpus
    monkeypatch.setattr(cache_module, "CHUNK_CLIPS", 2)
    extractor = make_extractor("opensmile_egemaps")
    serial = FeatureCache(tmp_path / "serial").get_or_compute(table, root, extractor, progress=False)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        distributed = FeatureCache(tmp_path / "ray").get_or_compute(table, root, extractor, progress=False,
                                                                    num_workers=2)
    finally:
        ray.shutdown()
    assert distributed.uids.tolist() == table["uid"].tolist()
    np.testing.assert_allclose(distributed.X, serial.X, rtol=1e-6)
