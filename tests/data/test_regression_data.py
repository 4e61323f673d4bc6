"""``dataset.targets: regression`` on a small MOSI folder in MulT's pickle layout: float ``y``, no classes, the
gender from the adapter's ``demographics`` CSV; bad input in one line."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from fairray.config import CorpusSource, DatasetConfig, NamedParams
from fairray.data import prepare
from fairray.data.corpora.mosi import MosiAdapter
from fairray.errors import DataError

LABELS = {"train": [-3.0, -0.4, 0.0, 1.2, 3.0, 2.0], "valid": [0.6, -1.8], "test": [0.0, -2.2, 2.4]}


def _write(folder, labels=LABELS):
    data = {}
    for split, values in labels.items():
        n = len(values)
        rng = np.random.default_rng(n)
        ids = np.array([[f"{split}{i % 2}".encode(), str(i).encode(), str(i + 1).encode()] for i in range(n)],
                       dtype=object)
        data[split] = {m: rng.normal(size=(n, 4, d)).astype(np.float32) for m, d in (("text", 3), ("audio", 2),
                                                                                     ("vision", 2))}
        data[split].update(labels=np.asarray(values, np.float32).reshape(n, 1, 1), id=ids)
    with open(folder / "mosi_data.pkl", "wb") as handle:
        pickle.dump(data, handle)
    (folder / "genders.csv").write_text("video_id,gender\ntrain0,F\ntrain1,M\nvalid0,F\nvalid1,M\ntest0,F\n")


def _cfg(folder, **kw) -> DatasetConfig:
    options = kw.pop("options", {"demographics": "genders.csv"})
    return DatasetConfig(name="corpora", corpora=(CorpusSource("mosi", str(folder), options),),
                         protocol=NamedParams("corpus_split"), extractor=None, targets="regression", languages=("en",),
                         cache=str(folder / "cache"), **kw)


def test_regression_targets_are_the_float_sentiment_with_no_classes(tmp_path):
    _write(tmp_path)
    data = prepare(_cfg(tmp_path))
    assert data.task == "regression" and data.classes == () and data.y.dtype == np.float32
    train = data.indices("train")
    np.testing.assert_allclose(data.y[train], LABELS["train"], rtol=1e-6)
    assert data.soft.shape == (len(data.y), 1)
    # genders from the CSV: video train0 -> F, train1 -> M; test1 is not listed -> U (outside every group)
    assert data.attr_values == ("F", "M")
    test_videos = data.meta.loc[data.indices("test"), "video_id"].tolist()
    assert [data.attr_values[a] if a >= 0 else "U" for a in data.attr[data.indices("test")]] == [
        "F" if v == "test0" else "U" for v in test_videos]
    assert data.X.shape[1] == 7  # the time-averaged text, audio and vision features side by side


def test_the_demographics_file_is_checked(tmp_path):
    _write(tmp_path)
    with pytest.raises(DataError, match="demographics file .*nope.csv not found"):
        MosiAdapter(demographics="nope.csv").load(tmp_path)
    (tmp_path / "bad.csv").write_text("video,sex\na,F\n")
    with pytest.raises(DataError, match=r"demographics lacks column\(s\) \['video_id', 'gender'\]"):
        MosiAdapter(demographics="bad.csv").load(tmp_path)
    assert set(MosiAdapter().load(tmp_path)["gender"]) == {"U"}


def test_a_target_column_the_corpus_lacks_is_one_clear_error(tmp_path):
    _write(tmp_path)
    with pytest.raises(DataError, match="has no column 'sentiment'.*targets: regression reads dataset.target"):
        prepare(_cfg(tmp_path, target="sentiment"))


def test_spec_level_refusals():
    with pytest.raises(ValueError, match="targets: regression needs a continuous target column, which the built-in"):
        DatasetConfig(targets="regression")
    with pytest.raises(ValueError, match="target .* is the column of targets: regression"):
        DatasetConfig(target="reg_target")
