"""`fairray report` on a real CBERL ablation (real Ray Tune, real MLflow store, the built-in data): ``--layout
auto`` picks the per-class layout, whose numbers are recomputed from the trials' logged predictions and equal the
metrics the trials logged; bad layout options are one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from fairray.cli import main
from fairray.metrics import Predictions

pytestmark = pytest.mark.slow

SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "erm.yaml"


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("cberl_report")
    raw = yaml.safe_load(SPEC.read_text())
    raw["name"] = "cberl_small"
    raw["model"] = {"name": "mlp", "hidden": 32, "depth": 1, "dropout": 0.1}
    raw["method"] = {"name": "cberl", "augment_ratio": 0.0, "latent": 8, "lstm_hidden": 8, "gcn_hidden": 16,
                     "heads": 2}
    raw["train"].update(epochs=1)
    raw["budget"].update(max_concurrent=2, max_failures=0)
    raw["storage"]["path"] = str(tmp / "runs")
    raw["ablations"] = {"small": {"seeds": [0, 1], "cells": [
        {"method.name": ["cberl"]},
        {"method.name": ["erm"], "method.loss": ["ce"]},
        {"method.name": ["erm"], "method.loss": ["focal"]},
    ]}}
    path = tmp / "cberl_small.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["sweep", str(path), "--ablation", "small", "--quiet"]) == 0
    return path


def _trials(spec: Path):
    client = MlflowClient(f"sqlite:///{spec.parent / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cberl_small").experiment_id], max_results=100)
    return client, [r for r in runs if r.data.tags.get("fairray.kind") == "trial" and r.info.status == "FINISHED"]


def test_auto_layout_reports_per_class_f1_from_the_logged_predictions(spec, capsys, tmp_path):
    client, trials = _trials(spec)
    assert len(trials) == 6
    out = tmp_path / "report"
    capsys.readouterr()
    assert main(["report", str(spec), "--ablation", "small", "--minority", "fear,sadness", "--n-boot", "20",
                 "--out", str(out)]) == 0
    md = (out / "cberl_small-small.md").read_text()
    assert md.strip() in capsys.readouterr().out
    assert "| cell | seeds | F1 fear | F1 sadness |" in md
    assert "## Against ERM (ce)" in md and "## Against focal-only ERM" in md
    values = md.split("| cell | seeds")[1].split("\n\n")[0]  # the values table, before the difference tables
    header = [c.strip() for c in ("| cell | seeds" + values.splitlines()[0]).split("|")]
    rows = {line.split("|")[1].strip(): line.split("|") for line in values.splitlines()[2:]}
    erm = [r for r in trials if r.data.params["method.name"] == "erm" and r.data.params.get("method.loss") == "ce"]
    wf1 = float(rows["ERM (ce)"][header.index("W-F1")].split()[0])
    assert wf1 == pytest.approx(np.mean([r.data.metrics["test/weighted_f1"] for r in erm]), abs=5e-4)
    # F1 fear of the CBERL cell: the seed mean of the one-vs-rest F1 on each trial's logged test predictions
    cberl = [r for r in trials if r.data.params["method.name"] == "cberl"]
    f1 = []
    for r in cberl:
        pred = Predictions.load(client.download_artifacts(r.info.run_id, "predictions/test.npz", str(tmp_path)))
        c = list(pred.classes).index("fear")
        tp = np.sum((pred.y_pred == c) & (pred.y_true == c))
        f1.append(2 * tp / (np.sum(pred.y_pred == c) + np.sum(pred.y_true == c)))
    assert float(rows["CBERL"][header.index("F1 fear")].split()[0]) == pytest.approx(np.mean(f1), abs=5e-4)


def test_a_minority_class_the_sweep_lacks_is_one_line_exit_2(spec, capsys):
    capsys.readouterr()
    assert main(["report", str(spec), "--ablation", "small", "--minority", "fear,disgust", "--n-boot", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disgust" in err[0]
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(spec), "--ablation", "small", "--split", "train"])
    assert exit_.value.code == 2 and "expected dev, test or an extra test set" in capsys.readouterr().err
