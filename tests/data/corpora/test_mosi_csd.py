"""MOSI/MOSEI adapters on CMU-Multimodal-SDK computational sequences (.csd, HDF5) written with h5py in the SDK's
layout (mmsdk/mmdatasdk/computational_sequence/file_ops.write_CSD), compared with MulT pickles of the same arrays."""

from __future__ import annotations

import json
import logging
import pickle
import sys

import numpy as np
import pandas as pd
import pytest

from fairray.data.corpora import CORPORA
from fairray.data.corpora.mosi import MoseiAdapter, MosiAdapter, read_csd_metadata, time_average
from fairray.errors import ConfigError, DataError

h5py = pytest.importorskip("h5py")

DIMS = {"text": 6, "audio": 4, "vision": 3}
#: split key → video → (segment index, sentiment); "[10]" sorts after "[2]"; one video is in no fold.
SEGMENTS = {
    "train": {"03bSnISJMiM": [(0, -3.0), (1, -0.4), (2, 0.0)], "0h-zjBukYpk": [(0, 1.2)]},
    "valid": {"2iHdgb4pbc8": [(1, 0.6), (3, -1.8)]},
    "test": {"tmZoasNr4rU": [(0, 0.0)], "zhpQhgha_KU": [(2, -2.2), (10, 3.0)]},
}
NO_FOLD = {"c5xsKMxpXnc": [(0, 2.0)]}
PAD = 8  # MulT pads every sequence to a fixed length with leading zeros
#: the SDK's names (recipe keys written by deploy({k: k})) per corpus and role
NAMES = {
    "mosi": {"labels": "Opinion Segment Labels", "text": "glove_vectors", "audio": "COVAREP", "vision": "FACET_4.2"},
    "mosei": {"labels": "All Labels", "text": "glove_vectors", "audio": "COVAREP", "vision": "FACET 4.2"},
}
PICKLES = {"mosi": "mosi_data.pkl", "mosei": "mosei_senti_data.pkl"}
ADAPTERS = {"mosi": MosiAdapter, "mosei": MoseiAdapter}


# -- layout-faithful fixture generator ---------------------------------------------------------------------

def write_csd(path, root_name, data, metadata=None, metadata_attrs=None):
    """One computational sequence exactly as mmsdk's write_CSD lays it out: <root name>/data/<id>/{features,
    intervals} and <root name>/metadata/<key> as (1,) vlen-str datasets holding json.dumps(value) (read back as
    bytes by h5py 3). ``metadata_attrs`` are also written as attributes (older files, other writers)."""
    metadata = {"root name": root_name, "computational sequence description": f"{root_name} (synthetic)",
                "dimension names": None, "computational sequence version": "1.0", "alignment compatible": True,
                "dataset name": "CMU-MOSI", **(metadata or {})}
    with h5py.File(path, "w") as handle:
        root = handle.create_group(root_name)
        group = root.create_group("data")
        for vid, entry in data.items():
            seg = group.create_group(vid)
            seg.create_dataset("features", data=entry["features"], compression="gzip", compression_opts=9)
            seg.create_dataset("intervals", data=entry["intervals"], compression="gzip", compression_opts=9)
        meta = root.create_group("metadata")
        for key, value in metadata.items():
            meta.create_dataset(key, (1,), dtype=h5py.special_dtype(vlen=str))
            meta[key][0] = json.dumps(value)
        for key, value in (metadata_attrs or {}).items():
            meta.attrs[key] = np.bytes_(value.encode("utf-8"))


def make_corpus(seed=0):
    """Segment id → {labels, text, audio, vision, intervals} (float32), from SEGMENTS and NO_FOLD."""
    rng = np.random.default_rng(seed)
    corpus = {}
    for videos in (*SEGMENTS.values(), NO_FOLD):
        for video, segments in videos.items():
            for k, sentiment in segments:
                steps = int(rng.integers(2, 6))
                entry = {"sentiment": sentiment, "start": float(k * 5), "end": float(k * 5 + steps)}
                for modality, dim in DIMS.items():
                    entry[modality] = rng.normal(size=(steps, dim)).astype(np.float32)
                entry["vision"][1] = 0.0  # a step the SDK's impute() filled with zeros: not averaged
                corpus[f"{video}[{k}]"] = entry
    return corpus


