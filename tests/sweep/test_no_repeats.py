"""The issue's repro, end to end (real Ray Tune, Optuna, MLflow, built-in data, 2 epochs): a search over
``method.name: [erm, minmaxgap]`` with ``method.lambda_max`` conditional on minmaxgap draws ERM four times from
its seeded random sampler; ERM is trained once, the repeats are told its result, and the summary counts them.
The same sweep stops trials early and carries a constraint, so the runner's wiring of both is checked too."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from fairray.cli import main

pytestmark = pytest.mark.slow

SPEC = {
    "name": "repeats",
    "method": {"name": "erm"},
    "model": {"name": "mlp", "hidden": 32},
    "train": {"epochs": 2, "batch_size": 256, "s_min": 1},
    "search": {
        "sampler": "random",
        "space": {"method.name": {"type": "categorical", "choices": ["erm", "minmaxgap"]},
                  "method.lambda_max": {"type": "loguniform", "low": 0.5, "high": 20,
                                        "when": {"method.name": ["minmaxgap"]}}},
        "objectives": [{"metric": "dev/weighted_f1", "direction": "max"},
                       {"metric": "dev/tpr_gap/gender/worst:language", "direction": "min"}],
        "early_stopping": {"type": "moasha", "grace": 1, "reduction": 2},
        "constraints": ["dev/weighted_f1 >= 0.05"],
    },
    # seed 4 draws erm, erm, erm, erm, minmaxgap, minmaxgap (checked below from the study itself)
    "budget": {"num_samples": 3, "max_concurrent": 2, "seed": 4, "max_failures": 0},
    "resources": {"backend": "function"},
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("repeats")
    raw = {**SPEC, "storage": {"path": str(tmp / "runs")}}
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return tmp, path


def test_each_distinct_configuration_is_trained_once(swept, capfd):
    tmp, path = swept
    assert main(["sweep", str(path), "--quiet"]) == 0
    out = capfd.readouterr().out
    uri = f"sqlite:///{tmp / 'runs' / 'mlflow.db'}"
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("repeats").experiment_id], max_results=100)
    parent = next(r for r in runs if r.data.tags.get("fairray.kind") == "sweep")
    trials = [r for r in runs if r.data.tags.get("fairray.kind") == "trial"]
    configs = [(r.data.params["method.name"], r.data.params.get("method.lambda_max")) for r in trials]
    assert len(trials) == 3 and [m for m, _ in configs].count("erm") == 1 and len(set(configs)) == 3

    study = optuna.load_study(study_name="fairray", storage=parent.data.tags["fairray.optuna_study"])
    samples = study.get_trials()
    assert [t.params["method.name"] for t in samples] == ["erm"] * 4 + ["minmaxgap"] * 2
    repeats = [t for t in samples if "fairray.duplicate_of" in t.user_attrs]
    assert len(repeats) == 3 and parent.data.tags["fairray.duplicates"] == "3"
    assert "3 duplicate samples (told, not trained)" in out
    erm = samples[0]
    for t in repeats:  # told exactly what the one ERM trial gave (COMPLETE values, or PRUNED at its rung)
        assert t.state == erm.state and t.values == erm.values and t.user_attrs.get("fairray.values") == \
            erm.user_attrs.get("fairray.values")

    # early stopping and constraints are wired: every run is either finished or pruned at the rung after
    # one epoch, the pruned ones are PRUNED in Optuna, feasible finished trials are tagged so
    pruned = [r for r in trials if r.data.tags.get("fairray.pruned") == "true"]
    assert all(r.info.status == "KILLED" and r.data.tags["fairray.pruned_rung"] == "1" for r in pruned)
    assert all(r.info.status == "FINISHED" for r in trials if r not in pruned)
    distinct = [t for t in samples if "fairray.duplicate_of" not in t.user_attrs]
    assert sum(t.state == TrialState.PRUNED for t in distinct) == len(pruned)
    assert (f", {len(pruned)} pruned" in out) == bool(pruned)
    assert json.loads(parent.data.tags["fairray.constraints"]) == ["dev/weighted_f1 >= 0.05"]
    for r in trials:
        if r not in pruned:
            assert r.data.tags["fairray.feasible"] == ("true" if r.data.metrics["dev/weighted_f1"] >= 0.05
                                                       else "false")
    assert Path(tmp / "runs" / "optuna").is_dir()
