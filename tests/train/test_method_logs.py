"""Every method's per-batch logs reach MLflow, averaged per epoch, under method/... (a real MLflow store)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fairray.cli import main

SPECS = Path(__file__).resolve().parents[2] / "search_spaces"


@pytest.mark.parametrize("spec,method,expected", [
    ("minmaxgap.yaml", "minmaxgap", {"method/gap_batch", "method/penalty", "method/lambda", "method/delta_dev"}),
    ("idi.yaml", "gdro", {"method/q/F", "method/q/M"}),
    ("idi.yaml", "ds", {"method/retained_fraction"}),
])
def test_method_logs_are_in_mlflow(tmp_path, spec, method, expected):
    code = main(["train", str(SPECS / spec), "--quiet", "--set", "train.epochs=2", "--set", f"method.name={method}",
                 "--set", f"storage.path={tmp_path}", "--set", "tracking.uri=null"])
    assert code == 0
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    keys = set(runs[0].data.metrics)
    assert expected <= keys, sorted(k for k in keys if k.startswith("method/"))
    for key in expected:  # one value per epoch
        history = c.get_metric_history(runs[0].info.run_id, key)
        assert sorted(m.step for m in history) == [0, 1], key
    if method == "gdro":  # q is a distribution over the training groups, every epoch
        q = {k: runs[0].data.metrics[k] for k in expected}
        assert sum(q.values()) == pytest.approx(1.0, abs=1e-6)