def _intervals(entry, steps):
    edges = np.linspace(entry["start"], entry["end"], steps + 1)
    return np.stack([edges[:-1], edges[1:]], axis=1)


def write_csd_corpus(root, corpus, name="mosi", folds=True, skip=()):
    """The .csd files of ``corpus`` (aligned to the labels) and standard_folds.json; ``skip``: (role, segment)
    pairs left out of a file."""
    names = NAMES[name]
    labels = {}
    for seg, entry in corpus.items():
        values = [entry["sentiment"]] if name == "mosi" else [entry["sentiment"], 1.0, 0.0, 0.3, 0.0, 0.0, 0.6]
        labels[seg] = {"features": np.array([values], dtype=np.float32),
                       "intervals": np.array([[entry["start"], entry["end"]]])}
    write_csd(root / f"{names['labels']}.csd", names["labels"], labels)
    for modality in DIMS:
        data = {seg: {"features": entry[modality], "intervals": _intervals(entry, len(entry[modality]))}
                for seg, entry in corpus.items() if (modality, seg) not in skip}
        write_csd(root / f"{names[modality]}.csd", names[modality], data)
    if folds:
        (root / "standard_folds.json").write_text(json.dumps({key: sorted(v) for key, v in SEGMENTS.items()}))


def write_pickle(path, corpus):
    """The same segments as a MulT pickle: per split, segments in (video, k) order, zero-padded to PAD steps."""
    data = {}
    for key, videos in SEGMENTS.items():
        segs = [f"{video}[{k}]" for video in sorted(videos) for k, _ in videos[video]]
        split = {"labels": np.array([corpus[s]["sentiment"] for s in segs], dtype=np.float32).reshape(-1, 1, 1),
                 "id": np.array([[s.split("[")[0], str(corpus[s]["start"]), str(corpus[s]["end"])] for s in segs],
                                dtype=object)}
        for modality, dim in DIMS.items():
            arr = np.zeros((len(segs), PAD, dim), dtype=np.float32)
            for i, s in enumerate(segs):
                steps = corpus[s][modality]
                arr[i, PAD - len(steps):] = steps
            split[modality] = arr
        data[key] = split
    with open(path, "wb") as handle:
        pickle.dump(data, handle, protocol=pickle.HIGHEST_PROTOCOL)


@pytest.fixture()
def corpus():
    return make_corpus()


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


# -- tests -------------------------------------------------------------------------------------------------

def test_layout_documents_both_formats():
    assert CORPORA.get("mosi") is MosiAdapter and CORPORA.get("mosei") is MoseiAdapter
    for cls in (MosiAdapter, MoseiAdapter):
        assert "standard_folds.json" in cls.layout() and ".csd" in cls.layout() and "pip install h5py" in cls.layout()
    assert "Opinion Segment Labels.csd" in MosiAdapter.layout() and "All Labels.csd" in MoseiAdapter.layout()


@pytest.mark.parametrize("name", ["mosi", "mosei"])
def test_csd_table_and_features_equal_the_pickle_ones(tmp_path, corpus, name):
    csd_root, pkl_root = tmp_path / "csd", tmp_path / "pkl"
    csd_root.mkdir(), pkl_root.mkdir()
    write_csd_corpus(csd_root, corpus, name)
    write_pickle(pkl_root / PICKLES[name], corpus)
    from_csd, from_pkl = ADAPTERS[name](), ADAPTERS[name]()
    csd, pkl = from_csd.load(csd_root), from_pkl.load(pkl_root)
    assert list(csd.columns) == list(pkl.columns)
    same = [c for c in csd.columns if c not in ("path", "segment_id")]
    pd.testing.assert_frame_equal(csd[same], pkl[same])
    assert set(csd["path"]) == {f"{NAMES[name]['labels']}.csd"} and set(pkl["path"]) == {PICKLES[name]}
    assert csd["segment_id"].tolist()[-2:] == ["zhpQhgha_KU[2]", "zhpQhgha_KU[10]"]
    assert from_csd.sources == {role: f"{file}.csd" for role, file in NAMES[name].items()}
    X_csd, X_pkl = from_csd.features(csd_root, csd), from_pkl.features(pkl_root, pkl)
    assert X_csd.shape == (9, sum(DIMS.values())) and X_csd.dtype == np.float32
    np.testing.assert_allclose(X_csd, X_pkl, rtol=1e-6, atol=1e-7)
    # time average over the steps that are not all zero (the pickle's padding, the imputed vision step)
    seg = corpus["03bSnISJMiM[1]"]
    vision = np.delete(seg["vision"], 1, axis=0).mean(axis=0)
    np.testing.assert_allclose(X_csd[1], np.concatenate([seg["text"].mean(0), seg["audio"].mean(0), vision]),
                               rtol=1e-6)


