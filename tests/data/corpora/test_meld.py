"""MELD adapter on the real release CSVs; MELD-ST adapter on a small layout-faithful fixture.

No MELD audio and no MELD-ST file exist here (MELD-ST is gated on Hugging Face): the MELD-ST fixture is
written by the test, following the layout of METHODS §4.4 (two language pairs, train/valid/test csv with
id, dia_id, utt_id, emotion, sentiment, English, German|Japanese, season, episode, speaker and times).
"""

from __future__ import annotations

import pandas as pd
import pytest

from fairray.data.corpora import CORPORA
from fairray.data.corpora.meld import MAIN_CAST_GENDER, Meld, MeldST, read_gender_map
from fairray.errors import ConfigError, DataError

CAST = {"Joey": 2070, "Ross": 2048, "Rachel": 1955, "Phoebe": 1797, "Monica": 1782, "Chandler": 1763}


@pytest.fixture(scope="module")
def root(corpora):
    path = corpora / "meld"
    if not (path / "train_sent_emo.csv").is_file():
        pytest.skip(f"no MELD CSVs under {path}")
    return path


@pytest.fixture(scope="module")
def table(root):
    return Meld(metadata_only=True, gender_map=root / "main_speaker_gender.csv").load(root)


def test_registered_with_their_layouts():
    assert CORPORA.get("meld") is Meld and CORPORA.get("meld_st") is MeldST
    assert "train_sent_emo.csv" in Meld.layout() and "train_splits/" in Meld.layout()
    assert "ENG_DEU/" in MeldST.layout() and "ENG_JPN/" in MeldST.layout()


@pytest.mark.corpora
def test_real_csvs_split_sizes_and_columns(table):
    assert table.groupby("split").size().to_dict() == {"train": 9989, "dev": 1109, "test": 2610}
    assert len(table) == 13708 and table["uid"].is_unique
    assert set(table["emotion"]) == {"neutral", "happiness", "surprise", "anger", "sadness", "disgust", "fear"}
    assert set(table["sentiment"]) == {"negative", "neutral", "positive"}
    for column in ("text", "dialogue_id", "utt_pos", "split", "sentiment", "season", "episode"):
        assert table[column].notna().all(), column
    first = table.iloc[0]
    assert first["uid"] == "meld/train/dia0_utt0" and first["path"] == "train_splits/dia0_utt0.mp4"
    assert first["speaker"] == "meld_Chandler" and first["text"].startswith("also I was the point person")


@pytest.mark.corpora
def test_real_csvs_main_cast_gender(table, root):
    cast = table[table["speaker_name"].isin(list(CAST))]
    assert len(cast) == 11415
    assert cast["speaker_name"].value_counts().to_dict() == CAST
    assert (cast["gender"] == cast["speaker_name"].map(MAIN_CAST_GENDER)).all()
    assert set(cast["gender_src"]) == {"speaker_map"}
    rest = table[~table["speaker_name"].isin(list(CAST))]
    assert set(rest["gender"]) == {"U"} and set(rest["gender_src"]) == {"unknown"}
    # the shipped map agrees with the built-in main cast
    assert read_gender_map(root / "main_speaker_gender.csv") == MAIN_CAST_GENDER
    assert Meld(metadata_only=True).load(root)["gender"].value_counts().to_dict() == {"M": 5881, "F": 5534,
                                                                                     "U": 2293}


@pytest.mark.corpora
def test_gender_map_csv_extends_and_is_checked(root, tmp_path):
    extra = tmp_path / "map.csv"
    extra.write_text("Speaker,gender\nJanice,F\nRoss,U\n")
    t = Meld(metadata_only=True, gender_map=extra, splits=("dev",)).load(root)
    assert len(t) == 1109
    assert set(t.loc[t["speaker_name"] == "Ross", "gender"]) == {"U"}
    assert set(t.loc[t["speaker_name"] == "Ross", "gender_src"]) == {"speaker_map"}
    extra.write_text("Speaker,gender\nJanice,female\n")
    with pytest.raises(DataError, match=r"map.csv: row 2, column 'gender' is 'female'"):
        Meld(metadata_only=True, gender_map=extra).load(root)
    with pytest.raises(ConfigError, match=r"splits must be a non-empty subset"):
        Meld(splits=("valid",))


