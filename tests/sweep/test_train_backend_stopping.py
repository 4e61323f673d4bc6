"""Early stopping with ``backend: train``, end to end (real Ray Tune, a real Ray Train TorchTrainer with one CPU
worker per trial, Optuna, MLflow, built-in data): MOASHA stops a trial dominated at its rung inside a running Train
run; the trial is PRUNED in Optuna and its MLflow run ends KILLED and tagged, the other trial finishes.

Two configurations are enqueued so that their order is known: a trained one first (lr 3e-3), then one that barely
moves (lr 1e-5), ranked on dev weighted F1 alone at the 2-epoch rung (reduction 2: the better half of two goes on)."""

from __future__ import annotations

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

pytestmark = pytest.mark.slow

GOOD, BAD = 3e-3, 1e-5
EPOCHS = 12  # the bad trial could not finish before its stop lands: Ray Train, the Train-to-Tune queue and Tune
# hold at most a few reports between them, so its worker is at most a few epochs past the rung
SPEC = {
    "name": "trainstop",
    "method": {"name": "erm"},
    "model": {"name": "mlp", "hidden": 32},
    "train": {"epochs": EPOCHS, "batch_size": 32, "s_min": 1},
    "search": {
        "sampler": "random",
        "space": {"train.lr": {"type": "loguniform", "low": BAD, "high": GOOD}},
        "objectives": [{"metric": "dev/weighted_f1", "direction": "max"},
                       {"metric": "dev/tpr_gap/gender/worst:language", "direction": "min"}],
        "early_stopping": {"type": "moasha", "grace": 2, "reduction": 2,
                           "objectives": [{"metric": "dev/weighted_f1", "direction": "max"}]},
    },
    "budget": {"num_samples": 2, "max_concurrent": 1, "seed": 0, "max_failures": 0},
    "resources": {"backend": "train", "num_workers": 1, "cpus_per_worker": 1},
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    import fairray.sweep.searcher as searcher_module
    from fairray.config import load_spec
    from fairray.sweep import run_sweep

    tmp = tmp_path_factory.mktemp("trainstop")
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "storage": {"path": str(tmp / "runs")}}, sort_keys=False))
    base = searcher_module.FairraySearcher

    class Enqueued(base):  # the sweep's own searcher, with the two configurations queued in a known order
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for lr in (GOOD, BAD):
                self.study.enqueue_trial({"train.lr": lr})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(searcher_module, "FairraySearcher", Enqueued)
        outcome = run_sweep(load_spec(path), verbose=0)
    return tmp, outcome


def test_moasha_stops_the_dominated_train_trial_and_marks_it_pruned(swept):
    tmp, outcome = swept
    assert (outcome.n_trials, outcome.n_finished, outcome.n_pruned, outcome.n_errored) == (2, 1, 1, 0), outcome
    assert not outcome.interrupted

    c = MlflowClient(outcome.tracking_uri)
    parent = c.get_run(outcome.sweep_run_id)
    runs = c.search_runs([parent.info.experiment_id], "tags.`fairray.kind` = 'trial'")
    by_lr = {float(r.data.params["train.lr"]): r for r in runs}
    assert sorted(by_lr) == [BAD, GOOD]
    good, bad = by_lr[GOOD], by_lr[BAD]
    assert good.info.status == "FINISHED" and "fairray.pruned" not in good.data.tags
    assert good.data.metrics["final"] == 1.0
    assert bad.info.status == "KILLED" and bad.data.tags["fairray.pruned"] == "true"
    assert bad.data.tags["fairray.pruned_rung"] == "2"
    assert "final" not in bad.data.metrics  # stopped inside its Train run, not trained to the end

    study = optuna.load_study(study_name="fairray", storage=parent.data.tags["fairray.optuna_study"])
    states = {t.params["train.lr"]: t.state for t in study.get_trials()}
    assert states == {GOOD: TrialState.COMPLETE, BAD: TrialState.PRUNED}
