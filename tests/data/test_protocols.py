"""Protocols: EMO-SUPERB folds and the IDI 1:20 simulation on the real CREMA-D files (METHODS §4.1-4.2),
speaker splits, and GEAR's OOD selection on synthetic data (§4.3)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fairray.data
from fairray.data import protocols
from fairray.data.corpora.cremad import CremaD
from fairray.data.protocols import PROTOCOLS, apply_protocol, label_shift_objective, select_ood_subset
from fairray.errors import ConfigError, DataError, RegistryError

#: METHODS §4.1, fold-1 train after the simulation: class -> (F, M, tolerance on the majority cell).
FOLD1_TRAIN = {"anger": (12, 240, 0), "sadness": (58, 2, 0), "disgust": (4, 86, 1), "fear": (127, 6, 0),
               "neutral": (54, 1080, 1), "happiness": (102, 5, 0)}


@pytest.fixture(scope="module")
def cremad_root(corpora):
    path = corpora / "crema-d"
    if not (path / "emo-superb" / "labels_consensus_1.csv").is_file():
        pytest.skip(f"no CREMA-D metadata / EMO-SUPERB files under {path}")
    return path


@pytest.fixture(scope="module")
def cremad(cremad_root):
    return CremaD(metadata_only=True).load(cremad_root)


@pytest.fixture(scope="module")
def fold1(cremad, cremad_root):
    return apply_protocol("emo_superb", cremad, folder=cremad_root / "emo-superb", fold=1)


def test_registry_and_parameter_checks():
    assert {"emo_superb", "imbalance_1to20", "speaker_split", "gear_ood"} <= set(PROTOCOLS.names())
    with pytest.raises(RegistryError, match=r"unknown protocol 'kfold'; registered: .*emo_superb"):
        apply_protocol("kfold", pd.DataFrame())
    with pytest.raises(ConfigError, match=r"protocol 'imbalance_1to20': unknown parameter\(s\) \['raito'\]"):
        apply_protocol("imbalance_1to20", pd.DataFrame(), raito=10)
    with pytest.raises(ConfigError, match=r"protocol 'emo_superb': missing required parameter\(s\) \['fold'\]"):
        apply_protocol("emo_superb", pd.DataFrame(), folder="x")


# --- EMO-SUPERB -------------------------------------------------------------------------------------------


@pytest.mark.corpora
def test_emo_superb_assigns_fold_splits_and_labels(cremad, fold1, cremad_root):
    assert fold1.groupby("split").size().to_dict() == {"train": 4509, "dev": 1470, "test": 1463}
    assert (fold1["fold"] == 1).all() and len(fold1) == len(cremad)
    assert "split" not in cremad.columns and "votes_anger" in cremad.columns  # input untouched
    assert set(fold1["label_source"]) == {"emo_superb"}
    assert not [c for c in fold1.columns if c.startswith("votes_")]
    raw = pd.read_csv(cremad_root / "emo-superb" / "labels_consensus_1.csv").set_index("FileName")
    np.testing.assert_array_equal(fold1["soft_fear"].to_numpy(), raw.loc[fold1["clip"] + ".wav", "fear"].to_numpy())
    assert int(fold1.loc[fold1["split"] == "test", "majority"].notna().sum()) == 899
    own = apply_protocol("emo_superb", cremad, folder=cremad_root / "emo-superb", fold=1, labels="table")
    pd.testing.assert_series_equal(own["soft_fear"], cremad["soft_fear"])
    # joining by the path's stem when there is no clip column
    by_path = protocols.emo_superb(cremad.drop(columns="clip").head(5), folder=cremad_root / "emo-superb", fold=2)
    assert len(by_path) == 5 and (by_path["fold"] == 2).all() and by_path["split"].notna().all()


@pytest.mark.corpora
def test_emo_superb_errors(cremad, cremad_root):
    stray = cremad.head(2).copy()
    stray.loc[stray.index[1], "clip"] = "9999_DFA_ANG_XX"
    with pytest.raises(DataError, match=r"labels_consensus_1.csv: no row for clip '9999_DFA_ANG_XX'"):
        apply_protocol("emo_superb", stray, folder=cremad_root / "emo-superb", fold=1)
    wrong = cremad.head(1).assign(gender="F")
    with pytest.raises(DataError, match=r"has Gender 'M' but the table says 'F'"):
        apply_protocol("emo_superb", wrong, folder=cremad_root / "emo-superb", fold=1)
    with pytest.raises(ConfigError, match=r"labels must be 'emo_superb' or 'table', got 'votes'"):
        apply_protocol("emo_superb", cremad, folder=cremad_root / "emo-superb", fold=1, labels="votes")


# --- IDI 1:20 ---------------------------------------------------------------------------------------------


@pytest.mark.corpora
def test_imbalance_reproduces_idi_fold1_counts(fold1):
    before = fold1.copy()
    out = apply_protocol("imbalance_1to20", fold1, seed=0)
    pd.testing.assert_frame_equal(fold1, before)  # input not mutated
    train = out[out["split"] == "train"].groupby(["majority", "gender"]).size().unstack(fill_value=0)
    for cls, (f, m, tol) in FOLD1_TRAIN.items():
        assert abs(train.loc[cls, "F"] - f) <= tol and abs(train.loc[cls, "M"] - m) <= tol, (cls, train.loc[cls])
    assert abs(int((out["split"] == "train").sum()) - 1776) <= 2
    dev = out[out["split"] == "dev"]
    assert dev[dev["majority"] == "fear"]["gender"].value_counts().to_dict() == {"F": 27, "M": 1}
    assert out["majority"][out["split"] != "test"].notna().all()
    test = out[out["split"] == "test"]
    pd.testing.assert_frame_equal(test, fold1[fold1["split"] == "test"])  # all 1463 clips, untouched


@pytest.mark.corpora
def test_imbalance_is_seeded_and_row_order_free(fold1):
    a = apply_protocol("imbalance_1to20", fold1, seed=3)
    shuffled = fold1.sample(frac=1.0, random_state=0)
    b = apply_protocol("imbalance_1to20", shuffled, seed=3)
    assert set(a["uid"]) == set(b["uid"])
    assert set(b.index) <= set(fold1.index) and (b["uid"] == fold1.loc[b.index, "uid"]).all()  # index kept
    c = apply_protocol("imbalance_1to20", fold1, seed=4)
    assert len(c) == len(a) and set(c["uid"]) != set(a["uid"])


def test_imbalance_edge_cases():
    t = pd.DataFrame({"uid": list("abcdef"), "split": ["train"] * 4 + ["dev"] * 2,
                      "gender": ["F", "M", "F", "M", "F", "M"], "majority": ["anger"] * 4 + ["anger", None]})
    with pytest.raises(DataError, match=r"class 'anger' has a tie between \['F', 'M'\]"):
        apply_protocol("imbalance_1to20", t)
    t.loc[1, "gender"] = "F"
    out = apply_protocol("imbalance_1to20", t, ratio=2)  # train: 3 F kept, floor(3/2) = 1 M kept (the only one)
    assert out["uid"].tolist() == ["a", "b", "c", "d", "e"]
    t.loc[4, "majority"] = "fear"
    with pytest.raises(DataError, match=r"class 'fear' occurs in 'dev' but has no 'train' clip"):
        apply_protocol("imbalance_1to20", t)
    with pytest.raises(ConfigError, match=r"ratio must be an integer >= 1, got 0"):
        apply_protocol("imbalance_1to20", t, ratio=0)
    with pytest.raises(DataError, match=r"no column\(s\) \['majority'\]"):
        apply_protocol("imbalance_1to20", t.drop(columns="majority"))


# --- speaker split ----------------------------------------------------------------------------------------


def test_speaker_split_reuses_the_builtin_split():
    assert protocols.assign_speaker_splits is fairray.data.speaker_split
    rng = np.random.default_rng(0)
    rows = [(f"{lang}_{g}{s}", g, lang) for lang in ("en", "de") for g in ("F", "M") for s in range(6)
            for _ in range(int(rng.integers(2, 5)))]
    table = pd.DataFrame(rows, columns=["speaker", "gender", "language"])
    out = apply_protocol("speaker_split", table, seed=1)
    assert "split" not in table.columns
    expected = fairray.data.speaker_split(table, "gender", "language", 0.15, 0.25, 1)
    assert (out["split"].to_numpy() == expected).all()
    per_speaker = out.groupby("speaker")["split"].nunique()
    assert (per_speaker == 1).all()
    cells = out.groupby(["language", "gender", "split"])["speaker"].nunique()
    assert len(cells) == 2 * 2 * 3 and (cells >= 1).all()
    with pytest.raises(ConfigError, match=r"test_fraction must lie in \(0, 0.5\), got 0.7"):
        apply_protocol("speaker_split", table, test_fraction=0.7)


# --- GEAR OOD ---------------------------------------------------------------------------------------------


def _blobs(n_per, rates, seed):
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0], [6, 0], [0, 6], [6, 6]], dtype=float)
    x = np.concatenate([c + rng.normal(size=(n_per, 2)) for c in centers])
    y = np.concatenate([(rng.random(n_per) < r).astype(int) for r in rates])
    return x, y


@pytest.fixture(scope="module")
def ood_data():
    x_tr, y_tr = _blobs(100, (0.2, 0.8, 0.5, 0.5), seed=0)
    x_te, y_te = _blobs(100, (0.5, 0.5, 0.5, 0.5), seed=1)
    if y_te.sum() % 2:  # an even positive count makes "keeps the rate exactly" exact at 50 %
        y_te[np.flatnonzero(y_te == 0)[0]] = 1
    return x_tr, y_tr, x_te, y_te


def test_gear_ood_selection_keeps_rate_and_size_and_beats_random(ood_data):
    x_tr, y_tr, x_te, y_te = ood_data
    sel = select_ood_subset(x_tr, y_tr, x_te, y_te, k=4, moves=5000, seed=0)
    assert len(sel.selected) == len(y_te) // 2 and len(np.unique(sel.selected)) == len(sel.selected)
    assert y_te[sel.selected].mean() == y_te.mean()
    (name,) = sel.test_clusters
    d = label_shift_objective(sel.test_clusters[name], y_te, sel.selected, sel.train_rate[name])
    assert d == pytest.approx(sel.objective) and sel.objective > sel.initial_objective
    rng = np.random.default_rng(1)
    pos, neg = np.flatnonzero(y_te == 1), np.flatnonzero(y_te == 0)
    random_d = [label_shift_objective(sel.test_clusters[name], y_te,
                                      np.concatenate([rng.choice(pos, len(pos) // 2, replace=False),
                                                      rng.choice(neg, len(neg) // 2, replace=False)]),
                                      sel.train_rate[name]) for _ in range(200)]
    assert sel.objective > max(random_d)
    again = select_ood_subset(x_tr, y_tr, x_te, y_te, k=4, moves=5000, seed=0)
    np.testing.assert_array_equal(again.selected, sel.selected)
    other = select_ood_subset(x_tr, y_tr, x_te, y_te, k=4, moves=5000, seed=1)
    assert not np.array_equal(other.selected, sel.selected)


def test_gear_ood_protocol_marks_test_rows(ood_data):
    x_tr, y_tr, x_te, y_te = ood_data
    table = pd.DataFrame({"split": ["train"] * len(y_tr) + ["test"] * len(y_te), "y": np.concatenate([y_tr, y_te])})
    feats = np.concatenate([x_tr, x_te])
    out = apply_protocol("gear_ood", table, features=feats, label="y", k=4, moves=2000, seed=0)
    assert "ood" not in table.columns and (out["split"] == table["split"]).all()
    assert out["ood"].sum() == len(y_te) // 2 and not out.loc[out["split"] == "train", "ood"].any()
    assert out.attrs["gear_ood"]["n_selected"] == len(y_te) // 2
    # several modalities: the sum of per-modality objectives is maximised
    two = apply_protocol("gear_ood", table, features={"a": feats, "v": feats[:, ::-1]}, label="y", k=4,
                         moves=2000, seed=0, column="ood_tav")
    assert two["ood_tav"].sum() == len(y_te) // 2


def test_gear_ood_parameter_and_data_errors(ood_data):
    x_tr, y_tr, x_te, y_te = ood_data
    with pytest.raises(ConfigError, match=r"parameter fraction is invalid, got 1.5"):
        select_ood_subset(x_tr, y_tr, x_te, y_te, fraction=1.5)
    with pytest.raises(ConfigError, match=r"parameter cooling is invalid, got 0"):
        select_ood_subset(x_tr, y_tr, x_te, y_te, cooling=0)
    with pytest.raises(DataError, match=r"test_labels must be a 1-d array of 0/1 labels"):
        select_ood_subset(x_tr, y_tr, x_te, y_te * 2)
    with pytest.raises(DataError, match=r"features 'features' has 3 rows for a table of 800"):
        apply_protocol("gear_ood", pd.DataFrame({"split": ["train"] * 800, "y": 0}), features=x_tr[:3], label="y")



def test_speaker_kfold_on_the_real_corpora(corpora):
    """Every speaker of RAVDESS + EmoDB + nEMO is in exactly one test fold; folds are speaker-disjoint and
    every language x gender cell has speakers in train, dev and test of every fold."""
    from fairray.data.corpora import CORPORA
    from fairray.data.protocols import apply_protocol

    table = pd.concat([CORPORA.get("manifest")().load(corpora / c) for c in ("ravdess", "emodb", "nemo")],
                      ignore_index=True)
    test_speakers = []
    for fold in range(1, 4):
        out = apply_protocol("speaker_kfold", table, k=3, fold=fold)
        by_split = {s: set(out.loc[out["split"] == s, "speaker"]) for s in ("train", "dev", "test")}
        assert not (by_split["train"] & by_split["dev"]) and not (by_split["dev"] & by_split["test"])
        assert not (by_split["train"] & by_split["test"])
        cells = out.groupby(["split", "language", "gender"])["speaker"].nunique()
        assert all(cells[(s, lang, g)] >= 1 for s in ("train", "dev", "test") for lang in ("en", "de", "pl")
                   for g in ("F", "M"))
        test_speakers += sorted(by_split["test"])
        nxt = apply_protocol("speaker_kfold", table, k=3, fold=fold % 3 + 1)
        assert by_split["dev"] == set(nxt.loc[nxt["split"] == "test", "speaker"])  # cyclic: dev(f) = test(f+1)
    assert sorted(test_speakers) == sorted(table["speaker"].unique())


def test_speaker_kfold_rejects_too_few_speakers_and_bad_folds():
    from fairray.data.protocols import apply_protocol

    table = pd.DataFrame({"speaker": ["a", "b"], "gender": ["F", "F"], "language": ["en", "en"]})
    with pytest.raises(DataError, match="language=en, gender=F has only 2 speaker"):
        apply_protocol("speaker_kfold", table, k=3, fold=1)
    with pytest.raises(ConfigError, match="k >= 3"):
        apply_protocol("speaker_kfold", table, k=2, fold=1)