def test_targets_binary_labels_and_splits_by_video(tmp_path, corpus, caplog):
    write_csd_corpus(tmp_path, corpus)
    adapter = MosiAdapter()
    with caplog.at_level(logging.WARNING):
        table = adapter.load(tmp_path)
    assert len(table) == 9 and table.groupby("split").size().to_dict() == {"dev": 2, "test": 3, "train": 4}
    np.testing.assert_allclose(table["reg_target"], [-3.0, -0.4, 0.0, 1.2, 0.6, -1.8, 0.0, -2.2, 3.0], rtol=1e-6)
    assert table["binary_np"].tolist() == [0, 0, pd.NA, 1, 1, 0, pd.NA, 0, 1]
    assert table["binary_nn"].tolist() == [0, 0, 1, 1, 1, 0, 1, 0, 1]
    assert table["row"].tolist() == [0, 1, 2, 3, 0, 1, 0, 1, 2]
    assert table["uid"].iloc[4] == "mosi/dev/0" and table["segment_id"].iloc[4] == "2iHdgb4pbc8[1]"
    for key, split in (("train", "train"), ("valid", "dev"), ("test", "test")):
        assert set(table.loc[table["split"] == split, "video_id"]) == set(SEGMENTS[key])
    assert table["speaker"].iloc[0] == "mosi_03bSnISJMiM" and set(table["gender"]) == {"U"}
    assert set(table["emotion"]) == {"other"} and set(table["language"]) == {"en"}
    # the video in no fold: left out, listed and logged, never silently
    assert adapter.left_out == {"c5xsKMxpXnc[0]": "video 'c5xsKMxpXnc' is in no fold of standard_folds.json"}
    assert "1 of 10 segments left out" in caplog.text and adapter.nonfinite == ()


def test_metadata_read_from_bytes_datasets_and_attributes(tmp_path, corpus):
    path = tmp_path / "COVAREP.csd"
    write_csd(path, "COVAREP", {"a[0]": {"features": np.ones((2, 3)), "intervals": np.zeros((2, 2))}},
              metadata={"dimension names": ["f0", "vuv", "naq"]}, metadata_attrs={"creator": "someone"})
    with h5py.File(path, "r") as handle:  # what h5py 3 hands back for the SDK's vlen-str metadata
        assert isinstance(handle["COVAREP/metadata/root name"][0], bytes)
    meta = read_csd_metadata(path)
    assert meta["root name"] == "COVAREP" and meta["dimension names"] == ["f0", "vuv", "naq"]
    assert meta["alignment compatible"] is True and meta["creator"] == "someone"


def test_segment_missing_a_modality_is_listed(tmp_path, corpus):
    write_csd_corpus(tmp_path, corpus, skip={("audio", "0h-zjBukYpk[0]")})
    adapter = MosiAdapter()
    table = adapter.load(tmp_path)
    assert "0h-zjBukYpk[0]" not in set(table["segment_id"]) and len(table) == 8
    assert adapter.left_out["0h-zjBukYpk[0]"] == "no audio entry data/'0h-zjBukYpk[0]' in COVAREP.csd"
    # the other rows keep their uids (row = position among the split's labelled segments)
    assert table.loc[table["split"] == "train", "uid"].tolist() == ["mosi/train/0", "mosi/train/1", "mosi/train/2"]
    # a modality not selected is not required
    assert len(MosiAdapter(modalities=["text", "vision"]).load(tmp_path)) == 9


