"""EmoDB adapter: a native wav/ layout built from the real files, checked against the counts and manifest."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fairray.data.corpora import CORPORA
from fairray.data.corpora.emodb import EmoDBAdapter
from fairray.errors import DataError


@pytest.fixture
def native(corpora, tmp_path):
    """root/wav/<name>.flac → the real files of <corpora>/emodb/audio/."""
    (tmp_path / "wav").mkdir()
    for src in (corpora / "emodb" / "audio").glob("*.flac"):
        (tmp_path / "wav" / src.name).symlink_to(src)
    return tmp_path


def test_registered_with_its_layout():
    assert CORPORA.get("emodb") is EmoDBAdapter
    assert "wav/" in EmoDBAdapter.layout() and "03a01Fa" in EmoDBAdapter.layout()


@pytest.mark.corpora
def test_real_corpus_counts(native):
    table = EmoDBAdapter().load(native)
    assert len(table) == 535
    assert table["gender"].value_counts().to_dict() == {"F": 302, "M": 233}
    assert table["emotion"].value_counts().to_dict() == {
        "anger": 127, "boredom": 81, "neutral": 79, "happiness": 71, "fear": 69, "sadness": 62, "disgust": 46}
    speakers = table.drop_duplicates("speaker").set_index("speaker")
    assert speakers[["gender", "age"]].apply(tuple, axis=1).to_dict() == {
        "emodb_03": ("M", 31), "emodb_08": ("F", 34), "emodb_09": ("F", 21), "emodb_10": ("M", 32),
        "emodb_11": ("M", 26), "emodb_12": ("M", 30), "emodb_13": ("F", 32), "emodb_14": ("F", 35),
        "emodb_15": ("M", 25), "emodb_16": ("F", 31)}
    assert table["text_id"].nunique() == 10 and set(table["language"]) == {"de"}


@pytest.mark.corpora
def test_real_corpus_agrees_with_manifest(native, corpora):
    table = EmoDBAdapter().load(native)
    manifest = pd.read_csv(corpora / "emodb" / "manifest.csv", dtype=str, keep_default_na=False)
    table = table.assign(key=[Path(p).name for p in table["path"]]).set_index("key").sort_index()
    manifest = manifest.assign(key=[Path(p).name for p in manifest["path"]]).set_index("key").sort_index()
    assert list(table.index) == list(manifest.index)
    table["age"] = table["age"].astype(str)
    for column in ("speaker", "gender", "age", "emotion", "text_id", "text", "version"):
        assert (table[column] == manifest[column]).all(), column


@pytest.mark.parametrize(("name", "message"), [
    ("03a01F.wav", "does not follow the EmoDB coding"),
    ("3a01Fa.wav", "does not follow the EmoDB coding"),
    ("99a01Fa.wav", "speaker '99' is not in the EmoDB speaker table"),
    ("03a03Fa.wav", "text code 'a03'"),
    ("03a01Xa.wav", "emotion letter 'X'"),
])
def test_malformed_names_are_named(tmp_path, name, message):
    (tmp_path / "wav").mkdir()
    (tmp_path / "wav" / name).write_bytes(b"")
    with pytest.raises(DataError, match=message) as err:
        EmoDBAdapter().load(tmp_path)
    assert name in str(err.value)


def test_decodes_a_name_and_needs_the_wav_folder(tmp_path):
    with pytest.raises(DataError, match=r"wav: folder not found"):
        EmoDBAdapter().load(tmp_path)
    (tmp_path / "wav").mkdir()
    (tmp_path / "wav" / "16b10Td.wav").write_bytes(b"")
    (tmp_path / "wav" / "notes.txt").write_text("ignored")
    row = EmoDBAdapter().load(tmp_path).iloc[0].to_dict()
    assert row == {"uid": "emodb/16b10Td", "corpus": "emodb", "path": "wav/16b10Td.wav", "speaker": "emodb_16",
                   "gender": "F", "age": 31, "language": "de", "emotion": "sadness", "text_id": "b10",
                   "text": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.", "version": "d"}
