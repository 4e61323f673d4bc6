"""IEMOCAP adapter on a small layout-faithful fixture (no real IEMOCAP is available)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf

from fairray.data.corpora import CORPORA
from fairray.data.corpora.iemocap import IemocapAdapter
from fairray.errors import DataError

HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def _block(start, end, utterance, label, vad="[2.5000, 2.5000, 2.5000]"):
    # One utterance: the consensus line, then per-evaluator lines that the adapter skips.
    return (f"[{start} - {end}]\t{utterance}\t{label}\t{vad}\n"
            "C-E2:\tNeutral;\t()\nC-E3:\tNeutral;\t()\n"
            "A-E3:\tval 3; act 2; dom  2;\t()\n\n")


def _wav(path, seconds=0.2, sr=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.1 * np.sin(2 * np.pi * 220 * t), sr, subtype="PCM_16")


def _dialog(root, session, dialog, blocks, transcript=None, suffix=".wav"):
    base = root / f"Session{session}"
    (base / "dialog" / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
    (base / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text(HEADER + "".join(b[0] for b in blocks))
    if transcript is not None:
        (base / "dialog" / "transcriptions").mkdir(parents=True, exist_ok=True)
        (base / "dialog" / "transcriptions" / f"{dialog}.txt").write_text(transcript)
    for _, utterance in blocks:
        _wav(base / "sentences" / "wav" / dialog / f"{utterance}{suffix}")


ONE = (_block("1.0", "2.0", "Ses01F_impro01_F000", "neu"), "Ses01F_impro01_F000")


@pytest.fixture
def corpus(tmp_path):
    _dialog(tmp_path, 1, "Ses01F_impro01", [
        (_block("6.2901", "8.2357", "Ses01F_impro01_F000", "neu"), "Ses01F_impro01_F000"),
        (_block("10.0100", "11.3925", "Ses01F_impro01_M000", "fru", "[2.0000, 3.5000, 3.0000]"), "Ses01F_impro01_M000"),
        (_block("8.5000", "9.9000", "Ses01F_impro01_F001", "xxx"), "Ses01F_impro01_F001"),
    ], transcript=("Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.\n"
                   "Ses01F_impro01_F001 [008.5000-009.9000]: Do you have your forms?\n"
                   "Ses01F_impro01_M000 [010.0100-011.3925]: Yeah.\n"
                   "M: [BREATHING]\n"))
    _dialog(tmp_path, 2, "Ses02M_script01_1", [
        (_block("1.0000", "2.5000", "Ses02M_script01_1_M000", "ang"), "Ses02M_script01_1_M000"),
        (_block("3.0000", "4.0000", "Ses02M_script01_1_F000", "exc"), "Ses02M_script01_1_F000"),
    ], suffix=".flac")
    return tmp_path


def test_registered_with_its_layout():
    assert CORPORA.get("iemocap") is IemocapAdapter
    assert "EmoEvaluation" in IemocapAdapter.layout() and "sentences/wav" in IemocapAdapter.layout()


def test_parses_labels_speakers_and_ratings(corpus):
    table = IemocapAdapter().load(corpus).set_index("uid")
    assert len(table) == 5
    assert table["speaker"].to_dict() == {
        "iemocap/Ses01F_impro01_F000": "iemocap_01F", "iemocap/Ses01F_impro01_M000": "iemocap_01M",
        "iemocap/Ses01F_impro01_F001": "iemocap_01F", "iemocap/Ses02M_script01_1_M000": "iemocap_02M",
        "iemocap/Ses02M_script01_1_F000": "iemocap_02F"}
    assert table["gender"].tolist() == ["F", "M", "F", "M", "F"]
    assert table["emotion"].tolist() == ["neutral", "frustration", "other", "anger", "excitement"]
    assert table["emotion_raw"].tolist() == ["neu", "fru", "xxx", "ang", "exc"]
    row = table.loc["iemocap/Ses01F_impro01_M000"]
    assert (row["valence"], row["arousal"], row["dominance"]) == (2.0, 3.5, 3.0)
    assert (row["start_s"], row["end_s"], row["session"]) == (10.01, 11.3925, 1)
    assert row["path"] == "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M000.wav"
    assert table.loc["iemocap/Ses02M_script01_1_F000", "path"].endswith("Ses02M_script01_1_F000.flac")
    assert table["dialogue_id"].tolist() == ["Ses01F_impro01"] * 3 + ["Ses02M_script01_1"] * 2
    assert table["utt_pos"].tolist() == [0, 2, 1, 0, 1]
    assert table["improvised"].tolist() == [True, True, True, False, False]
    assert set(table["language"]) == {"en"} and set(table["corpus"]) == {"iemocap"}


def test_joins_transcripts_when_present(corpus):
    table = IemocapAdapter().load(corpus).set_index("uid")
    assert table.loc["iemocap/Ses01F_impro01_F000", "text"] == "Excuse me."
    assert table.loc["iemocap/Ses01F_impro01_F001", "text"] == "Do you have your forms?"
    assert table.loc["iemocap/Ses01F_impro01_M000", "text"] == "Yeah."
    assert math.isnan(table.loc["iemocap/Ses02M_script01_1_M000", "text"])  # Session2 has no transcriptions


@pytest.mark.parametrize(("line", "message"), [
    ("[6.2901 - 8.2357]\tSes01F_impro01_F009\tneu\n", r"Ses01F_impro01.txt: line 8 is not"),
    ("[6.2901 - x]\tSes01F_impro01_F009\tneu\t[2.5, 2.5, 2.5]\n", r"Ses01F_impro01.txt: line 8 is not"),
    ("[6.2901 - 8.2357]\tSes01F_impro01_F009\tjoy\t[2.5, 2.5, 2.5]\n", r"Ses01F_impro01.txt: line 8: label 'joy'"),
    ("[6.2901 - 8.2357]\tSes01F_impro02_F009\tneu\t[2.5, 2.5, 2.5]\n",
     r"Ses01F_impro01.txt: line 8: utterance id 'Ses01F_impro02_F009'"),
    ("[6.2901 - 8.2357]\tSes01F_impro01_X009\tneu\t[2.5, 2.5, 2.5]\n",
     r"Ses01F_impro01.txt: line 8: utterance id 'Ses01F_impro01_X009'"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    _dialog(tmp_path, 1, "Ses01F_impro01", [ONE])
    with open(tmp_path / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt", "a") as handle:
        handle.write(line)
    with pytest.raises(DataError, match=message):
        IemocapAdapter().load(tmp_path)


def test_wrong_session_and_missing_audio(tmp_path):
    _dialog(tmp_path, 2, "Ses01F_impro01", [ONE])
    with pytest.raises(DataError, match=r"line 3: utterance 'Ses01F_impro01_F000' is not from Session2"):
        IemocapAdapter().load(tmp_path)
    (tmp_path / "Session2").rename(tmp_path / "Session1")
    (tmp_path / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_F000.wav").unlink()
    with pytest.raises(DataError, match=r"row 2, column 'path': .*Ses01F_impro01_F000.wav does not exist"):
        IemocapAdapter().load(tmp_path)


def test_missing_layout(tmp_path):
    with pytest.raises(DataError, match="no Session1..Session5 folders"):
        IemocapAdapter().load(tmp_path)
    (tmp_path / "Session1").mkdir()
    with pytest.raises(DataError, match=r"EmoEvaluation: no EmoEvaluation/\*.txt files"):
        IemocapAdapter().load(tmp_path)