def test_nonfinite_features_listed_zeroed_skipped_or_refused(tmp_path, corpus):
    corpus["2iHdgb4pbc8[3]"]["vision"][0, 1] = np.nan
    corpus["tmZoasNr4rU[0]"]["audio"][2, 0] = -np.inf  # COVAREP holds -inf
    write_csd_corpus(tmp_path, corpus)
    write_pickle(tmp_path / "mosi_data.pkl", corpus)
    for fmt in ("csd", "pickle"):
        zero = MosiAdapter(format=fmt)
        table = zero.load(tmp_path)
        bad = ("2iHdgb4pbc8[3]", "tmZoasNr4rU[0]")
        if fmt == "pickle":  # the pickle's ids: video|start|end
            bad = tuple(f"{s.split('[')[0]}|{corpus[s]['start']}|{corpus[s]['end']}" for s in bad)
        assert len(table) == 9 and zero.nonfinite == bad
        X = zero.features(tmp_path, table)
        assert np.isfinite(X).all()
        skip = MosiAdapter(format=fmt, nonfinite="skip")
        assert len(skip.load(tmp_path)) == 7 and set(skip.left_out) >= set(zero.nonfinite)
        with pytest.raises(DataError, match=r"NaN/inf .*2iHdgb4pbc8.*pass nonfinite='zero'") as excinfo:
            MosiAdapter(format=fmt, nonfinite="error").load(tmp_path)
        _one_line(excinfo)
    with pytest.raises(DataError, match=r"FACET_4.2.csd: NaN/inf in data/'2iHdgb4pbc8\[3\]'/features"):
        MosiAdapter(format="csd", nonfinite="error").load(tmp_path)
    zero = MosiAdapter(format="csd")
    X = zero.features(tmp_path, zero.load(tmp_path))
    steps = np.nan_to_num(corpus["2iHdgb4pbc8[3]"]["vision"], nan=0.0)
    np.testing.assert_allclose(X[5, -3:], time_average(steps), rtol=1e-6)


def test_format_follows_the_root_folder(tmp_path, corpus):
    write_csd_corpus(tmp_path, corpus)
    assert set(MosiAdapter().load(tmp_path)["path"]) == {"Opinion Segment Labels.csd"}
    write_pickle(tmp_path / "mosi_data.pkl", corpus)
    assert set(MosiAdapter().load(tmp_path)["path"]) == {"mosi_data.pkl"}  # the pickle wins when both are there
    assert set(MosiAdapter(format="csd").load(tmp_path)["path"]) == {"Opinion Segment Labels.csd"}
    with pytest.raises(DataError, match=r"none of \['mosei_senti_data.pkl', 'mosei_senti_data_noalign.pkl'\] "
                                        r"found, nor a labels .csd \(\['All Labels.csd', 'CMU_MOSEI_Labels.csd'\]\)"):
        MoseiAdapter().load(tmp_path)


def test_file_names_from_options(tmp_path, corpus):
    sub = tmp_path / "aligned"
    sub.mkdir()
    write_csd_corpus(sub, corpus)
    (sub / "COVAREP.csd").rename(sub / "my_audio.csd")
    (sub / "standard_folds.json").rename(tmp_path / "folds.json")
    options = {"modalities": ["audio"], "audio": "aligned/my_audio", "labels": "aligned/Opinion Segment Labels.csd",
               "folds": "folds.json"}  # as a spec's corpora[].options would pass them
    adapter = MosiAdapter(**options)
    table = adapter.load(tmp_path)
    assert len(table) == 9 and set(table["path"]) == {"aligned/Opinion Segment Labels.csd"}
    assert adapter.features(tmp_path, table).shape == (9, DIMS["audio"])
    with pytest.raises(DataError, match=r"no audio .csd found \(looked for \['COVAREP.csd', 'CMU_MOSI_COVAREP.csd'\]\)"
                                        r"; pass audio=FILE or leave 'audio' out of modalities") as excinfo:
        MosiAdapter(folds="../folds.json").load(sub)
    _one_line(excinfo)
    for bad in ({"format": "hdf5"}, {"nonfinite": "drop"}, {"modalities": ["audio", "speech"]}):
        with pytest.raises(ConfigError, match=r"^mosi: "):
            MosiAdapter(**bad)


