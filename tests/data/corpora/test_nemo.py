"""nEMO adapter: the official samples/ + data.tsv layout rebuilt from the real files and manifest."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fairray.data.corpora import CORPORA
from fairray.data.corpora.nemo import TSV_COLUMNS, NemoAdapter
from fairray.errors import DataError

HEADER = "\t".join(TSV_COLUMNS)


def _tsv_line(file_id, emotion, speaker, gender="female", age="27", text="Lubię czytać przed snem.",
              normalized=None):
    # The official data.tsv right-aligns speaker_id in a padded field ("        EB0").
    normalized = text.lower().rstrip(".") if normalized is None else normalized
    return "\t".join([file_id, emotion, text, normalized, f"{speaker:>11}", gender, age])


def _write(root, lines, files):
    (root / "samples").mkdir(exist_ok=True)
    (root / "data.tsv").write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
    for name in files:
        (root / "samples" / name).write_bytes(b"")
    return root


@pytest.fixture
def native(corpora, tmp_path):
    """samples/ symlinked to the real FLACs + data.tsv in the official columns, rows shuffled as upstream."""
    manifest = pd.read_csv(corpora / "nemo" / "manifest.csv", dtype=str, keep_default_na=False)
    (tmp_path / "samples").mkdir()
    for rel in manifest["path"]:
        (tmp_path / "samples" / Path(rel).name).symlink_to(corpora / "nemo" / rel)
    gender = {"F": "female", "M": "male"}
    lines = [_tsv_line(Path(r.source_file).name, "surprised" if r.emotion == "surprise" else r.emotion,
                       r.speaker.removeprefix("nemo_"), gender[r.gender], r.age, r.text, r.normalized_text)
             for r in manifest.sample(frac=1.0, random_state=0).itertuples()]
    (tmp_path / "data.tsv").write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
    return tmp_path


def test_registered_with_its_layout():
    assert CORPORA.get("nemo") is NemoAdapter
    assert "data.tsv" in NemoAdapter.layout() and "samples/" in NemoAdapter.layout()


@pytest.mark.corpora
def test_real_corpus_counts(native):
    table = NemoAdapter().load(native)
    assert len(table) == 1514
    assert table["gender"].value_counts().to_dict() == {"F": 690, "M": 824}
    assert table["emotion"].value_counts().to_dict() == {
        "neutral": 269, "happiness": 261, "sadness": 257, "anger": 252, "fear": 251, "surprise": 224}
    ages = table.drop_duplicates("speaker").set_index("speaker")["age"].to_dict()
    assert ages == {"nemo_EB0": 27, "nemo_IC0": 28, "nemo_KD0": 28, "nemo_MK0": 23, "nemo_KS0": 23,
                    "nemo_MP0": 24, "nemo_SM0": 24, "nemo_TP0": 26, "nemo_WR0": 23}
    assert table["sentence_id"].between(1, 30).all() and set(table["language"]) == {"pl"}


@pytest.mark.corpora
def test_real_corpus_agrees_with_manifest(native, corpora):
    table = NemoAdapter().load(native)
    manifest = pd.read_csv(corpora / "nemo" / "manifest.csv", dtype=str, keep_default_na=False)
    table = table.assign(key=[Path(p).name for p in table["path"]]).set_index("key").sort_index()
    manifest = manifest.assign(key=[Path(p).name for p in manifest["path"]]).set_index("key").sort_index()
    assert list(table.index) == list(manifest.index)
    table["age"] = table["age"].astype(str)
    table["sentence_id"] = table["sentence_id"].astype(str)
    for column in ("speaker", "gender", "age", "emotion", "sentence_id", "text", "normalized_text"):
        assert (table[column] == manifest[column]).all(), column


def test_decodes_a_row(tmp_path):
    line = _tsv_line("KS0_surprised_38.wav", "surprised", "KS0", "male", "23", "Dzieci muszą, jeść.")
    root = _write(tmp_path, [line], ["KS0_surprised_38.flac"])
    assert NemoAdapter().load(root).iloc[0].to_dict() == {
        "uid": "nemo/KS0_surprised_38", "corpus": "nemo", "path": "samples/KS0_surprised_38.flac",
        "speaker": "nemo_KS0", "gender": "M", "age": 23, "language": "pl", "emotion": "surprise", "sentence_id": 38,
        "text": "Dzieci muszą, jeść.", "normalized_text": "dzieci muszą, jeść"}


def test_row_without_audio_names_line_and_file(tmp_path):
    lines = [_tsv_line("EB0_anger_1.wav", "anger", "EB0"), _tsv_line("EB0_anger_2.wav", "anger", "EB0")]
    root = _write(tmp_path, lines, ["EB0_anger_1.wav"])
    with pytest.raises(DataError, match=r"data.tsv: line 3: no audio file .*samples/EB0_anger_2.wav"):
        NemoAdapter().load(root)


def test_audio_without_row_names_the_file(tmp_path):
    root = _write(tmp_path, [_tsv_line("EB0_anger_1.wav", "anger", "EB0")], ["EB0_anger_1.wav", "EB0_fear_1.wav"])
    with pytest.raises(DataError, match=r"samples/EB0_fear_1.wav: no row in .*data.tsv"):
        NemoAdapter().load(root)


@pytest.mark.parametrize(("line", "message"), [
    (_tsv_line("EB0_joy_1.wav", "joy", "EB0"), r"line 2, column 'emotion' is 'joy'"),
    (_tsv_line("EB0_anger_1.wav", "anger", "EB0", gender="f"), r"line 2, column 'gender' is 'f'"),
    (_tsv_line("EB0_anger_1.wav", "anger", "EB0", age="?"), r"line 2, column 'age' is '\?'"),
    (_tsv_line("EB0_anger_1.wav", "fear", "EB0"), r"line 2: file_id 'EB0_anger_1.wav' disagrees"),
    (_tsv_line("EB0-anger-1.wav", "anger", "EB0"), r"line 2, column 'file_id' is 'EB0-anger-1.wav'"),
])
def test_bad_metadata_names_line_and_column(tmp_path, line, message):
    root = _write(tmp_path, [line], ["EB0_anger_1.wav"])
    with pytest.raises(DataError, match=message):
        NemoAdapter().load(root)


def test_missing_metadata(tmp_path):
    (tmp_path / "samples").mkdir()
    with pytest.raises(DataError, match=r"data.tsv: not found"):
        NemoAdapter().load(tmp_path)
    (tmp_path / "data.tsv").write_text("file_id\temotion\nEB0_anger_1.wav\tanger\n")
    with pytest.raises(DataError, match=r"data.tsv: missing column\(s\) \['raw_text', 'normalized_text', "):
        NemoAdapter().load(tmp_path)


def test_speaker_with_two_genders_is_an_error(tmp_path):
    root = _write(tmp_path, [_tsv_line("EB0_anger_1.wav", "anger", "EB0"),
                             _tsv_line("EB0_anger_2.wav", "anger", "EB0", gender="male")],
                  ["EB0_anger_1.wav", "EB0_anger_2.wav"])
    with pytest.raises(DataError, match=r"speaker 'nemo_EB0' has more than one gender"):
        NemoAdapter().load(root)
