"""Manifest adapter: the real shared corpora load as they are; broken manifests name file, row and column."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from fairray.data.corpora import CORPORA
from fairray.data.corpora.manifest import ManifestAdapter
from fairray.errors import DataError

ROW = {"path": "a.wav", "speaker": "x_1", "gender": "F", "language": "en", "emotion": "anger"}


def _folder(tmp_path, rows, name="mycorpus", files=("a.wav", "b.wav")):
    folder = tmp_path / name
    folder.mkdir()
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    for f in files:
        (folder / f).write_bytes(b"")
    return folder


def test_registered_with_its_layout():
    assert CORPORA.get("manifest") is ManifestAdapter
    assert "manifest.csv" in ManifestAdapter.layout()


@pytest.mark.corpora
@pytest.mark.parametrize(("corpus", "rows", "speakers", "genders"), [
    ("ravdess", 1440, 24, {"F": 720, "M": 720}),
    ("emodb", 535, 10, {"F": 302, "M": 233}),
    ("nemo", 1514, 9, {"F": 690, "M": 824}),
])
def test_real_corpora(corpora, corpus, rows, speakers, genders):
    table = ManifestAdapter().load(corpora / corpus)
    assert len(table) == rows
    assert table["speaker"].nunique() == speakers
    assert table["gender"].value_counts().to_dict() == genders
    assert (table["corpus"] == corpus).all()
    assert (table["uid"] == corpus + "/" + table["path"]).all()
    assert table["duration_s"].dtype == float and (table["duration_s"] > 0).all()
    assert table["age"].dtype == float


@pytest.mark.corpora
def test_real_emodb_keeps_extra_columns(corpora):
    table = ManifestAdapter().load(corpora / "emodb")
    assert {"text", "text_id", "recognition_rate", "source_file"} <= set(table.columns)
    assert table["age"].between(21, 35).all() and round(table["duration_s"].sum() / 3600, 3) == 0.297


def test_defaults_and_optional_columns(tmp_path):
    folder = _folder(tmp_path, [ROW, {**ROW, "path": "b.wav", "gender": "U"}])
    table = ManifestAdapter().load(folder)
    assert table["uid"].tolist() == ["mycorpus/a.wav", "mycorpus/b.wav"]
    assert table["corpus"].tolist() == ["mycorpus", "mycorpus"]
    folder = _folder(tmp_path, [{**ROW, "corpus": "other", "age": "", "votes": "1;2"},
                                {**ROW, "path": "b.wav", "corpus": "other", "age": "40", "votes": "0;3"}], name="c2")
    table = ManifestAdapter().load(folder)
    assert table["uid"].tolist() == ["other/a.wav", "other/b.wav"]
    assert math.isnan(table["age"].iloc[0]) and table["age"].iloc[1] == 40.0
    assert table["votes"].tolist() == ["1;2", "0;3"]


def test_missing_columns_are_listed(tmp_path):
    folder = _folder(tmp_path, [{"path": "a.wav", "speaker": "x_1", "language": "en"}])
    with pytest.raises(DataError, match=r"mycorpus/manifest.csv: missing column\(s\) \['gender', 'emotion'\]"):
        ManifestAdapter().load(folder)


def test_unknown_emotion_names_row_and_column(tmp_path):
    folder = _folder(tmp_path, [ROW, {**ROW, "path": "b.wav", "emotion": "happy"}])
    with pytest.raises(DataError, match=r"manifest.csv: row 3, column 'emotion' is 'happy'; expected one of"):
        ManifestAdapter().load(folder)


def test_empty_speaker_names_row(tmp_path):
    folder = _folder(tmp_path, [ROW, {**ROW, "path": "b.wav", "speaker": " "}])
    with pytest.raises(DataError, match=r"manifest.csv: row 3, column 'speaker' is empty"):
        ManifestAdapter().load(folder)


def test_missing_file_names_row_and_path(tmp_path):
    folder = _folder(tmp_path, [ROW, {**ROW, "path": "audio/c.wav"}])
    with pytest.raises(DataError, match=r"manifest.csv: row 3, column 'path': .*audio/c.wav does not exist"):
        ManifestAdapter().load(folder)


def test_bad_gender_and_age(tmp_path):
    folder = _folder(tmp_path, [{**ROW, "gender": "female"}])
    with pytest.raises(DataError, match=r"row 2, column 'gender' is 'female'"):
        ManifestAdapter().load(folder)
    folder = _folder(tmp_path, [{**ROW, "age": "thirty"}], name="c2")
    with pytest.raises(DataError, match=r"row 2, column 'age' is 'thirty'; expected a number"):
        ManifestAdapter().load(folder)


def test_no_manifest(tmp_path):
    with pytest.raises(DataError, match=r"manifest.csv: not found"):
        ManifestAdapter().load(tmp_path)