@pytest.mark.corpora
def test_audio_layouts_and_missing_audio(root, tmp_path):
    for split in ("train", "dev", "test"):
        (tmp_path / f"{split}_sent_emo.csv").symlink_to(root / f"{split}_sent_emo.csv")
    with pytest.raises(DataError, match=r"no MELD audio/video found .*metadata_only=True"):
        Meld().load(tmp_path)
    for rel in ("train_splits/dia0_utt0.mp4", "dev/dia0_utt0.mp4", "dev/dia0_utt0.wav",
                "test/output_repeated_splits_test/dia0_utt1.flac", "test/output_repeated_splits_test/x.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    adapter = Meld()
    t = adapter.load(tmp_path)
    assert dict(zip(t["uid"], t["path"], strict=True)) == {
        "meld/train/dia0_utt0": "train_splits/dia0_utt0.mp4",
        "meld/dev/dia0_utt0": "dev/dia0_utt0.wav",
        "meld/test/dia0_utt1": "test/output_repeated_splits_test/dia0_utt1.flac"}
    assert len(adapter.missing_audio) == 13708 - 3 and "meld/dev/dia0_utt1" in adapter.missing_audio


def test_bad_emotion_names_the_row(tmp_path):
    header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
    (tmp_path / "dev_sent_emo.csv").write_text(header + '1,Hi,Ross,joy,positive,0,0,1,1,"0","1"\n'
                                               '2,Ho,Ross,happy,positive,0,1,1,1,"1","2"\n')
    with pytest.raises(DataError, match=r"dev_sent_emo.csv: row 3, column 'Emotion' is 'happy'"):
        Meld(metadata_only=True, splits=("dev",)).load(tmp_path)


# --- MELD-ST (fixture) ------------------------------------------------------------------------------------

_ROWS = [  # (dia_id, utt_id, season, episode, speaker, emotion, English)
    (0, 0, 1, 1, "Rachel", "joy", "Hi!"),
    (0, 1, 1, 1, "Ross", "surprise", "Really?"),
    (0, 2, 1, 1, "Gunther", "neutral", "Coffee."),
    (1, 0, 2, 3, "Monica", "anger", "Clean it."),
]


def _pair_csv(path, pair_column, rows, start_id=0):
    records = []
    for n, (dia, utt, season, episode, speaker, emotion, english) in enumerate(rows):
        records.append({"id": start_id + n, "dia_id": dia, "utt_id": utt, "emotion": emotion, "sentiment": "neutral",
                        "English": english, pair_column: f"{pair_column[:2]}:{english}", "season": season,
                        "episode": episode, "speaker": speaker, "start_time_en": "00:00:01,000",
                        "end_time_en": "00:00:02,000"})
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["id", "dia_id", "utt_id", "emotion", "sentiment", "English", pair_column, "season", "episode",
               "speaker", "start_time_en", "end_time_en"]
    pd.DataFrame(records, columns=columns).to_csv(path, index=False)


@pytest.fixture
def meld_st(tmp_path):
    """ENG_DEU with plain names, ENG_JPN with the <lang>_<split>.csv names; rows 0-2 shared by both pairs,
    and the shared utterance (0, 2) lies in train of ENG_DEU but test of ENG_JPN."""
    _pair_csv(tmp_path / "ENG_DEU" / "train.csv", "German", _ROWS[:3])
    _pair_csv(tmp_path / "ENG_DEU" / "valid.csv", "German", _ROWS[3:])
    _pair_csv(tmp_path / "ENG_DEU" / "test.csv", "German", [])
    _pair_csv(tmp_path / "ENG_JPN" / "jpn_train.csv", "Japanese", _ROWS[:2])
    _pair_csv(tmp_path / "ENG_JPN" / "jpn_valid.csv", "Japanese", [])
    _pair_csv(tmp_path / "ENG_JPN" / "jpn_test.csv", "Japanese", _ROWS[2:3], start_id=7)
    return tmp_path


def test_meld_st_one_row_per_utterance_and_language(meld_st):
    adapter = MeldST(metadata_only=True)
    t = adapter.load(meld_st)
    assert t.groupby("language").size().to_dict() == {"en": 4, "de": 4, "ja": 3}
    assert set(t["text_lang"]) == {"en", "de", "ja"} and (t["text_lang"] == t["language"]).all()
    de = t[t["language"] == "de"].set_index("speaker_name")
    assert de.loc["Rachel", "text"] == "Ge:Hi!" and de.loc["Rachel", "speaker"] == "meld_st_de_Rachel"
    en = t[t["language"] == "en"].set_index("speaker_name")
    assert en.loc["Rachel", "text"] == "Hi!" and en.loc["Rachel", "uid"] == "meld_st/en/s1e1_dia0_utt0"
    assert t["speaker"].nunique() == 4 + 4 + 3  # (language, character) keys
    assert t.set_index("uid").loc["meld_st/ja/test_7", "path"] == "ENG_JPN/JPN/test/test_7.wav"
    assert dict(zip(t["speaker_name"], t["gender"], strict=False))["Gunther"] == "U"
    assert set(t.loc[t["speaker_name"] == "Monica", "gender"]) == {"F"}
    assert set(t["emotion"]) == {"happiness", "surprise", "neutral", "anger"}
    assert set(t["split"]) == {"train", "dev", "test"}
    # the English row of the shared utterance keeps ENG_DEU's split; the conflict is reported
    assert adapter.split_conflicts == ("meld_st/en/s1e1_dia0_utt2",)
    assert t.set_index("uid").loc["meld_st/en/s1e1_dia0_utt2", "split"] == "train"


def test_meld_st_without_dedup_and_with_audio(meld_st):
    t = MeldST(metadata_only=True, dedup_english=False).load(meld_st)
    assert (t["language"] == "en").sum() == 4 + 3
    only_jpn = MeldST(metadata_only=True, pairs=("ENG_JPN",)).load(meld_st)
    assert set(only_jpn["language"]) == {"en", "ja"} and len(only_jpn) == 6
    with pytest.raises(DataError, match=r"no MELD-ST audio found"):
        MeldST().load(meld_st)
    for rel in ("ENG_DEU/DEU/train/train_0.wav", "ENG_DEU/ENG/train/train_0.wav"):
        (meld_st / rel).parent.mkdir(parents=True, exist_ok=True)
        (meld_st / rel).write_bytes(b"")
    adapter = MeldST()
    t = adapter.load(meld_st)
    assert sorted(t["uid"]) == ["meld_st/de/train_0", "meld_st/en/s1e1_dia0_utt0"]
    assert len(adapter.missing_audio) == 11 - 2


def test_meld_st_errors(meld_st, tmp_path):
    (meld_st / "ENG_DEU" / "valid.csv").unlink()
    with pytest.raises(DataError, match=r"ENG_DEU: no valid split; looked for \['valid.csv', 'deu_valid.csv'\]"):
        MeldST(metadata_only=True).load(meld_st)
    with pytest.raises(DataError, match=r"none of the MELD-ST pair folders"):
        MeldST(metadata_only=True).load(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"pairs must be a non-empty subset"):
        MeldST(pairs=("ENG_FRA",))
    pd.DataFrame({"id": [0]}).to_csv(meld_st / "ENG_DEU" / "valid.csv", index=False)
    with pytest.raises(DataError, match=r"valid.csv: missing column\(s\) \['dia_id'"):
        MeldST(metadata_only=True).load(meld_st)
    (meld_st / "ENG_DEU" / "valid.csv").write_text("")
    with pytest.raises(DataError, match=r"valid.csv: empty file"):
        MeldST(metadata_only=True).load(meld_st)
