"""search_spaces/gear_mosi.yaml end to end: GEAR for regression (MOSI sentiment, GMAE biased heads) and ERM with
L1 in real Ray Tune + Optuna sweeps with a real MLflow store, on a small MOSI folder this module writes in MulT's
pickle layout (a learnable sentiment, a demographics CSV for the per-gender numbers); regression with a
class-count method, or on a corpus without a continuous target, is refused in one line before anything is written.
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from fairray.cli import main
from fairray.metrics import Predictions

pytestmark = pytest.mark.slow

SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "gear_mosi.yaml"


#: Segments per split and videos per split (each video one speaker; genders alternate F, M by video).
SIZES = {"train": (96, 12), "valid": (40, 8), "test": (40, 8)}
#: Feature widths per modality (MulT's are 300 / 74 / 35; the adapter reads any) and time steps.
WIDTHS = {"text": 6, "audio": 4, "vision": 3}
STEPS = 5


def write_mosi(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``folder/mosi_data.pkl`` and ``folder/demographics.csv``; return both paths.

    The sentiment is a noisy linear function of the time-averaged text features, clipped to [-3, 3], with a
    few exact zeros (MulT's neutral segments, which acc2 leaves out); ids are byte strings as in MulT's MOSI.
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(size=WIDTHS["text"])
    data, genders = {}, {}
    for split, (n, n_videos) in SIZES.items():
        videos = [f"{split}_vid{v:02d}" for v in range(n_videos)]
        for v, video in enumerate(videos):
            genders[video] = "F" if v % 2 == 0 else "M"
        arrays = {m: rng.normal(size=(n, STEPS, d)).astype(np.float32) for m, d in WIDTHS.items()}
        arrays["text"][:, -1] = 0.0  # MulT's zero padding: left out of the time average
        mean = arrays["text"][:, :-1].mean(axis=1)
        target = np.clip(2.0 * mean @ w + 0.3 * rng.normal(size=n), -3, 3)
        target[:: 11] = 0.0
        video_of = [videos[i % n_videos] for i in range(n)]
        ids = np.array([[v.encode(), str(i).encode(), str(i + 1).encode()] for i, v in enumerate(video_of)], dtype=object)
        data[split] = {**arrays, "labels": target.astype(np.float32).reshape(n, 1, 1), "id": ids}
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "mosi_data.pkl", "wb") as handle:
        pickle.dump(data, handle, protocol=pickle.HIGHEST_PROTOCOL)
    demographics = folder / "demographics.csv"
    demographics.write_text("video_id,gender\n" + "".join(f"{v},{g}\n" for v, g in genders.items()))
    return folder / "mosi_data.pkl", demographics


@pytest.fixture(scope="module")
def mosi(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("mosi")
    _, demographics = write_mosi(folder)
    return folder, demographics


def small(raw: dict, mosi: tuple[Path, Path], storage: Path) -> dict:
    root, demographics = mosi
    raw = copy.deepcopy(raw)
    raw["dataset"]["corpora"] = [{"adapter": "mosi", "root": str(root), "options": {"demographics": str(demographics)}}]
    raw["dataset"]["cache"] = str(storage / "features")
    raw["dataset"]["ood"].update(k=3, moves=500)
    raw["model"]["encoders"]["features"].update(hidden=16)
    raw["model"]["hidden"] = 16
    raw["method"].update(swap_epochs=0, d=16, hidden=16, heads=2)
    raw["train"].update(epochs=2, batch_size=32, s_min=2)
    raw["search"]["sampler"] = "random"
    raw["budget"].update(num_samples=2, max_concurrent=2, max_failures=0)
    raw["storage"]["path"] = str(storage / "runs")
    return raw


def _write(raw: dict, tmp_path: Path) -> Path:
    path = tmp_path / "gear_mosi.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _trials(storage: Path, experiment: str = "gear_mosi") -> list:
    client = MlflowClient(f"sqlite:///{storage / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=100)
    return client, [r for r in runs if r.data.tags.get("fairray.kind") == "trial"]


def _check_regression_metrics(client, run, tmp_path: Path) -> None:
    m = run.data.metrics
    for split in ("dev", "test"):
        for metric in ("mae", "corr", "acc2", "f1_2"):
            for suffix in ("", "/gender:F", "/gender:M"):
                assert f"{split}/{metric}{suffix}" in m, f"{split}/{metric}{suffix}"
            assert f"{split}/{metric}_gap/gender" in m
        assert m[f"{split}/mae"] > 0 and -1 <= m[f"{split}/corr"] <= 1 and 0 <= m[f"{split}/acc2"] <= 1
        assert m[f"{split}/mae_gap/gender"] == pytest.approx(abs(m[f"{split}/mae/gender:F"] - m[f"{split}/mae/gender:M"]))
        assert m[f"{split}/n"] == 40 and m[f"{split}/n_nonzero"] < 40  # the exact zeros are left out of acc2
        assert not any(k.startswith(f"{split}/weighted_f1") for k in m)  # no class metrics on a regression
    # the logged test predictions are float targets in a version-2 file whose report is the logged metrics
    local = client.download_artifacts(run.info.run_id, "predictions/test.npz", str(tmp_path))
    pred = Predictions.load(local)
    assert pred.task == "regression" and pred.y_true.dtype == np.float64 and pred.classes == ()
    assert pred.report().get("test/mae") == pytest.approx(m["test/mae"], rel=1e-6)
    assert pred.report().get("test/corr/gender:F") == pytest.approx(m["test/corr/gender:F"], rel=1e-6, abs=1e-9)


def test_gear_regression_sweep_searches_q_with_gmae_heads(mosi, tmp_path, capsys):
    raw = small(yaml.safe_load(SPEC.read_text()), mosi, tmp_path)
    assert main(["sweep", str(_write(raw, tmp_path)), "--quiet"]) == 0
    capsys.readouterr()
    client, trials = _trials(tmp_path)
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    for r in trials:
        assert r.data.tags["fairray.method"] == "gear"
        assert 0.1 <= float(r.data.params["method.q"]) <= 1.0  # q searched
        m = r.data.metrics
        # GMAE weighed the biased heads' errors: tanh(e^-q) / 2σ(-e) lie strictly inside (0, 1) for e > 0
        assert 0 < m["method/gmae_weight_mean"] < 1 and m["method/l_bias"] > 0
        assert m["method/swapping"] == 1.0 and m["method/l_swap"] > 0 and 0 < m["method/weight_mean"] < 1
        _check_regression_metrics(client, r, tmp_path)
        # GEAR's OOD test set (METHODS 4.3, the nn task's label shift) is scored like test, per group too
        assert m["test_ood_features/n"] == 20 and "test_ood_features/mae/gender:F" in m
        assert "test_ood_features/acc2_gap/gender" in m and m["data/test_ood_features/label_shift"] >= 0
    assert len({r.data.params["method.q"] for r in trials}) == 2


def test_erm_l1_and_gear_ablation_cells_train_on_the_regression(mosi, tmp_path, capsys):
    raw = small(yaml.safe_load(SPEC.read_text()), mosi, tmp_path)
    raw["ablations"]["paper"] = {"seeds": [0], "cells": [{"method.name": ["erm"]}, {"method.name": ["gear"],
                                                                                    "method.gce": [False]}]}
    assert main(["sweep", str(_write(raw, tmp_path)), "--ablation", "paper", "--quiet"]) == 0
    capsys.readouterr()
    client, trials = _trials(tmp_path)
    by_method = {r.data.tags["fairray.method"]: r for r in trials}
    assert set(by_method) == {"erm", "gear"} and all(r.info.status == "FINISHED" for r in trials)
    erm = by_method["erm"]
    assert erm.data.params["method.loss"] == "l1"
    # ERM's selection loss is the dev L1, i.e. the dev MAE of the selected model
    assert erm.data.metrics["dev/loss"] == pytest.approx(erm.data.metrics["dev/mae"], rel=1e-5)
    assert "method/gmae_weight_mean" not in by_method["gear"].data.metrics  # gce: false = w/o GMAE: plain L1
    for r in trials:
        _check_regression_metrics(client, r, tmp_path)
    # `fairray report` picks the regression layout: ERM first, every column from the logged predictions
    assert main(["report", str(tmp_path / "gear_mosi.yaml"), "--ablation", "paper", "--n-boot", "20"]) == 0
    out = capsys.readouterr().out
    assert "| cell | seeds | MAE | Corr | Acc2 | F1-2 | ΔMAE | ΔAcc2 |" in out and "## Against ERM" in out
    erm_row = next(line for line in out.splitlines() if line.startswith("| ERM | 1 |"))
    assert f"{erm.data.metrics['test/mae']:.3f}" in erm_row
    assert "| GEAR (gce=False) | 1 |" in out or "| GEAR (gce=false) | 1 |" in out
    # the logged checkpoint predicts the same float outputs again (`fairray predict`'s path)
    from fairray.export import predict

    for r in trials:
        folder = client.download_artifacts(r.info.run_id, "checkpoint", str(tmp_path / r.info.run_id))
        frame = predict(folder, "test")
        assert {"y_true", "y_pred"} <= set(frame.columns) and not any(c.startswith("p_") for c in frame.columns)
        mae = float(np.mean(np.abs(frame["y_pred"] - frame["y_true"])))
        assert mae == pytest.approx(r.data.metrics["test/mae"], rel=1e-4)


@pytest.mark.parametrize(("change", "match"), [
    ({"method": {"name": "rw"}}, "method.name: 'rw' trains on class labels"),
    ({"method": {"name": "cberl"}}, "method.name: 'cberl' trains on class labels"),
    ({"method": {"name": "erm", "loss": "cb_ce"}}, "method.loss: 'cb_ce' is a loss over class probabilities"),
    ({"train": {"sampler": "class_balanced"}}, "train.sampler: 'class_balanced' draws batches by class"),
    ({"dataset": {"corpora": [{"adapter": "meld", "root": "/nonexistent/meld"}]}},
     "dataset.corpora[0].adapter: targets: regression needs the continuous target column 'reg_target', which "
     "corpus 'meld' does not have"),
    ({"dataset": {"name": "ser3", "corpora": []}}, "targets: regression needs a continuous target column"),
    ({"dataset": {"targets": "single", "target": None}}, "method.loss: 'l1' is the regression loss"),
])
def test_bad_regression_input_exits_2_in_one_line_and_writes_nothing(tmp_path, capsys, change, match):
    raw = yaml.safe_load(SPEC.read_text())
    for section, values in change.items():
        if section == "method" and values.get("name") not in (None, "gear"):
            raw["method"] = {"name": values["name"], **({"loss": values["loss"]} if "loss" in values else {})}
            raw["search"]["space"] = {}
            raw.pop("ablations")
        else:
            raw[section].update(values)
    if raw["dataset"]["name"] == "ser3":
        for key in ("corpora", "protocol", "extractor", "target"):
            raw["dataset"].pop(key, None)
    raw["storage"]["path"] = str(tmp_path / "runs")
    assert main(["sweep", str(_write(raw, tmp_path)), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not (tmp_path / "runs").exists()


def test_the_spec_loads_without_the_corpus_and_names_the_users_features():
    from fairray.config import build_spec

    text = SPEC.read_text()
    spec = build_spec(yaml.safe_load(text), str(SPEC))
    assert spec.dataset.targets == "regression" and spec.method.params.loss == "l1"
    assert not Path(spec.dataset.corpora[0].root).exists() or True  # a placeholder: nothing is read at load time
    assert "YOU SUPPLY THE DATA" in text and "mosi_data.pkl" in text


def test_the_fixture_is_in_mults_pickle_layout(mosi):
    with open(mosi[0] / "mosi_data.pkl", "rb") as handle:
        data = pickle.load(handle)
    assert set(data) == {"train", "valid", "test"}
    assert data["train"]["labels"].shape == (96, 1, 1) and data["train"]["text"].shape == (96, 5, 6)
    assert isinstance(data["train"]["id"][0, 0], bytes)
