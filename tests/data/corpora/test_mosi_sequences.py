"""MOSI/MOSEI's aligned frames as sequence inputs (``sequences: true``) on the layout-faithful fixtures of
test_mosi_csd (SDK .csd files and a MulT pickle of the same arrays, zero-padded at the front): padding trimmed,
empty rows kept, the frames cached content-keyed and atomically, the dataset's declared and prepared inputs."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from fairray.config import CorpusSource, DatasetConfig
from fairray.config._spec import NamedParams
from fairray.data import declared_inputs, prepare
from fairray.data._dataset import load_corpora
from fairray.data._sequences import FrameStore, concat_frames
from fairray.data.corpora.mosi import MosiAdapter, time_average, trim_padding
from fairray.errors import DataError
from tests.data.corpora.test_mosi_csd import DIMS, make_corpus, write_csd_corpus, write_pickle

h5py = pytest.importorskip("h5py")


@pytest.fixture()
def corpus():
    return make_corpus()


def _roots(tmp_path, corpus):
    csd, pkl = tmp_path / "csd", tmp_path / "pkl"
    csd.mkdir()
    pkl.mkdir()
    write_csd_corpus(csd, corpus)
    write_pickle(pkl / "mosi_data.pkl", corpus)
    return csd, pkl


def _cfg(root, **options):
    return DatasetConfig(name="corpora", corpora=(CorpusSource("mosi", str(root), {"sequences": True, **options}),),
                         extractor=None, protocol=NamedParams("corpus_split"), targets="regression",
                         target="reg_target", languages=("en",), attribute="gender", stratum="language")


def test_trim_padding_strips_zero_steps_at_either_end_only():
    a = np.array([[0, 0], [1, 2], [0, 0], [3, 0], [0, 0]], dtype=np.float32)  # interior zero step kept
    b = np.array([[0, 0]] * 5, dtype=np.float32)  # nothing valid: an empty sequence
    c = np.array([[np.nan, 0], [-np.inf, 1], [0, 0], [0, 0], [2, 2]], dtype=np.float32)
    rows = trim_padding(np.stack([a, b, c]))
    np.testing.assert_array_equal(rows[0], a[1:4])
    assert rows[1].shape == (0, 2)
    np.testing.assert_array_equal(rows[2], [[0, 1], [0, 0], [0, 0], [2, 2]])  # NaN -> 0 first, then trimmed
    # the frames' mean over their non-zero steps is the adapter's time average
    np.testing.assert_allclose(time_average(rows[0][None]), time_average(a[None]), rtol=1e-6)


def test_frames_from_the_pickle_and_the_csd_equal_the_segments_steps(tmp_path, corpus):
    csd, pkl = _roots(tmp_path, corpus)
    by_format = {}
    for root in (csd, pkl):
        adapter = MosiAdapter(sequences=True)
        table = adapter.load(root)
        from fairray.data.features import FeatureCache

        stores, keys = adapter.shipped_inputs(root, table, FeatureCache(tmp_path / "cache"))
        assert set(stores) == set(DIMS) and len(keys) == 3 and adapter.features(root, table).shape == (len(table), 0)
        by_format[root.name] = (table, stores)
    table, stores = by_format["csd"]
    for i, segment in enumerate(table["segment_id"]):
        for modality, dim in DIMS.items():
            frames = stores[modality].take(np.array([i])).values[0].numpy()
            length = int(stores[modality].lengths[i])
            expected = trim_padding(corpus[segment][modality][None])[0]
            assert frames.shape[1] == dim and length == len(expected)
            np.testing.assert_allclose(frames[:length], expected, rtol=1e-6)
    for modality in DIMS:  # the pickle (front zero-padded to 8 steps) gives the same frames and lengths
        np.testing.assert_array_equal(by_format["pkl"][1][modality].lengths, stores[modality].lengths)
        np.testing.assert_allclose(by_format["pkl"][1][modality].flat, stores[modality].flat, rtol=1e-6)


def test_declared_and_prepared_inputs_are_the_sequences_without_a_vector(tmp_path, corpus):
    csd, _ = _roots(tmp_path, corpus)
    cfg = _cfg(csd)
    assert {n: s.kind for n, s in declared_inputs(cfg).items()} == dict.fromkeys(DIMS, "sequence")
    data = prepare(cfg, cache_root=str(tmp_path / "cache"))
    assert data.X.shape == (9, 0)
    assert {n: (s.spec.kind, s.spec.dim) for n, s in data.inputs.items()} == {m: ("sequence", d) for m, d in DIMS.items()}
    # rows follow the prepared table (the protocol re-orders nothing it drops): frames of each row's segment
    for i, segment in enumerate(data.meta["segment_id"]):
        n = int(data.inputs["text"].lengths[i])
        np.testing.assert_allclose(data.inputs["text"].take(np.array([i])).values[0, :n].numpy(),
                                   corpus[segment]["text"], rtol=1e-6)
    # without the option: the vector, as before
    plain = DatasetConfig(name="corpora", corpora=(CorpusSource("mosi", str(csd)),), extractor=None)
    assert list(declared_inputs(plain)) == ["features"]


def test_frames_are_read_once_then_come_from_the_cache(tmp_path, corpus, monkeypatch):
    import fairray.data.corpora.mosi as mosi_module

    _, pkl = _roots(tmp_path, corpus)
    cache = tmp_path / "cache"
    reads = []
    read_pickle = mosi_module.read_pickle
    monkeypatch.setattr(mosi_module, "read_pickle", lambda path: reads.append(path) or read_pickle(path))
    first = load_corpora(_cfg(pkl), cache_root=str(cache))[2]
    assert len(reads) == 2  # the table, then the frames of all three modalities from one read
    records = sorted((cache / "sequences").glob("*.json"))
    assert len(records) == 3 and len(list((cache / "sequences").glob("*.npz"))) == 3
    record = json.loads(records[0].read_text())
    assert record["rows"] == 9 and record["identity"]["sources"][0]["name"] == "mosi_data.pkl"
    calls = []
    original = MosiAdapter._pickle_frames
    monkeypatch.setattr(MosiAdapter, "_pickle_frames", lambda self, *a: calls.append(a) or original(self, *a))
    second = load_corpora(_cfg(pkl), cache_root=str(cache))[2]
    assert calls == []  # every modality from the cache
    for modality in DIMS:
        np.testing.assert_array_equal(second["inputs"][modality].flat, first["inputs"][modality].flat)
    assert second["input_fingerprint"] == first["input_fingerprint"]
    # a truncated data file is never returned: the entry is read again and rewritten
    data_file = next((cache / "sequences").glob(f"{records[0].stem}-*.npz"))
    data_file.write_bytes(data_file.read_bytes()[:100])
    load_corpora(_cfg(pkl), cache_root=str(cache))
    assert len(calls) == 1
    # another nonfinite policy is another entry; the same rows and files keep their key
    load_corpora(_cfg(pkl, nonfinite="skip"), cache_root=str(cache))
    assert len(list((cache / "sequences").glob("*.json"))) == 6
    assert not list((cache / "sequences").glob(".*.tmp"))


def test_a_modality_without_any_frame_is_an_empty_sequence_listed_once(tmp_path, corpus, caplog):
    segment = next(iter(corpus))
    corpus[segment]["vision"][:] = 0.0  # FACET found no face in this segment
    csd, _ = _roots(tmp_path, corpus)
    adapter = MosiAdapter(sequences=True)
    table = adapter.load(csd)
    from fairray.data.features import FeatureCache

    with caplog.at_level(logging.WARNING):
        stores, _ = adapter.shipped_inputs(csd, table, FeatureCache(tmp_path / "cache"))
    row = int(np.flatnonzero(table["segment_id"] == segment)[0])
    assert stores["vision"].lengths[row] == 0 and stores["text"].lengths[row] > 0
    assert adapter.empty_frames == {"vision": (segment,)}
    assert "1 of 9 segments have no non-zero vision frame" in caplog.text
    batch = stores["vision"].take(np.array([row, (row + 1) % 9]))
    assert not batch.mask[0].any() and batch.mask[1].any()


def test_frame_store_subset_and_concat_keep_rows_aligned():
    g = np.random.default_rng(0)
    rows = [g.normal(size=(n, 3)).astype(np.float32) for n in (2, 0, 4, 1)]
    store = FrameStore.from_frames("audio", rows, 3)
    sub = store.subset(np.array([2, 1, 0]))
    np.testing.assert_array_equal(sub.lengths, [4, 0, 2])
    np.testing.assert_array_equal(sub.flat, np.concatenate([rows[2], rows[0]]))
    both = concat_frames([store, sub])
    assert len(both) == 7 and both.lengths.tolist() == [2, 0, 4, 1, 4, 0, 2]
    np.testing.assert_array_equal(both.take(np.array([4])).values[0].numpy(), rows[2])
    assert len(store.subset(np.array([], dtype=np.int64))) == 0
    with pytest.raises(DataError, match="frames of different widths"):
        concat_frames([store, FrameStore.from_frames("audio", [np.zeros((1, 5), np.float32)], 5)])


def test_mosi_and_mosei_sequences_stack_and_a_corpus_without_them_is_refused(tmp_path, corpus):
    mosi, mosei = tmp_path / "mosi", tmp_path / "mosei"
    mosi.mkdir()
    mosei.mkdir()
    write_pickle(mosi / "mosi_data.pkl", corpus)
    write_pickle(mosei / "mosei_senti_data.pkl", corpus)
    cfg = DatasetConfig(name="corpora", extractor=None, corpora=(
        CorpusSource("mosi", str(mosi), {"sequences": True}), CorpusSource("mosei", str(mosei), {"sequences": True})))
    meta, X, provenance, _ = load_corpora(cfg, cache_root=str(tmp_path / "cache"))
    assert len(meta) == 18 and X.shape == (18, 0)
    audio = provenance["inputs"]["audio"]
    np.testing.assert_array_equal(audio.lengths[:9], audio.lengths[9:])
    mixed = DatasetConfig(name="corpora", extractor=None, corpora=(
        CorpusSource("mosi", str(mosi), {"sequences": True}), CorpusSource("mosei", str(mosei))))
    with pytest.raises(DataError, match="corpus 'mosei' does not give it while another corpus does") as excinfo:
        load_corpora(mixed, cache_root=str(tmp_path / "cache"))
    assert "\n" not in str(excinfo.value)
