"""End to end with real Ray Tune, real Optuna and a real MLflow store: sweep → frontier → export →
predict → evaluate, and the numbers must survive the round trip exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from fairray.cli import main

pytestmark = pytest.mark.slow

SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "minmaxgap.yaml"


def _spec(tmp_path: Path, **overrides) -> Path:
    raw = yaml.safe_load(SPEC.read_text())
    raw["train"]["epochs"] = 3
    raw["budget"].update(num_samples=4, max_concurrent=2, max_failures=0)
    raw["storage"]["path"] = str(tmp_path / "runs")
    for dotted, value in overrides.items():
        node = raw
        *head, last = dotted.split("__")
        for key in head:
            node = node[key]
        node[last] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _runs(uri: str, experiment: str):
    c = MlflowClient(uri)
    return c.search_runs([c.get_experiment_by_name(experiment).experiment_id], max_results=1000)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    spec = _spec(tmp)
    assert main(["sweep", str(spec), "--quiet"]) == 0
    return tmp, spec, f"sqlite:///{tmp / 'runs' / 'mlflow.db'}"


def test_every_trial_is_a_finished_nested_mlflow_run(swept):
    _, _, uri = swept
    runs = _runs(uri, "minmaxgap")
    parents = [r for r in runs if r.data.tags.get("fairray.kind") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("fairray.kind") == "trial"]
    assert len(parents) == 1 and len(trials) == 4
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id}
    c = MlflowClient(uri)
    for r in trials:
        assert r.data.tags["fairray.method"] == "minmaxgap" and r.data.tags["fairray.dataset"] == "ser3"
        assert math.isfinite(r.data.metrics["dev/tpr_gap/gender/worst:language"])
        assert "test/weighted_f1/gender:F/language:de" in r.data.metrics
        assert len(c.get_metric_history(r.info.run_id, "method/lambda")) == 3  # λ logged every round
        state = json.loads(Path(c.download_artifacts(r.info.run_id, "method_state.json")).read_text())
        assert len(state["history"]) == 3
        searched = json.loads(r.data.tags["fairray.searched_params"])
        assert set(searched) == {"method.lambda_max", "method.eps", "method.eta", "method.p", "train.lr",
                                 "model.hidden"}


def test_frontier_per_language_from_mlflow(swept, capsys, tmp_path):
    _, spec, _ = swept
    capsys.readouterr()
    plot = tmp_path / "fronts.html"
    assert main(["frontier", str(spec), "--by", "language", "--format", "json", "--all",
                 "--plot", str(plot)]) == 0
    fronts = json.loads(capsys.readouterr().out)
    assert [f["restriction"] for f in fronts] == [{"language": "de"}, {"language": "en"}, {"language": "pl"}]
    for f in fronts:
        assert f["objectives"][0].endswith(f"/language:{f['restriction']['language']}")
        assert f["reference"] == [0.0, 1.0] and 0 <= f["hypervolume"] <= 1
        assert any(t["pareto"] for t in f["trials"]) and len(f["trials"]) == 4
    html = plot.read_text()
    assert "language=en" in html and "method.lambda_max" in html


def test_export_predict_evaluate_round_trip(swept, capsys, tmp_path):
    _, spec, uri = swept
    out = tmp_path / "pareto"
    assert main(["export", str(spec), "--out", str(out), "--register", "ser-e2e"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["exports"]
    c = MlflowClient(uri)
    assert c.get_model_version_by_alias("ser-e2e", "pareto-1").run_id in {e["run_id"] for e in index["exports"]}
    for e in index["exports"]:
        folder = out / e["path"]
        assert (folder / "MODEL_CARD.md").read_text().count("test") > 3
        preds = tmp_path / f"{e['path']}.csv"
        assert main(["predict", str(folder), "--split", "test", "--out", str(preds)]) == 0
        capsys.readouterr()
        assert main(["evaluate", str(preds), "--group", "gender", "--stratum", "language", "--format", "json"]) == 0
        evaluated = json.loads(capsys.readouterr().out)
        logged = c.get_run(e["run_id"]).data.metrics
        test_keys = [k for k in logged if k.startswith("test/") and k != "test/loss"]
        assert len(test_keys) > 100
        for k in test_keys:
            a, b = evaluated[k], logged[k]
            assert (a is None and math.isnan(b)) or a == pytest.approx(b, abs=1e-12), k
        frame = pd.read_csv(preds)
        assert {"y_true", "y_pred", "gender", "language", "p_anger"} <= set(frame.columns)


def test_train_backend_runs_the_loop_under_ray_train(tmp_path):
    """The same loop as a Ray Train train_loop_per_worker inside each Tune trial (TorchTrainer)."""
    spec = _spec(tmp_path, resources__backend="train", budget__num_samples=1, budget__max_concurrent=1,
                 train__epochs=2)
    assert main(["sweep", str(spec), "--quiet"]) == 0
    runs = _runs(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "minmaxgap")
    trials = [r for r in runs if r.data.tags.get("fairray.kind") == "trial"]
    assert len(trials) == 1 and trials[0].info.status == "FINISHED"
    assert (tmp_path / "runs" / "ray" / f"train-{trials[0].data.tags['fairray.trial_id']}").is_dir()


def test_bad_objective_values_fail_trials_not_the_front(tmp_path):
    """A trial whose objective is NaN is FAILED in MLflow with the reason, never told to Optuna as a value."""
    spec = _spec(tmp_path, budget__num_samples=1, budget__max_concurrent=1, train__epochs=1,
                 train__lr=1.0e12, search__space={"method.eps": {"type": "uniform", "low": 0.0, "high": 0.1}})
    assert main(["sweep", str(spec), "--quiet"]) == 1
    runs = _runs(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "minmaxgap")
    trial = [r for r in runs if r.data.tags.get("fairray.kind") == "trial"][0]
    assert trial.info.status == "FAILED" and "training loss is" in trial.data.tags["fairray.failure_reason"]
    assert not [r for r in runs if r.info.status == "RUNNING"]
