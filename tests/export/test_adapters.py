"""The ssl model end to end (real Ray Tune + MLflow) from real RAVDESS waveforms: a LoRA sweep, export with
peft adapter folders, predict -> evaluate reproducing the logged test metrics, and a changed base model
refused in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from fairray._local_model import folder_digest
from fairray.cli import main
from fairray.export import load_export
from fairray.models._peft import load_adapter
from fairray.models.ssl import write_random_model

pytestmark = [pytest.mark.slow, pytest.mark.corpora]
EMOTIONS = ["anger", "happiness", "neutral", "sadness"]
NO_DROPOUT = {"hidden_dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "feat_proj_dropout": 0.0,
              "layerdrop": 0.0}


def ravdess_subset(corpora: Path, dst: Path, actors: int = 8, per_cell: int = 2) -> Path:
    """``actors`` RAVDESS actors (half F, half M) x 4 emotions x ``per_cell`` real clips, as a manifest corpus."""
    manifest = pd.read_csv(corpora / "ravdess" / "manifest.csv", dtype=str, keep_default_na=False)
    speakers = {g: sorted(manifest.loc[manifest["gender"] == g, "speaker"].unique())[:actors // 2] for g in "FM"}
    manifest = manifest[manifest["speaker"].isin(speakers["F"] + speakers["M"]) & manifest["emotion"].isin(EMOTIONS)]
    manifest = manifest.groupby(["speaker", "emotion"]).head(per_cell)
    for rel in manifest["path"]:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).symlink_to(corpora / "ravdess" / rel)
    manifest.to_csv(dst / "manifest.csv", index=False)
    return dst


@pytest.fixture(scope="module")
def swept(corpora, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ssl-sweep")
    base = write_random_model(tmp / "wavlm", "wavlm", norm="layer", **NO_DROPOUT)
    spec = {
        "name": "ssl-lora",
        "dataset": {"name": "corpora", "corpora": [{"adapter": "manifest", "root": str(ravdess_subset(
            corpora, tmp / "ravdess"))}], "extractor": None, "inputs": {"audio": {"kind": "waveform", "max_seconds": 1.0}},
            "emotions": EMOTIONS, "languages": ["en"], "attribute": "gender", "stratum": "language",
            "cache": str(tmp / "cache")},
        "model": {"name": "ssl", "model_path": str(base), "finetune": "lora", "lora_r": 4, "hidden": 16,
                  "dropout": 0.0},
        "method": {"name": "erm"},
        "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "s_min": 1},
        "search": {"sampler": "random", "space": {"train.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}},
                   "objectives": [{"metric": "dev/weighted_f1", "direction": "max"},
                                  {"metric": "dev/tpr_gap/gender/worst:language", "direction": "min"}]},
        "budget": {"num_samples": 2, "max_concurrent": 2, "seed": 0, "max_failures": 0},
        "tracking": {"experiment": "ssl-lora"},
        "storage": {"path": str(tmp / "runs")},
    }
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(path), "--quiet"]) == 0
    return tmp, path, base, f"sqlite:///{tmp / 'runs' / 'mlflow.db'}"


def test_lora_sweep_export_predict_evaluate_round_trip(swept, capsys, tmp_path):
    tmp, spec, base, uri = swept
    c = MlflowClient(uri)
    trials = [r for r in c.search_runs([c.get_experiment_by_name("ssl-lora").experiment_id])
              if r.data.tags.get("fairray.kind") == "trial"]
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    for r in trials:
        m = r.data.metrics
        assert 0 < m["model/trainable_params"] < 0.5 * m["model/total_params"]

    out = tmp_path / "pareto"
    assert main(["export", str(spec), "--out", str(out)]) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["exports"]
    for e in index["exports"]:
        folder = out / e["path"]
        assert e["adapters"] == ["adapters/backbone"]
        assert e["base_models"] == {"model": {"path": str(base.resolve()), "digest": folder_digest(base)}}
        assert "adapters/backbone" in (folder / "MODEL_CARD.md").read_text()
        adapter = folder / "adapters" / "backbone"
        assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
        # the checkpoint holds adapters, layer weights and head only: a small part of the base model's bytes
        assert (folder / "model.pt").stat().st_size < 0.5 * (base / "model.safetensors").stat().st_size

        preds = tmp_path / f"{e['path']}.csv"
        assert main(["predict", str(folder), "--split", "test", "--out", str(preds)]) == 0
        capsys.readouterr()
        assert main(["evaluate", str(preds), "--group", "gender", "--stratum", "language", "--format", "json"]) == 0
        evaluated = json.loads(capsys.readouterr().out)
        logged = c.get_run(e["run_id"]).data.metrics
        test_keys = [k for k in logged if k.startswith("test/") and k != "test/loss"]
        assert len(test_keys) > 20
        for k in test_keys:
            a, b = evaluated[k], logged[k]
            assert (a is None and math.isnan(b)) or a == pytest.approx(b, abs=1e-9), k


def test_the_adapter_folder_loads_with_peft_and_gives_the_trained_backbone(swept, tmp_path):
    from transformers import AutoModel

    tmp, spec, base, _ = swept
    out = tmp_path / "pareto"
    assert main(["export", str(spec), "--out", str(out)]) == 0
    e = json.loads((out / "index.json").read_text())["exports"][0]
    folder = out / e["path"]
    model, _, _ = load_export(folder)
    x = torch.randn(2, 8000)
    mask = torch.ones_like(x, dtype=torch.bool)
    with torch.no_grad():
        ours = model.backbone(input_values=x, attention_mask=mask.long()).last_hidden_state
        from fairray.models.ssl import attention_through_modules

        hf = AutoModel.from_pretrained(base, local_files_only=True)
        attention_through_modules(hf)  # transformers' WavLM attention reads q/v_proj weights past the adapters
        peft_model = load_adapter(hf, folder / "adapters" / "backbone").eval()
        theirs = peft_model(input_values=x, attention_mask=mask.long()).last_hidden_state
    torch.testing.assert_close(theirs, ours)
    lora = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora and any(float(p.abs().sum()) > 0 for p in lora)  # trained adapters, not the zero init


def test_predict_refuses_a_base_model_whose_hash_differs(swept, capsys, tmp_path):
    tmp, spec, base, _ = swept
    out = tmp_path / "pareto"
    assert main(["export", str(spec), "--out", str(out)]) == 0
    folder = out / json.loads((out / "index.json").read_text())["exports"][0]["path"]
    other = write_random_model(tmp_path / "other", "wavlm", norm="layer", seed=7, **NO_DROPOUT)  # other weights
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["model"]["model_path"] = str(other)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    preds = tmp_path / "preds.csv"
    assert main(["predict", str(folder), "--split", "test", "--out", str(preds)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not the one this checkpoint was trained on" in err and str(base) in err
    assert not preds.exists()
