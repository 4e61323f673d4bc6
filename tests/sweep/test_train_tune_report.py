"""What a ``backend: train`` trial hands Ray Tune, end to end (real Ray Tune, a real Ray Train TorchTrainer with one
CPU worker, Optuna, MLflow, built-in data): the final result Tune records has the objectives, the constrained
per-group metric and the headline metrics, not the final evaluation's per-group breakdown, which the trial's MLflow
run still has in full. The same rule as the function backend's (``for_tune``, tests/sweep/test_tune_report.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

CONSTRAINED = "dev/weighted_f1/gender:F/language:de"  # a per-group metric the driver reads (a constraint)
BREAKDOWN = "test/weighted_f1/gender:F/language:de"  # a per-group metric only MLflow needs
SPEC = {
    "name": "traintune",
    "method": {"name": "erm"},
    "model": {"name": "mlp", "hidden": 16},
    "train": {"epochs": 2, "batch_size": 32, "s_min": 1},
    "search": {
        "sampler": "random",
        "space": {"train.lr": {"type": "loguniform", "low": 1e-3, "high": 3e-3}},
        "objectives": [{"metric": "dev/weighted_f1", "direction": "max"},
                       {"metric": "dev/tpr_gap/gender/worst:language", "direction": "min"}],
        "constraints": [f"{CONSTRAINED} >= 0.0"],
    },
    "budget": {"num_samples": 1, "max_concurrent": 1, "seed": 0, "max_failures": 0},
    "resources": {"backend": "train", "num_workers": 1, "cpus_per_worker": 1},
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    from fairray.config import load_spec
    from fairray.sweep import run_sweep

    tmp = tmp_path_factory.mktemp("traintune")
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "storage": {"path": str(tmp / "runs")}}, sort_keys=False))
    return run_sweep(load_spec(path), verbose=0)  # starts its own local Ray (address="local") and shuts it down


def _tune_results(ray_path: str) -> list[dict]:
    files = sorted(Path(ray_path).glob("trial_*/result.json"))
    assert len(files) == 1, files
    return [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]


def test_train_trial_final_tune_result_lacks_the_breakdown_that_mlflow_has(swept):
    assert (swept.n_trials, swept.n_finished, swept.n_errored) == (1, 1, 0), swept
    results = _tune_results(swept.ray_path)
    final = [r for r in results if r.get("final") == 1.0]
    assert len(final) == 1, [sorted(r) for r in results]
    final = final[0]
    # what the driver reads: the objectives and the constrained per-group metric
    assert {"dev/weighted_f1", "dev/tpr_gap/gender/worst:language", CONSTRAINED} <= final.keys()
    assert {"test/weighted_f1", "selected_epoch"} <= final.keys()  # headline and non-metric keys
    assert BREAKDOWN not in final and not any(k.startswith("dev/n/") for k in final)

    c = MlflowClient(swept.tracking_uri)
    parent = c.get_run(swept.sweep_run_id)
    (run,) = c.search_runs([parent.info.experiment_id], "tags.`fairray.kind` = 'trial'")
    metrics = run.data.metrics
    assert BREAKDOWN in metrics and CONSTRAINED in metrics  # the trial logged the breakdown to MLflow itself
    assert metrics["dev/weighted_f1"] == pytest.approx(final["dev/weighted_f1"], abs=1e-6)
    per_group = [k for k in metrics if k.startswith("test/") and "gender:" in k]  # a group's own value
    assert len(per_group) > 10 and not any(k in final for k in per_group)
