"""Multi-label SER end to end (the IDI / EMO-SUPERB setting) on a layout-faithful CREMA-D folder.

The folder holds the real CREMA-D metadata rows (tabulatedVotes.csv, summaryTable.csv,
VideoDemographics.csv, verbatim) of 60 clips of 12 actors (6 F, 6 M) and, as their ``AudioWAV/*.wav``,
real RAVDESS recordings of the same emotion by a RAVDESS actor of the same gender (CREMA-D's audio is not
obtainable here). Features: openSMILE eGeMAPS through a feature cache in tmp.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from fairray.cli import main
from fairray.config import DatasetConfig, build_spec
from fairray.data import prepare
from fairray.data.corpora.cremad import CLASSES, EMOTION_CODES
from fairray.errors import ConfigError, DataError
from fairray.export._predict import load_export, predict
from fairray.metrics import Predictions, multi_hot
from fairray.tracking import ensure_experiment
from fairray.train import LocalSession, TrialTracking, run_trial

pytestmark = pytest.mark.corpora

ACTORS_PER_GENDER = 6
CLIPS_PER_ACTOR = 5
OBJECTIVES = [{"metric": "dev/macro_f1", "direction": "max"}, {"metric": "dev/dp_gap/gender", "direction": "min"}]


def _verbatim(src: Path, dst: Path, keep) -> int:
    """Copy the header and the lines ``keep(line)`` accepts, byte for byte; returns the rows kept."""
    lines = src.read_text().splitlines(keepends=True)
    rows = [line for line in lines[1:] if keep(line)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(lines[0] + "".join(rows))
    return len(rows)


def build_cremad_layout(corpora: Path, out: Path) -> Path:
    """CREMA-D's native layout (AudioWAV/, processedResults/, VideoDemographics.csv) for 60 clips."""
    import soundfile as sf

    meta = corpora / "crema-d" / "meta"
    demo = pd.read_csv(meta / "VideoDemographics.csv", dtype={"ActorID": str})
    actors = {sex: demo.loc[demo["Sex"] == sex, "ActorID"].head(ACTORS_PER_GENDER).tolist()
              for sex in ("Female", "Male")}
    votes = pd.read_csv(meta / "tabulatedVotes.csv")
    voice = votes[votes.iloc[:, 0].astype(str).str[0] == "1"]
    rng = np.random.default_rng(0)
    clips: dict[str, str] = {}  # clip -> sex of its actor
    for sex, ids in actors.items():
        for actor in ids:
            own = np.sort(voice.loc[voice["fileName"].str.startswith(f"{actor}_"), "fileName"].to_numpy())
            for clip in rng.choice(own, size=CLIPS_PER_ACTOR, replace=False):
                clips[str(clip)] = sex

    # real metadata rows, verbatim (the quoted fileName / FileName / ActorID column finds a clip's lines)
    n = _verbatim(meta / "tabulatedVotes.csv", out / "processedResults" / "tabulatedVotes.csv",
                  lambda line: line.split(",")[7].strip('"') in clips)
    assert n == 3 * len(clips)  # voice-only, face-only and audio-visual rows
    _verbatim(meta / "summaryTable.csv", out / "processedResults" / "summaryTable.csv",
              lambda line: line.split(",")[1].strip('"') in clips)
    chosen = {a for ids in actors.values() for a in ids}
    _verbatim(meta / "VideoDemographics.csv", out / "VideoDemographics.csv",
              lambda line: line.split(",")[0].strip('"') in chosen)

    # audio: a real RAVDESS clip of the same emotion, by one RAVDESS actor per CREMA-D actor (same gender)
    ravdess = pd.read_csv(corpora / "ravdess" / "manifest.csv", dtype=str)
    speakers = {g: sorted(ravdess.loc[ravdess["gender"] == g, "speaker"].unique()) for g in ("F", "M")}
    source_of = {a: speakers[sex[0]][i] for sex, ids in actors.items() for i, a in enumerate(ids)}
    used: dict[tuple[str, str], int] = {}
    (out / "AudioWAV").mkdir(parents=True)
    for clip in sorted(clips):
        actor, _, emo, _ = clip.split("_")
        emotion = EMOTION_CODES[emo]
        pool = ravdess[(ravdess["speaker"] == source_of[actor]) & (ravdess["emotion"] == emotion)]
        k = used.get((actor, emotion), 0)
        used[(actor, emotion)] = k + 1
        x, sr = sf.read(corpora / "ravdess" / pool["path"].iloc[k % len(pool)], dtype="int16")
        sf.write(out / "AudioWAV" / f"{clip}.wav", x, sr, subtype="PCM_16")
    return out


