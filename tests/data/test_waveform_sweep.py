"""The YAML path end to end: a sweep (real Ray Tune + Optuna + MLflow) trains ``wav_cnn`` on RAVDESS waveforms
named in ``dataset.inputs``, decoded once through the waveform cache; no extractor runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from fairray.cli import main
from fairray.data.features._waveforms import FOLDER

pytestmark = [pytest.mark.slow, pytest.mark.corpora]


def test_a_sweep_trains_wav_cnn_on_ravdess_waveforms(ravdess_subset, tmp_path):
    root = ravdess_subset(tmp_path / "ravdess", actors=6, per_cell=2)
    raw = {
        "name": "wav_ravdess",
        "method": {"name": "erm"},
        "model": {"name": "wav_cnn", "channels": 16, "hidden": 16},
        "dataset": {"name": "corpora", "corpora": [{"adapter": "manifest", "root": str(root)}], "extractor": None,
                    "inputs": {"audio": {"kind": "waveform", "max_seconds": 1.0}}, "emotions": ["anger", "happiness", "neutral", "sadness"],
                    "languages": ["en"], "cache": str(tmp_path / "cache")},
        "train": {"epochs": 1, "batch_size": 16, "eval_batch_size": 16, "s_min": 1},
        "search": {"space": {"train.lr": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2}},
                   "objectives": [{"metric": "dev/weighted_f1", "direction": "max"},
                                  {"metric": "dev/tpr_gap/gender/worst:language", "direction": "min"}]},
        "budget": {"num_samples": 2, "max_concurrent": 2, "max_failures": 0},
        "resources": {"backend": "function"},
        "storage": {"path": str(tmp_path / "runs")},
    }
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    assert main(["sweep", str(spec), "--quiet"]) == 0

    assert len(list((tmp_path / "cache" / FOLDER).glob("*.json"))) == 1  # decoded once, for both trials
    assert not any(p.name != FOLDER for p in (tmp_path / "cache").iterdir())  # no feature extractor ran
    c = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("wav_ravdess").experiment_id])
    trials = [r for r in runs if r.data.tags.get("fairray.kind") == "trial"]
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    for r in trials:
        assert 0.0 <= r.data.metrics["test/weighted_f1"] <= 1.0
        assert math.isfinite(r.data.metrics["dev/tpr_gap/gender/worst:language"])
        assert r.data.metrics["test/n"] == 16  # one held-out speaker per gender x 4 emotions x 2 clips
    meta = json.loads(Path(c.download_artifacts(trials[0].info.run_id, "checkpoint/fairray.json")).read_text())
    (audio,) = meta["inputs"]  # the model was built from the waveform input's spec
    assert (audio["name"], audio["kind"], audio["max_length"], audio["sample_rate"]) == ("audio", "waveform",
                                                                                        16000, 16000)
