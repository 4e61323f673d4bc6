"""The one training loop: determinism, resume from a checkpoint, divergence handling, MLflow status."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from fairray.config import build_spec
from fairray.data import prepare
from fairray.errors import TrialError
from fairray.tracking import ensure_experiment
from fairray.train import LocalSession, TrialTracking, run_trial

OBJECTIVES = [{"metric": "dev/weighted_f1", "direction": "max"},
              {"metric": "dev/tpr_gap/gender/worst:language", "direction": "min"}]


def raw(epochs=4, **train):
    return {"name": "t", "method": {"name": "minmaxgap"}, "model": {"name": "mlp", "hidden": 16},
            "train": {"epochs": epochs, **train}, "search": {"objectives": OBJECTIVES}}


@pytest.fixture(scope="module")
def data():
    return prepare(build_spec(raw(), "t").dataset)


def test_resume_from_checkpoint_equals_an_uninterrupted_run(data, tmp_path):
    full = run_trial(raw(4), {}, data, LocalSession(tmp_path / "a"))
    run_trial(raw(2), {}, data, LocalSession(tmp_path / "b"))  # "interrupted" after epoch 2
    resumed = run_trial(raw(4), {}, data, LocalSession(tmp_path / "b"))
    assert resumed == full
    assert full["final"] == 1.0 and 0 <= full["selected_epoch"] < 4
    assert all(math.isfinite(full[o["metric"]]) for o in OBJECTIVES)


def test_epoch_reports_carry_method_logs(data, tmp_path):
    seen = []
    run_trial(raw(3), {"method.lambda_max": 2.0}, data, LocalSession(tmp_path), on_epoch=seen.append)
    assert [m["epoch"] for m in seen] == [0, 1, 2]
    lambdas = [m["method/lambda"] for m in seen]
    assert lambdas[0] == 0.5 and all(0 <= v <= 2.0 for v in lambdas)
    assert "dev/tpr_gap/gender/worst:language" in seen[0] and "dev/weighted_f1/gender:F" not in seen[0]


def test_divergence_fails_the_trial_and_its_mlflow_run(data, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = ensure_experiment(uri, "t", str(tmp_path))
    tracking = TrialTracking(uri, exp, None, "diverge", "t")
    with pytest.raises(TrialError, match="training loss is"):
        run_trial(raw(3, lr=1e12), {}, data, LocalSession(tmp_path / "ck"), tracking)
    run = MlflowClient(uri).search_runs([exp])[0]
    assert run.info.status == "FAILED"
    assert "training loss is" in run.data.tags["fairray.failure_reason"]
    # a retry resumes from the checkpoint and fails at once, without retraining
    with pytest.raises(TrialError, match="training loss is"):
        run_trial(raw(3, lr=1e12), {}, data, LocalSession(tmp_path / "ck"), tracking)
    assert len(MlflowClient(uri).search_runs([exp])) == 1  # the same run was resumed, not a new one


def test_successful_trial_logs_everything_to_one_finished_run(data, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = ensure_experiment(uri, "t", str(tmp_path))
    final = run_trial(raw(2), {}, data, LocalSession(tmp_path / "ck"), TrialTracking(uri, exp, None, "ok", "t"))
    c = MlflowClient(uri)
    run = c.search_runs([exp])[0]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/weighted_f1"] == pytest.approx(final["test/weighted_f1"])
    assert run.data.params["method.name"] == "minmaxgap"
    history = c.get_metric_history(run.info.run_id, "method/lambda")
    assert [m.step for m in history] == [0, 1]
    names = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"checkpoint", "groups", "method_state.json"} <= names