def test_missing_folds_file(tmp_path, corpus):
    write_csd_corpus(tmp_path, corpus, folds=False)
    with pytest.raises(DataError, match=r"standard_folds.json: standard folds not found; save mmsdk's standard_folds "
                                        r"there as JSON .* or pass folds=FILE") as excinfo:
        MosiAdapter().load(tmp_path)
    _one_line(excinfo)
    (tmp_path / "standard_folds.json").write_text(json.dumps({"train": ["a"], "valid": ["a"], "test": []}))
    with pytest.raises(DataError, match=r"standard_folds.json: video 'a' is in both 'train' and 'valid'"):
        MosiAdapter().load(tmp_path)
    (tmp_path / "standard_folds.json").write_text(json.dumps({"train": [], "test": []}))
    with pytest.raises(DataError, match=r"standard_folds.json: expected .* got \['test', 'train'\]"):
        MosiAdapter().load(tmp_path)


def test_corrupt_or_foreign_csd(tmp_path, corpus):
    write_csd_corpus(tmp_path, corpus)
    (tmp_path / "COVAREP.csd").write_bytes(b"this is not HDF5")
    with pytest.raises(DataError, match=r"COVAREP.csd: not a readable HDF5 computational sequence") as excinfo:
        MosiAdapter().load(tmp_path)
    _one_line(excinfo)
    with h5py.File(tmp_path / "COVAREP.csd", "w") as handle:  # HDF5, but not the SDK layout
        handle.create_dataset("features", data=np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"COVAREP.csd: expected one top-level group holding 'data'") as excinfo:
        MosiAdapter().load(tmp_path)
    _one_line(excinfo)
    labels = tmp_path / "Opinion Segment Labels.csd"
    write_csd(labels, "Opinion Segment Labels",  # not aligned: one video, several segments
              {"03bSnISJMiM": {"features": np.zeros((3, 1)), "intervals": np.zeros((3, 2))}})
    with pytest.raises(DataError, match=r"data/'03bSnISJMiM'/features has shape \(3, 1\); .* align the labels"):
        MosiAdapter().load(tmp_path)
    write_csd(labels, "Opinion Segment Labels", {"a[0]": {"features": [[3.5]], "intervals": [[0.0, 1.0]]}})
    with pytest.raises(DataError, match=r"data/'a\[0\]' sentiment = 3.5 is outside \[-3.0, 3.0\]"):
        MosiAdapter().load(tmp_path)


def test_h5py_is_optional(tmp_path, corpus, monkeypatch):
    write_csd_corpus(tmp_path, corpus)
    monkeypatch.setitem(sys.modules, "h5py", None)  # `import h5py` now raises ImportError
    with pytest.raises(DataError, match=r"needs the Python package 'h5py' .*pip install h5py") as excinfo:
        MosiAdapter().load(tmp_path)
    _one_line(excinfo)
    write_pickle(tmp_path / "mosi_data.pkl", corpus)
    assert len(MosiAdapter().load(tmp_path)) == 9  # the pickle path does not need it


def test_a_dataset_without_extractor_reads_the_features_the_corpus_ships(tmp_path, corpus):
    """`dataset.extractor: null` → load_corpora takes the adapter's own (time-averaged) features."""
    from fairray.config import CorpusSource, DatasetConfig
    from fairray.data._dataset import load_corpora
    from fairray.data.corpora import CORPORA
    from fairray.errors import DataError

    root = tmp_path / "mosi"
    root.mkdir()
    write_csd_corpus(root, corpus)
    cfg = DatasetConfig(name="corpora", corpora=(CorpusSource("mosi", str(root)),), extractor=None)
    meta, X, provenance, aux = load_corpora(cfg, cache_root=str(tmp_path / "cache"))
    adapter = CORPORA.get("mosi")()
    table = adapter.load(root)
    assert list(meta["uid"]) == list(table["uid"]) and aux == {}
    np.testing.assert_array_equal(X, adapter.features(root, table))
    assert provenance["extractor"] == "shipped" and len(provenance["input_fingerprint"]) == 64
    # a corpus without shipped features needs an extractor
    other = DatasetConfig(name="corpora", corpora=(CorpusSource("emodb", str(root)),), extractor=None)
    with pytest.raises(DataError, match="ships no features; name an extractor"):
        load_corpora(other, cache_root=str(tmp_path / "cache"))
