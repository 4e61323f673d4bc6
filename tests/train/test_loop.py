"""The one training loop: determinism, resume from a checkpoint, divergence handling, MLflow status, and
checkpoints that ``fairray predict`` turns back into the evaluated model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from fairray.config import build_spec
from fairray.data import prepare
from fairray.errors import DataError, TrialError
from fairray.export._predict import load_export
from fairray.methods import METHODS, TrainContext
from fairray.metrics import GroupReport, Predictions
from fairray.tracking import ensure_experiment
from fairray.train import LocalSession, TrialTracking, run_trial
from fairray.train.loop import _batch

OBJECTIVES = [{"metric": "dev/weighted_f1", "direction": "max"},
              {"metric": "dev/tpr_gap/gender/worst:language", "direction": "min"}]


def raw(epochs=4, method=None, **train):
    return {"name": "t", "method": method or {"name": "minmaxgap"}, "model": {"name": "mlp", "hidden": 16},
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
    assert {"checkpoint", "groups", "predictions", "method_state.json"} <= names


@pytest.mark.parametrize("method", [{"name": "erm"}, {"name": "lff"}])
def test_logged_predictions_reproduce_every_logged_metric(data, tmp_path, method):
    """predictions/{dev,test}.npz: what the bootstrap and the reproduction report read."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = ensure_experiment(uri, "t", str(tmp_path))
    final = run_trial(raw(2, method), {}, data, LocalSession(tmp_path / "ck"), TrialTracking(uri, exp, None, "p", "t"))
    c = MlflowClient(uri)
    run = c.search_runs([exp])[0]
    local = Path(c.download_artifacts(run.info.run_id, "predictions", str(tmp_path / "art")))
    for split in ("dev", "test"):
        pred = Predictions.load(local / f"{split}.npz")
        idx = data.indices(split)
        assert pred.task == "single" and pred.classes == data.classes and (pred.attribute, pred.stratum) == (
            data.attribute, data.stratum_name)
        assert pred.uid.tolist() == data.meta.loc[idx, "uid"].tolist()
        assert pred.speaker.tolist() == data.meta.loc[idx, "speaker"].tolist()
        assert pred.y_true.tolist() == data.y[idx].tolist()
        assert (pred.y_pred == pred.prob.argmax(axis=1)).mean() > 0.99  # argmax of the logits, as evaluated
        np.testing.assert_allclose(pred.prob.sum(axis=1), 1.0, rtol=1e-5)
        flat = pred.report().flat(split)
        logged = {k: v for k, v in run.data.metrics.items() if k.startswith(f"{split}/") and k != f"{split}/loss"}
        assert len(logged) > 50 and set(flat) == set(logged)
        assert all(_same(flat[k], logged[k]) for k in logged), [k for k in logged if not _same(flat[k], logged[k])]
        assert all(_same(flat[k], final[k]) for k in flat)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("method", [{"name": "erm"}, {"name": "lff"}, {"name": "disent", "d": 8, "swap_start": 0.4}])
def test_checkpoint_predictions_reproduce_the_logged_test_metrics(data, tmp_path, method):
    """checkpoint → load_export → the inference net's test predictions give the logged numbers exactly."""
    final = run_trial(raw(3, method), {}, data, LocalSession(tmp_path))
    assert all(math.isfinite(final[o["metric"]]) for o in OBJECTIVES) and math.isfinite(final["test/loss"])
    model, meta, spec = load_export(tmp_path / "checkpoint")
    assert meta["method"] == method["name"] and spec.method.name == method["name"]
    idx = data.indices("test")
    with torch.no_grad():
        logits = model(torch.as_tensor(data.X[idx]))
    assert logits.shape == (len(idx), len(data.classes))
    report = GroupReport.compute(data.y[idx], logits.argmax(1).numpy(), data.classes, data.groups_frame("test"),
                                 attribute=data.attribute, stratum=data.stratum_name, s_min=spec.train.s_min)
    logged = {k: v for k, v in final.items() if k.startswith("test/") and k != "test/loss"}
    flat = report.flat("test")
    assert len(logged) > 50 and set(flat) == set(logged)
    assert all(_same(flat[k], logged[k]) for k in logged), [k for k in logged if not _same(flat[k], logged[k])]
    # and the dev base loss used for model selection is the method's per-sample loss of those logits
    m = METHODS.get(spec.method.name)(spec.method.params, TrainContext.from_plain(meta["train_context"]))
    test_loss = float(m.per_sample_loss(logits, _batch(data, idx)).mean())
    assert test_loss == pytest.approx(final["test/loss"], rel=1e-5, abs=1e-7)  # another module instance, same batch


def test_checkpoint_without_a_stored_context(data, tmp_path):
    """Checkpoints written before the model hook: the default (one classifier) still loads; others refuse."""
    run_trial(raw(1, {"name": "erm"}), {}, data, LocalSession(tmp_path / "erm"))
    run_trial(raw(1, {"name": "lff"}), {}, data, LocalSession(tmp_path / "lff"))
    for name in ("erm", "lff"):
        path = tmp_path / name / "checkpoint" / "fairray.json"
        meta = json.loads(path.read_text())
        del meta["method"], meta["train_context"]
        path.write_text(json.dumps(meta))
    model, _, _ = load_export(tmp_path / "erm" / "checkpoint")
    assert model(torch.as_tensor(data.X[:3])).shape == (3, len(data.classes))
    with pytest.raises(DataError, match="train_context"):
        load_export(tmp_path / "lff" / "checkpoint")


class _Stop(Exception):
    pass


@pytest.mark.parametrize("method", [{"name": "lff"}, {"name": "disent", "d": 8, "swap_start": 0.5}])
def test_multi_net_methods_resume_identically(data, tmp_path, method):
    """Interrupted after epoch 2 of 4 (the EMA tables, step counter and both nets come from the checkpoint)."""
    full = run_trial(raw(4, method), {}, data, LocalSession(tmp_path / "a"))

    def stop(metrics):
        if metrics["epoch"] == 2:
            raise _Stop

    with pytest.raises(_Stop):
        run_trial(raw(4, method), {}, data, LocalSession(tmp_path / "b"), on_epoch=stop)
    resumed = run_trial(raw(4, method), {}, data, LocalSession(tmp_path / "b"))
    assert resumed == full


def test_the_run_params_hold_the_methods_defaulted_knobs_and_the_specs_values(data, tmp_path):
    """A spec that names only the method still records every knob the method trained with; a value the spec
    (or the sampler) set wins over the default."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = ensure_experiment(uri, "t", str(tmp_path))
    run_trial(raw(1), {"method.lambda_max": 2.0}, data, LocalSession(tmp_path / "ck"),
              TrialTracking(uri, exp, None, "knobs", "t"))
    params = MlflowClient(uri).search_runs([exp])[0].data.params
    defaults = METHODS.get("minmaxgap").Params()
    assert params["method.name"] == "minmaxgap" and params["method.lambda_max"] == "2.0"
    assert float(params["method.eta"]) == pytest.approx(defaults.eta)
    assert float(params["method.p"]) == pytest.approx(defaults.p)