@pytest.fixture(scope="module")
def cremad(corpora, tmp_path_factory) -> Path:
    if not (corpora / "crema-d" / "meta" / "tabulatedVotes.csv").is_file():
        pytest.fail(f"no CREMA-D metadata under {corpora / 'crema-d'}")
    return build_cremad_layout(corpora, tmp_path_factory.mktemp("crema") / "CREMA-D")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("features")


def raw(cremad: Path, cache: Path, method=None, epochs=2, **dataset) -> dict:
    ds = {"name": "corpora", "corpora": [{"adapter": "cremad", "root": str(cremad)}], "emotions": list(CLASSES),
          "languages": ["en"], "targets": "multi", "cache": str(cache), **dataset}
    return {"name": "ml", "method": method or {"name": "erm", "loss": "cb_ce"}, "dataset": ds,
            "model": {"name": "mlp", "hidden": 16}, "train": {"epochs": epochs, "batch_size": 16},
            "search": {"objectives": OBJECTIVES}}


@pytest.fixture(scope="module")
def data(cremad, cache):
    return prepare(build_spec(raw(cremad, cache), "t").dataset)


def _votes(data) -> np.ndarray:
    return data.meta[[f"votes_{c}" for c in data.classes]].to_numpy(np.float64)


def test_multi_label_data_keeps_every_clip_with_soft_targets(data):
    assert data.task == "multi" and data.classes == CLASSES
    assert len(data.y) == 2 * ACTORS_PER_GENDER * CLIPS_PER_ACTOR  # no clip dropped, majority class or not
    assert data.meta["majority"].isna().any() and data.meta["majority"].notna().any()
    assert data.soft.dtype == np.float32 and data.soft.shape == (len(data.y), len(CLASSES))
    votes = _votes(data)
    np.testing.assert_allclose(data.soft, votes / votes.sum(axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(data.y, data.soft.argmax(axis=1))
    # multi-hot targets as the adapter derives them from the integer votes (strict > 1/|C|)
    np.testing.assert_array_equal(multi_hot(data.soft), data.meta[[f"multi_{c}" for c in CLASSES]].to_numpy())
    test = multi_hot(data.soft[data.indices("test")])
    assert (test.sum(axis=1) >= 2).any() and set(data.split) == {"train", "dev", "test"}


def test_imbalance_protocol_drops_non_majority_clips_from_training_only(cremad, cache, data):
    """IDI 4.1: the 1:20 simulation keeps strict-majority clips in the splits it resamples; test is untouched."""
    resample = {"name": "imbalance_1to20", "params": {"ratio": 2, "splits": ["train"]}}
    d = prepare(build_spec(raw(cremad, cache, resample=resample), "t").dataset)
    train = d.indices("train")
    assert d.meta.loc[train, "majority"].notna().all() and len(train) < len(data.indices("train"))
    assert d.meta.loc[train, "majority"].tolist() == [CLASSES[k] for k in d.y[train]]  # argmax = majority
    for split in ("dev", "test"):
        assert d.meta.loc[d.indices(split), "uid"].tolist() == data.meta.loc[data.indices(split), "uid"].tolist()
    assert d.meta.loc[d.indices("test"), "majority"].isna().any()
    np.testing.assert_array_equal(d.soft[d.indices("test")], data.soft[data.indices("test")])


def test_a_class_subset_renormalises_the_soft_labels(cremad, cache):
    kept = ("anger", "fear", "happiness", "neutral", "sadness")  # no disgust
    d = prepare(build_spec(raw(cremad, cache, emotions=list(kept)), "t").dataset)
    assert d.classes == kept
    votes = d.meta[[f"votes_{c}" for c in kept]].to_numpy(np.float64)
    assert (votes.sum(axis=1) > 0).all()
    np.testing.assert_allclose(d.soft, votes / votes.sum(axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(d.soft.sum(axis=1), 1.0, rtol=1e-6)
    full = pd.read_csv(cremad / "processedResults" / "tabulatedVotes.csv")
    only_disgust = int(((full.iloc[:, 0].astype(str).str[0] == "1") & (full[list("AFHNS")].sum(axis=1) == 0)).sum())
    assert len(d.y) == 2 * ACTORS_PER_GENDER * CLIPS_PER_ACTOR - only_disgust


def test_missing_soft_columns_are_one_clear_error(cremad, cache):
    cfg = build_spec(raw(cremad, cache, emotions=["anger", "calm", "surprise"]), "t").dataset
    with pytest.raises(DataError) as err:
        prepare(cfg)
    message = str(err.value)
    assert "\n" not in message and "soft_calm" in message and "soft_surprise" in message
    assert "soft_anger" not in message.split("missing")[0] and "cremad" in message


def test_corpora_without_votes_are_refused_at_load_time(cremad, cache):
    spec = raw(cremad, cache)
    spec["dataset"]["corpora"].append({"adapter": "ravdess", "root": "/nowhere"})
    with pytest.raises(ConfigError, match=r"dataset.corpora\[1\].adapter: .*'ravdess' carries none.*with votes: cremad"):
        build_spec(spec, "t")
    with pytest.raises(ValueError, match="ser3 lacks"):
        DatasetConfig(targets="multi")


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("method", [{"name": "erm", "loss": "cb_ce"}, {"name": "gdro"}])
def test_trial_is_multi_label_end_to_end(cremad, cache, data, tmp_path, method, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = ensure_experiment(uri, "ml", str(tmp_path))
    spec = raw(cremad, cache, method)
    seen = []
    final = run_trial(spec, {}, data, LocalSession(tmp_path / "ck"), TrialTracking(uri, exp, None, "t0", "ml"),
                      on_epoch=seen.append)
    assert [m["epoch"] for m in seen] == [0, 1]
    assert all(math.isfinite(m["train/loss"]) and math.isfinite(m["dev/loss"]) for m in seen)
    for split in ("dev", "test"):  # multi-label reports: hamming accuracy, no single-label accuracy
        assert f"{split}/hamming_acc" in final and f"{split}/acc" not in final
        assert f"{split}/acc_gap/gender" not in final and math.isfinite(final[f"{split}/macro_f1"])
    assert math.isfinite(final["test/loss"])

    client = MlflowClient(uri)
    run = client.search_runs([exp])[0]
    assert run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "predictions")} == {
        "predictions/dev.npz", "predictions/test.npz"}
    local = Path(client.download_artifacts(run.info.run_id, "predictions", str(tmp_path / "art")))
    for split in ("dev", "test"):
        pred = Predictions.load(local / f"{split}.npz")
        idx = data.indices(split)
        assert pred.task == "multi" and pred.classes == data.classes and len(pred) == len(idx)
        assert pred.uid.tolist() == data.meta.loc[idx, "uid"].tolist()
        np.testing.assert_array_equal(pred.y_true, multi_hot(data.soft[idx]))
        assert (pred.y_true.sum(axis=1) >= 2).any()
        np.testing.assert_array_equal(pred.y_pred, (pred.prob > 1 / len(data.classes)).astype(np.int64))
        flat = pred.report().flat(split)
        logged = {k: v for k, v in run.data.metrics.items() if k.startswith(f"{split}/") and k != f"{split}/loss"}
        assert set(flat) == set(logged) and len(logged) > 30
        assert all(_same(flat[k], logged[k]) for k in logged), [k for k in logged if not _same(flat[k], logged[k])]
        assert all(_same(flat[k], final[k]) for k in flat)

    # fairray predict on the trial's checkpoint: per-class 0/1 columns equal to the logged predictions
    model, meta, _ = load_export(tmp_path / "ck" / "checkpoint")
    assert meta["task"] == "multi"
    frame = predict(tmp_path / "ck" / "checkpoint", "test")
    assert "y_true" not in frame.columns and "y_pred" not in frame.columns
    test = Predictions.load(local / "test.npz")
    np.testing.assert_array_equal(frame[[f"true_{c}" for c in CLASSES]].to_numpy(), test.y_true)
    np.testing.assert_array_equal(frame[[f"pred_{c}" for c in CLASSES]].to_numpy(), test.y_pred)
    np.testing.assert_allclose(frame[[f"p_{c}" for c in CLASSES]].to_numpy(), test.prob)
    # ... and `fairray evaluate` on that CSV reproduces every logged test metric
    csv = tmp_path / "preds.csv"
    frame.to_csv(csv, index=False)
    assert main(["evaluate", str(csv), "--group", "gender", "--stratum", "language", "--format", "json",
                 "--s-min", str(build_spec(spec, "t").train.s_min)]) == 0  # the trial's threshold (5: gap objectives)
    evaluated = json.loads(capsys.readouterr().out)
    logged = {k: v for k, v in run.data.metrics.items() if k.startswith("test/") and k != "test/loss"}
    assert set(evaluated) == set(logged)
    assert all(_same(float("nan") if evaluated[k] is None else evaluated[k], logged[k]) for k in logged), [(k, evaluated[k], logged[k]) for k in logged if not _same(float("nan") if evaluated[k] is None else evaluated[k], logged[k])][:5]
    with torch.no_grad():
        assert model(torch.as_tensor(data.X[:2])).shape == (2, len(CLASSES))


def test_class_balanced_counts_are_the_positive_soft_labels(data):
    from fairray.train.loop import train_context

    ctx = train_context(data, 1)
    idx = data.indices("train")
    np.testing.assert_array_equal(ctx.cb_counts, multi_hot(data.soft[idx]).sum(axis=0))
    np.testing.assert_array_equal(ctx.class_counts, np.bincount(data.y[idx], minlength=len(CLASSES)))
    assert ctx.class_target_counts.sum(axis=1).tolist() != ctx.class_counts.tolist()  # several positives a clip
