"""search_spaces/gear_mosi_sequences.yaml end to end: GEAR with a robust and a biased LSTM per modality over MOSI's
aligned frame sequences (the adapter's ``sequences: true``), real Ray Tune + Optuna + MLflow, on a small folder in
MulT's pickle layout; the per-modality OOD test sets; `fairray export`'s model card and `fairray predict` of the
regression checkpoints; a sequence modality the corpus lacks refused in one line, exit 2, no trial and no cache entry.
"""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from fairray.cli import main
from tests.sweep.test_gear_mosi_e2e import STEPS, WIDTHS, write_mosi

pytestmark = pytest.mark.slow

SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "gear_mosi_sequences.yaml"
MODALITIES = ("text", "audio", "vision")


@pytest.fixture(scope="module")
def mosi(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("mosi_seq")
    _, demographics = write_mosi(folder)  # text's last step is MulT's zero padding: trimmed from its sequence
    return folder, demographics


def small(raw: dict, mosi: tuple[Path, Path], storage: Path, **options) -> dict:
    root, demographics = mosi
    raw = copy.deepcopy(raw)
    raw["dataset"]["corpora"] = [{"adapter": "mosi", "root": str(root),
                                  "options": {"sequences": True, "demographics": str(demographics), **options}}]
    raw["dataset"]["cache"] = str(storage / "features")
    raw["dataset"]["ood"].update(k=3, moves=500)
    raw["model"]["sequence"].update(hidden=8, out=8)
    raw["model"]["encoders"]["audio"].update(hidden=4, out=4)
    raw["model"]["hidden"] = 16
    raw["method"].update(swap_epochs=0, d=16, hidden=16, heads=2)
    raw["train"].update(epochs=2, batch_size=32, s_min=2)
    raw["search"]["sampler"] = "random"
    raw["budget"].update(num_samples=2, max_concurrent=2, max_failures=0)
    raw["storage"]["path"] = str(storage / "runs")
    return raw


def _write(raw: dict, tmp_path: Path) -> Path:
    path = tmp_path / "gear_mosi_sequences.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _trials(storage: Path):
    client = MlflowClient(f"sqlite:///{storage / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("gear_mosi_sequences").experiment_id], max_results=100)
    return client, [r for r in runs if r.data.tags.get("fairray.kind") == "trial"]


def test_gear_sweep_on_sequences_trains_an_lstm_pair_per_modality_and_exports(mosi, tmp_path, capsys):
    raw = small(yaml.safe_load(SPEC.read_text()), mosi, tmp_path)
    spec = _write(raw, tmp_path)
    assert main(["sweep", str(spec), "--quiet"]) == 0
    capsys.readouterr()
    client, trials = _trials(tmp_path)
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    for r in trials:
        m = r.data.metrics
        assert r.data.tags["fairray.method"] == "gear" and 0.1 <= float(r.data.params["method.q"]) <= 1.0
        assert 0 < m["method/gmae_weight_mean"] < 1 and m["method/l_swap"] > 0
        assert m["test/n"] == 40 and m["dev/mae"] > 0
        # GEAR's OOD sets: one per modality (clustered on its time-averaged frames) and the joint one (tav)
        for name in (*MODALITIES, "joint"):
            assert m[f"test_ood_{name}/n"] == 20 and f"test_ood_{name}/mae/gender:F" in m, name
        # the checkpoint holds a robust and a biased LSTM per modality (and no time-averaged vector input)
        folder = Path(client.download_artifacts(r.info.run_id, "checkpoint", str(tmp_path / r.info.run_id)))
        weights = torch.load(folder / "model.pt", weights_only=True)
        for branch in ("robust_enc", "biased_enc"):
            for modality in MODALITIES:
                w = weights[f"{branch}.{modality}.rnn.weight_ih_l0"]
                hidden = 4 if modality == "audio" else 8
                assert tuple(w.shape) == (4 * hidden, WIDTHS[modality]), (branch, modality)
        meta = json.loads((folder / "fairray.json").read_text())
        assert {d["name"]: d["kind"] for d in meta["inputs"]} == dict.fromkeys(MODALITIES, "sequence")

    # export: the model cards of regression trials carry the regression metrics per group
    out = tmp_path / "pareto"
    assert main(["export", str(spec), "--out", str(out)]) == 0
    capsys.readouterr()
    index = json.loads((out / "index.json").read_text())
    assert index["exports"]
    from fairray.export import predict

    for e in index["exports"]:
        card = (out / e["path"] / "MODEL_CARD.md").read_text()
        per_group = card.split("## Per-group metrics")[1]
        assert "### test" in per_group and "gender=F" in per_group and "mae_gap" in per_group
        header = next(line for line in per_group.splitlines() if line.startswith("| subset |"))
        assert all(c in header for c in ("mae", "corr", "acc2", "f1_2")), header
        assert "weighted_f1" not in per_group
        run = client.get_run(e["run_id"])
        row = next(line for line in per_group.split("### test\n")[1].splitlines() if line.startswith("| all |"))
        assert f"{run.data.metrics['test/mae']:.3f}" in row
        # predict on the exported folder: the sequences are read again, the outputs are the logged ones
        frame = predict(out / e["path"], "test")
        mae = float(np.mean(np.abs(frame["y_pred"] - frame["y_true"])))
        assert mae == pytest.approx(run.data.metrics["test/mae"], rel=1e-4)


def test_erm_arm_trains_the_same_encoders_with_their_fusion_head(mosi, tmp_path, capsys):
    raw = small(yaml.safe_load(SPEC.read_text()), mosi, tmp_path)
    raw["ablations"]["paper"] = {"seeds": [0], "cells": [{"method.name": ["erm"]}]}
    assert main(["sweep", str(_write(raw, tmp_path)), "--ablation", "paper", "--quiet"]) == 0
    capsys.readouterr()
    client, trials = _trials(tmp_path)
    assert len(trials) == 1 and trials[0].info.status == "FINISHED"
    erm = trials[0]
    assert erm.data.params["method.loss"] == "l1"
    folder = Path(client.download_artifacts(erm.info.run_id, "checkpoint", str(tmp_path / "erm")))
    weights = torch.load(folder / "model.pt", weights_only=True)
    assert {k.split(".")[1] for k in weights if k.startswith("encoders.")} == set(MODALITIES)
    assert any(k.startswith("head.") for k in weights)


def _without_vision(mosi: tuple[Path, Path], folder: Path) -> tuple[Path, Path]:
    with open(mosi[0] / "mosi_data.pkl", "rb") as handle:
        data = pickle.load(handle)
    for split in data.values():
        del split["vision"]
    folder.mkdir()
    with open(folder / "mosi_data.pkl", "wb") as handle:
        pickle.dump(data, handle)
    return folder, mosi[1]


def test_a_sequence_modality_the_pickle_lacks_exits_2_in_one_line_before_any_trial(mosi, tmp_path, capsys):
    raw = small(yaml.safe_load(SPEC.read_text()), _without_vision(mosi, tmp_path / "novision"), tmp_path)
    assert main(["sweep", str(_write(raw, tmp_path)), "--quiet"]) == 2
    # found when the data is read (the pickle is not opened at spec load), which is before Ray starts and before
    # any experiment or run is written: fairray's one line alone, no trial, no sweep run, no frames cached
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no 'vision' array; leave it out of modalities" in err, err
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # the store of a fresh storage is not even created
    assert not list((tmp_path / "features").glob("sequences/*"))


def test_an_encoder_for_a_modality_left_out_is_refused_at_load(mosi, tmp_path, capsys):
    raw = small(yaml.safe_load(SPEC.read_text()), mosi, tmp_path, modalities=["text", "audio"])
    raw["dataset"]["ood"]["modalities"] = {"text": "text"}
    raw["model"]["encoders"]["vision"] = {"name": "lstm"}
    assert main(["sweep", str(_write(raw, tmp_path)), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model: model modalities: encoders.vision names no input" in err, err
    assert "text: sequence" in err and "audio: sequence" in err
    assert not (tmp_path / "runs").exists()


def test_the_spec_loads_without_the_corpus():
    from fairray.config import build_spec
    from fairray.data import declared_inputs

    spec = build_spec(yaml.safe_load(SPEC.read_text()), str(SPEC))
    inputs = declared_inputs(spec.dataset)
    assert {n: s.kind for n, s in inputs.items()} == dict.fromkeys(MODALITIES, "sequence")
    assert spec.model.name == "modalities" and spec.method.params.loss == "l1"
    assert STEPS > 1
