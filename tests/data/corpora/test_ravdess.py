"""RAVDESS adapter: native Actor_XX/ file names decoded, checked against the real corpus and its manifest."""

from __future__ import annotations

import pandas as pd
import pytest

from fairray.data.corpora import CORPORA
from fairray.data.corpora.ravdess import RavdessAdapter
from fairray.errors import DataError


def _layout(tmp_path, names):
    """An Actor_XX layout of empty files (load never decodes audio)."""
    for name in names:
        actor = name.split(".")[0].split("-")[-1]
        path = tmp_path / f"Actor_{actor}" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
    return tmp_path


def test_registered_with_its_layout():
    assert CORPORA.get("ravdess") is RavdessAdapter
    assert "Actor_01/" in RavdessAdapter.layout() and "song" in RavdessAdapter.layout()


@pytest.mark.corpora
def test_real_corpus_counts(corpora):
    table = RavdessAdapter().load(corpora / "ravdess" / "audio")
    assert len(table) == 1440
    assert table["speaker"].nunique() == 24
    assert table.groupby("gender")["speaker"].nunique().to_dict() == {"F": 12, "M": 12}
    assert table["gender"].value_counts().to_dict() == {"F": 720, "M": 720}
    assert table["emotion"].value_counts().to_dict() == {
        "neutral": 96, "calm": 192, "happiness": 192, "sadness": 192, "anger": 192, "fear": 192, "disgust": 192,
        "surprise": 192}
    assert table["intensity"].value_counts().to_dict() == {"normal": 768, "strong": 672}
    assert set(table["language"]) == {"en"} and table["path"].str.endswith(".flac").all()
    assert table.loc[table["uid"] == "ravdess/03-01-08-02-02-01-24", "speaker"].item() == "ravdess_24"


@pytest.mark.corpora
def test_real_corpus_agrees_with_manifest_row_by_row(corpora):
    table = RavdessAdapter().load(corpora / "ravdess" / "audio")
    manifest = pd.read_csv(corpora / "ravdess" / "manifest.csv", dtype=str, keep_default_na=False)
    table = table.assign(path="audio/" + table["path"]).set_index("path").sort_index()
    manifest = manifest.set_index("path").sort_index()
    assert list(table.index) == list(manifest.index)
    for column in ("speaker", "gender", "language", "emotion", "intensity", "text", "statement_id", "repetition"):
        assert (table[column] == manifest[column]).all(), column


def test_song_files_are_skipped(tmp_path):
    root = _layout(tmp_path, ["03-01-05-02-01-01-01.wav", "03-02-05-02-01-01-01.wav", "03-01-02-01-02-02-02.flac"])
    table = RavdessAdapter().load(root)
    assert table[["uid", "speaker", "gender", "emotion", "intensity", "text"]].to_dict("records") == [
        {"uid": "ravdess/03-01-05-02-01-01-01", "speaker": "ravdess_01", "gender": "M", "emotion": "anger",
         "intensity": "strong", "text": "Kids are talking by the door"},
        {"uid": "ravdess/03-01-02-01-02-02-02", "speaker": "ravdess_02", "gender": "F", "emotion": "calm",
         "intensity": "normal", "text": "Dogs are sitting by the door"},
    ]


@pytest.mark.parametrize(("name", "message"), [
    ("03-01-05-02-01-01.wav", "does not follow the RAVDESS coding"),
    ("03-01-05-02-01-01-01 (copy).wav", "does not follow the RAVDESS coding"),
    ("03-01-09-01-01-01-01.wav", "emotion code '09'"),
    ("01-01-05-01-01-01-01.wav", "modality '01' is not audio-only"),
    ("03-01-05-03-01-01-01.wav", "intensity code '03'"),
    ("03-01-05-01-01-01-25.wav", "actor '25'"),
])
def test_malformed_names_are_named(tmp_path, name, message):
    folder = tmp_path / "Actor_01"
    folder.mkdir()
    (folder / name).write_bytes(b"")
    with pytest.raises(DataError, match=message) as err:
        RavdessAdapter().load(tmp_path)
    assert name in str(err.value)


def test_actor_must_match_its_folder(tmp_path):
    (tmp_path / "Actor_02").mkdir()
    (tmp_path / "Actor_02" / "03-01-05-01-01-01-01.wav").write_bytes(b"")
    with pytest.raises(DataError, match=r"03-01-05-01-01-01-01.wav: actor '01' in the file name differs"):
        RavdessAdapter().load(tmp_path)


def test_empty_root_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no Actor_XX folders"):
        RavdessAdapter().load(tmp_path)
    (tmp_path / "Actor_01").mkdir()
    with pytest.raises(DataError, match="no RAVDESS speech files"):
        RavdessAdapter().load(tmp_path)
