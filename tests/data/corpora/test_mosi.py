"""MOSI/MOSEI adapters on small pickles laid out like MulT's mosi_data.pkl / mosei_senti_data.pkl."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from fairray.data.corpora import CORPORA
from fairray.data.corpora.mosi import MoseiAdapter, MosiAdapter
from fairray.errors import DataError

LABELS = {"train": [-3.0, -0.4, 0.0, 1.2, 3.0], "valid": [0.6, -1.8], "test": [0.0, -2.2, 2.4]}
VIDEOS = {"train": ["03bSnISJMiM", "03bSnISJMiM", "0h-zjBukYpk", "1DmNV9C1hbY", "1DmNV9C1hbY"],
          "valid": ["2iHdgb4pbc8", "2iHdgb4pbc8"], "test": ["tmZoasNr4rU", "tmZoasNr4rU", "zhpQhgha_KU"]}


def _split(labels, videos, *, as_bytes=True, seq=50):
    """One split as in MulT's pickles; feature widths (300/74/35 here) are not read by the adapter."""
    n = len(labels)
    rng = np.random.default_rng(n)
    ids = np.array([[v, str(i), str(i + 1)] for i, v in enumerate(videos)], dtype=object)
    if as_bytes:  # MulT's MOSI ids are byte strings (its loader decodes them)
        ids = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(ids)
    return {"text": rng.normal(size=(n, seq, 300)).astype(np.float32),
            "audio": rng.normal(size=(n, seq, 74)).astype(np.float32),
            "vision": rng.normal(size=(n, seq, 35)).astype(np.float32),
            "labels": np.asarray(labels, dtype=np.float32).reshape(n, 1, 1), "id": ids}


def _write(folder, name="mosi_data.pkl", protocol=pickle.HIGHEST_PROTOCOL, **kwargs):
    data = {key: _split(LABELS[key], VIDEOS[key], **kwargs) for key in ("train", "valid", "test")}
    with open(folder / name, "wb") as handle:
        pickle.dump(data, handle, protocol=protocol)
    return data


def test_registered_with_their_layouts():
    assert CORPORA.get("mosi") is MosiAdapter and CORPORA.get("mosei") is MoseiAdapter
    assert "mosi_data.pkl" in MosiAdapter.layout() and "mosei_senti_data.pkl" in MoseiAdapter.layout()


@pytest.mark.parametrize("protocol", [2, 3, pickle.HIGHEST_PROTOCOL])
def test_rows_targets_and_binary_labels(tmp_path, protocol):
    _write(tmp_path, protocol=protocol)
    table = MosiAdapter().load(tmp_path)
    assert len(table) == 10
    assert table.groupby("split").size().to_dict() == {"dev": 2, "test": 3, "train": 5}
    assert table["row"].tolist() == [0, 1, 2, 3, 4, 0, 1, 0, 1, 2]
    np.testing.assert_allclose(table["reg_target"], [-3.0, -0.4, 0.0, 1.2, 3.0, 0.6, -1.8, 0.0, -2.2, 2.4],
                               rtol=1e-6)
    assert table["binary_np"].tolist() == [0, 0, pd.NA, 1, 1, 1, 0, pd.NA, 0, 1]
    assert table["binary_nn"].tolist() == [0, 0, 1, 1, 1, 1, 0, 1, 0, 1]
    assert table["uid"].iloc[5] == "mosi/dev/0" and set(table["path"]) == {"mosi_data.pkl"}
    assert table["speaker"].iloc[:3].tolist() == ["mosi_03bSnISJMiM", "mosi_03bSnISJMiM", "mosi_0h-zjBukYpk"]
    assert table["video_id"].nunique() == 6 and table["segment_id"].iloc[1] == "03bSnISJMiM|1|2"
    assert set(table["gender"]) == {"U"} and set(table["emotion"]) == {"other"} and set(table["language"]) == {"en"}


def test_row_indexes_the_features_left_in_the_pickle(tmp_path):
    data = _write(tmp_path)
    table = MosiAdapter().load(tmp_path)
    rec = table[(table["split"] == "test")].iloc[2]
    assert float(data["test"]["labels"][rec["row"], 0, 0]) == pytest.approx(rec["reg_target"])


def test_mosei_file_and_string_ids(tmp_path):
    _write(tmp_path, name="mosei_senti_data.pkl", as_bytes=False)
    table = MoseiAdapter().load(tmp_path)
    assert len(table) == 10 and set(table["corpus"]) == {"mosei"}
    assert table["speaker"].iloc[-1] == "mosei_zhpQhgha_KU"
    with pytest.raises(DataError, match=r"none of \['mosi_data.pkl', 'mosi_data_noalign.pkl'\] found"):
        MosiAdapter().load(tmp_path)


def test_refuses_pickles_that_reference_code(tmp_path):
    with open(tmp_path / "mosi_data.pkl", "wb") as handle:
        pickle.dump({"train": {"labels": len}}, handle)  # not print: Ray's tqdm_ray swaps builtins.print once used
    with pytest.raises(DataError, match=r"mosi_data.pkl: the pickle references builtins.len"):
        MosiAdapter().load(tmp_path)


def test_bad_contents(tmp_path):
    data = _write(tmp_path)
    del data["valid"]
    (tmp_path / "mosi_data.pkl").write_bytes(pickle.dumps(data))
    with pytest.raises(DataError, match=r"mosi_data.pkl: missing split\(s\) \['valid'\]"):
        MosiAdapter().load(tmp_path)
    data = _write(tmp_path)
    data["test"]["labels"][1, 0, 0] = 3.5
    (tmp_path / "mosi_data.pkl").write_bytes(pickle.dumps(data))
    with pytest.raises(DataError, match=r"\['test'\]: labels\[1\] = 3.5 is outside \[-3.0, 3.0\]"):
        MosiAdapter().load(tmp_path)
    data = _write(tmp_path)
    data["train"]["audio"] = data["train"]["audio"][:3]
    (tmp_path / "mosi_data.pkl").write_bytes(pickle.dumps(data))
    with pytest.raises(DataError, match=r"\['train'\]: 'audio' has 3 rows, 'labels' 5"):
        MosiAdapter().load(tmp_path)
    data = _write(tmp_path)
    del data["valid"]["vision"]
    (tmp_path / "mosi_data.pkl").write_bytes(pickle.dumps(data))
    with pytest.raises(DataError, match=r"\['valid'\]: no 'vision' array; leave it out of modalities"):
        MosiAdapter().load(tmp_path)
    assert len(MosiAdapter(modalities=("text", "audio")).load(tmp_path)) == 10
    (tmp_path / "mosi_data.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"mosi_data.pkl: not a readable pickle"):
        MosiAdapter().load(tmp_path)
