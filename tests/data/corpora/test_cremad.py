"""CREMA-D adapter and EMO-SUPERB fold loader, checked on the real metadata, fold files and one real clip."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from fairray.data.corpora import CORPORA
from fairray.data.corpora.cremad import CLASSES, SENTENCES, CremaD, load_emo_superb_fold
from fairray.errors import ConfigError, DataError

pytestmark = pytest.mark.corpora
REAL_CLIP = "1001_DFA_ANG_XX"


@pytest.fixture(scope="module")
def root(corpora):
    path = corpora / "crema-d"
    if not (path / "meta" / "tabulatedVotes.csv").is_file():
        pytest.skip(f"no CREMA-D metadata under {path}")
    return path


@pytest.fixture(scope="module")
def table(root):
    return CremaD(metadata_only=True).load(root)


@pytest.fixture(scope="module")
def clips(root):
    return pd.read_csv(root / "meta" / "clips.csv").set_index("clip")


@pytest.fixture(scope="module")
def folds(root):
    return {k: load_emo_superb_fold(root / "emo-superb", k) for k in range(1, 6)}


def test_registered_with_its_layout():
    assert CORPORA.get("cremad") is CremaD
    assert "AudioWAV/" in CremaD.layout() and "tabulatedVotes.csv" in CremaD.layout()


def test_metadata_only_lists_every_clip_with_demographics(table):
    assert len(table) == 7442 and table["uid"].is_unique
    assert table["speaker"].nunique() == 91
    assert table.drop_duplicates("speaker")["gender"].value_counts().to_dict() == {"M": 48, "F": 43}
    assert table["gender"].value_counts().to_dict() == {"M": 3930, "F": 3512}
    assert table["race"].value_counts().to_dict() == {"Caucasian": 4988, "African American": 1804, "Asian": 568,
                                                      "Unknown": 82}
    assert set(table["language"]) == {"en"} and set(table["gender_src"]) == {"meta"}
    assert set(table["emotion"]) == set(CLASSES)
    assert table["age_group"].notna().all()
    young = table["age_group"] == "Young"
    assert table.loc[young, "age"].between(20, 35).all()
    assert table.loc[table["age_group"] == "Elderly", "age"].between(50, 75).all()
    assert (table["path"] == "AudioWAV/" + table["clip"] + ".wav").all()


def test_matches_the_derived_clip_table_row_by_row(table, clips):
    ref = clips.loc[table["clip"]]
    for c in CLASSES:
        np.testing.assert_array_equal(table[f"votes_{c}"].to_numpy(), ref[f"voice_votes_{c}"].to_numpy())
    for column in ("speaker", "gender", "race", "ethnicity", "emotion", "intensity", "sentence_id", "text"):
        assert (table[column].to_numpy() == ref[column].to_numpy()).all(), column
    np.testing.assert_array_equal(table["age"].to_numpy(), ref["age"].to_numpy())
    np.testing.assert_array_equal(table["n_votes"].to_numpy(), ref["voice_num_responses"].to_numpy())
    assert dict(clips.drop_duplicates("sentence_id")[["sentence_id", "text"]].to_numpy()) == SENTENCES


def test_label_derivations(table, clips):
    soft = table[[f"soft_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(soft.sum(axis=1), 1.0)
    multi = table[[f"multi_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_array_equal(multi, (soft > 1 / len(CLASSES) + 1e-12).astype(np.uint8))
    has = table["majority"].notna().to_numpy()
    np.testing.assert_array_equal(has, soft.max(axis=1) > 0.5)
    # a strict majority is also the (untied) plurality of the voice-only votes
    plurality = clips.loc[table["clip"], "voice_majority"].to_numpy()
    assert (table.loc[has, "majority"].to_numpy() == plurality[has]).all()


def test_the_one_real_clip_loads_with_its_votes(root, caplog):
    adapter = CremaD()
    with caplog.at_level("WARNING"):
        one = adapter.load(root)
    assert len(one) == 1 and one.loc[0, "uid"] == f"cremad/{REAL_CLIP}"
    assert (root / one.loc[0, "path"]).is_file()
    assert [int(one.loc[0, f"votes_{c}"]) for c in CLASSES] == [6, 2, 0, 0, 1, 0]
    assert one.loc[0, "majority"] == "anger" and one.loc[0, "emotion"] == "anger"
    assert len(adapter.missing_audio) == 7441 and REAL_CLIP not in adapter.missing_audio
    assert "7441 of 7442 clips have no audio" in caplog.text


def _native_copy(root, tmp_path, suffixes=(".wav",)):
    """A native-release layout for actor 1001: processedResults/, demographics at the root, audio."""
    out = tmp_path / "crema"
    (out / "processedResults").mkdir(parents=True)
    (out / "AudioWAV").mkdir()
    votes = pd.read_csv(root / "meta" / "tabulatedVotes.csv")
    votes = votes[votes["fileName"].str.startswith("1001_")]
    votes.to_csv(out / "processedResults" / "tabulatedVotes.csv", index=False)
    shutil.copy(root / "meta" / "VideoDemographics.csv", out / "VideoDemographics.csv")
    for suffix in suffixes:
        shutil.copy(root / "AudioWAV" / f"{REAL_CLIP}.wav", out / "AudioWAV" / f"{REAL_CLIP}{suffix}")
    return out


def test_native_layout_accepts_flac_and_prefers_wav(root, tmp_path):
    out = _native_copy(root, tmp_path, suffixes=(".flac",))
    one = CremaD().load(out)
    assert one["path"].tolist() == [f"AudioWAV/{REAL_CLIP}.flac"]
    both = _native_copy(root, tmp_path / "b", suffixes=(".flac", ".wav"))
    assert CremaD().load(both)["path"].tolist() == [f"AudioWAV/{REAL_CLIP}.wav"]
    meta = CremaD(metadata_only=True).load(out)
    assert len(meta) == 82 and meta["speaker"].unique().tolist() == ["cremad_1001"]  # actor 1001's clips


def test_layout_errors_are_one_line_and_name_the_file(root, tmp_path):
    out = _native_copy(root, tmp_path)
    (out / "AudioWAV" / "1002_DFA_ANG_XX.wav").write_bytes(b"")
    with pytest.raises(DataError, match=r"1002_DFA_ANG_XX.wav: audio of a clip that .*tabulatedVotes.csv has no"):
        CremaD().load(out)
    (out / "AudioWAV" / "1002_DFA_ANG_XX.wav").unlink()
    (out / "AudioWAV" / "1001_DFA_XYZ_XX.wav").write_bytes(b"")
    with pytest.raises(DataError, match=r"unknown emotion code 'XYZ'"):
        CremaD().load(out)
    shutil.rmtree(out / "AudioWAV")
    with pytest.raises(DataError, match=r"AudioWAV: no audio folder; pass metadata_only=True"):
        CremaD().load(out)
    with pytest.raises(DataError, match=r"no vote table"):
        CremaD(metadata_only=True).load(tmp_path / "nowhere")


# --- EMO-SUPERB folds -------------------------------------------------------------------------------------


def test_emo_superb_files_are_read_unchanged(root, folds):
    raw = pd.read_csv(root / "emo-superb" / "labels_consensus_1.csv")
    f1 = folds[1]
    np.testing.assert_array_equal(f1["soft_anger"].to_numpy(), raw["angry"].to_numpy())
    np.testing.assert_array_equal(f1["soft_happiness"].to_numpy(), raw["happy"].to_numpy())
    np.testing.assert_array_equal(f1["soft_sadness"].to_numpy(), raw["sad"].to_numpy())
    assert set(f1["split"]) == {"train", "dev", "test"} and set(f1["gender"]) == {"F", "M"}
    assert (f1["fold"] == 1).all() and f1["uid"].str.match(r"^cremad/\d{4}_[A-Z]{3}_[A-Z]{3}_[A-Z]{2}$").all()
    multi = f1[[f"multi_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_array_equal(multi, f1[[f"soft_{c}" for c in CLASSES]].to_numpy() > 1 / 6)


def test_emo_superb_fold_structure(folds):
    sizes = {k: int((f["split"] == "test").sum()) for k, f in folds.items()}
    assert Counter(sizes.values()) == Counter([1463, 1470, 1476, 1476, 1557])
    tests = {k: set(f.loc[f["split"] == "test", "clip"]) for k, f in folds.items()}
    assert sum(map(len, tests.values())) == len(set().union(*tests.values())) == 7442
    for k, f in folds.items():
        spk = {s: set(f.loc[f["split"] == s, "speaker"]) for s in ("train", "dev", "test")}
        assert not (spk["train"] & spk["dev"] or spk["train"] & spk["test"] or spk["dev"] & spk["test"])
        dev = set(f.loc[f["split"] == "dev", "clip"])
        assert dev == tests[k % 5 + 1], f"dev of fold {k} is not the test of fold {k % 5 + 1}"


def test_emo_superb_majority_and_multi_label_counts(folds):
    f1 = folds[1]
    assert int(f1.loc[f1["split"] == "test", "majority"].notna().sum()) == 899
    multi_counts = []
    for f in folds.values():
        test = f[f["split"] == "test"]
        multi_counts.append(int((test[[f"multi_{c}" for c in CLASSES]].sum(axis=1) >= 2).sum()))
    assert min(multi_counts) == 1070 and max(multi_counts) == 1139
    assert all(1070 <= n <= 1139 for n in multi_counts)


def test_emo_superb_errors(root, tmp_path):
    with pytest.raises(ConfigError, match=r"k must be a positive integer, got 0"):
        load_emo_superb_fold(root / "emo-superb", 0)
    with pytest.raises(DataError, match=r"labels_consensus_6.csv: EMO-SUPERB fold file not found"):
        load_emo_superb_fold(root / "emo-superb", 6)
    raw = pd.read_csv(root / "emo-superb" / "labels_consensus_1.csv").head(3)
    raw.loc[1, "Split_Set"] = "Validation"
    raw.to_csv(tmp_path / "labels_consensus_1.csv", index=False)
    with pytest.raises(DataError, match=r"row 3, column 'Split_Set' is 'Validation'"):
        load_emo_superb_fold(tmp_path, 1)
