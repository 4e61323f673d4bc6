"""MOASHA and the fairray searcher under real Ray Tune, Optuna and MLflow, on scripted trials (fixed dev curves,
no training): a trial dominated at its rung is stopped, a non-dominated one goes on; the stopped trial is PRUNED in
Optuna and tagged in MLflow, and left off the front unless asked for; a repeated configuration is told, not
trained; a constraint keeps an infeasible trial off the default front."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution
from optuna.samplers import RandomSampler
from optuna.trial import TrialState

from fairray.config import Constraint, ParamSpec
from fairray.frontier.query import fronts, load_sweep
from fairray.sweep.marks import TrialMarks, close_pruned_runs
from fairray.sweep.scheduler import MOASHA
from fairray.sweep.searcher import USER_DUPLICATE_OF, USER_PRUNED_RUNG, USER_VALUES, FairraySearcher
from fairray.tracking import TrialRun, ensure_experiment, start_sweep_run

pytestmark = pytest.mark.slow

UTIL, GAP = "dev/weighted_f1", "dev/tpr_gap/gender/worst:language"
OBJECTIVES = [(UTIL, "max"), (GAP, "min")]
# dev (weighted F1, worst-language TPR gap) after each of 4 epochs; one rung, after 2 epochs (grace 2, reduction 2)
CURVES = {
    "a": [(0.50, 0.20), (0.60, 0.15), (0.62, 0.14), (0.63, 0.14)],  # good
    "b": [(0.40, 0.30), (0.45, 0.25), (0.50, 0.24), (0.52, 0.24)],  # dominated by a at the rung
    "c": [(0.30, 0.10), (0.35, 0.05), (0.36, 0.05), (0.37, 0.04)],  # worse F1, smaller gap: not dominated
}
CONSTRAINT = Constraint.parse(f"{UTIL} >= 0.5")  # c misses it by 0.13


def _scripted(config: dict, uri: str, experiment_id: str, parent: str) -> None:
    """A trial that logs to MLflow as fairray's trials do and reports a fixed curve to Tune."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    run = TrialRun.open(uri, experiment_id, parent, trial_id,
                        {"fairray.kind": "trial", "fairray.searched_params": json.dumps(sorted(config))},
                        {k: str(v) for k, v in config.items()})
    try:  # a seed (budget.repeats) shifts the curve: F1 + 0.01 per seed
        curve = [(u + 0.01 * config.get("train.seed", 0), g) for u, g in CURVES[config["curve"]]]
        for epoch, (util, gap) in enumerate(curve):
            metrics = {"epoch": epoch, UTIL: util, GAP: gap}
            run.log(metrics, step=epoch)
            tune.report(metrics)
        final = {UTIL: curve[-1][0], GAP: curve[-1][1], "final": 1.0}
        run.log(final, step=len(curve))
        tune.report(final)
        run.finish()
    except SystemExit:  # stopped by Tune: as run_trial does
        run.end("KILLED", "interrupted")
        raise


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def swept(tmp_path_factory, ray_session):
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    tmp = tmp_path_factory.mktemp("moasha")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    experiment_id = ensure_experiment(uri, "scripted", str(tmp))
    parent = start_sweep_run(uri, experiment_id, "scripted", str(tmp), {"method": {"name": "erm"}}, OBJECTIVES)
    MlflowClient(uri).set_tag(parent.run_id, "fairray.constraints", json.dumps([str(CONSTRAINT)]))

    scheduler = MOASHA(OBJECTIVES, grace=2, reduction=2, max_epochs=4)
    searcher = FairraySearcher({"curve": CategoricalDistribution(list(CURVES))},
                               {"curve": ParamSpec("categorical", choices=tuple(CURVES))}, OBJECTIVES,
                               RandomSampler(seed=0), [CONSTRAINT], pruned=scheduler.record)
    for curve in ("a", "b", "a", "c"):  # the second "a" repeats a finished configuration
        searcher.study.enqueue_trial({"curve": curve})
    tuner = tune.Tuner(
        tune.with_parameters(_scripted, uri=uri, experiment_id=experiment_id, parent=parent.run_id),
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, 1), scheduler=scheduler,
                                    num_samples=3, reuse_actors=True),
        run_config=tune.RunConfig(name="scripted", storage_path=str(tmp / "ray"), verbose=0,
                                  callbacks=[TrialMarks(uri, experiment_id, parent.run_id, [CONSTRAINT],
                                                        scheduler.record)]))
    results = tuner.fit()
    close_pruned_runs(uri, experiment_id, parent.run_id, scheduler.pruned)
    trial_of = {r.config["curve"]: r.metrics["trial_id"] for r in results}
    return uri, scheduler, searcher, trial_of


def test_the_dominated_trial_is_stopped_at_its_rung_and_the_non_dominated_one_goes_on(swept):
    _, scheduler, _, trial_of = swept
    assert scheduler.rungs == (2,)
    assert set(trial_of) == {"a", "b", "c"}  # three trials trained: the repeated "a" was not
    assert set(scheduler.pruned) == {trial_of["b"]}
    record = scheduler.pruned[trial_of["b"]]
    assert record.rung == 2 and record.values == pytest.approx(CURVES["b"][1]) and (record.of, record.kept) == (2, 1)
    assert list(scheduler.records[2]) == [trial_of["a"], trial_of["b"], trial_of["c"]]


def test_optuna_holds_the_pruned_trial_as_pruned_with_its_rung_values(swept):
    _, _, searcher, _ = swept
    trials = searcher.study.get_trials()
    assert [(t.params["curve"], t.state) for t in trials] == [
        ("a", TrialState.COMPLETE), ("b", TrialState.PRUNED), ("a", TrialState.COMPLETE), ("c", TrialState.COMPLETE)]
    a, b, repeat, c = trials
    assert a.values == pytest.approx(CURVES["a"][-1]) and repeat.values == a.values
    assert b.values is None and b.user_attrs[USER_VALUES] == pytest.approx(CURVES["b"][1])
    assert b.user_attrs[USER_PRUNED_RUNG] == 2
    assert USER_DUPLICATE_OF in repeat.user_attrs and searcher.n_duplicates == 1
    # the constraint reaches every sampler through Trial.set_constraint: > 0 is infeasible
    assert a.constraints == {str(CONSTRAINT): pytest.approx(0.5 - 0.63)}
    assert c.constraints == {str(CONSTRAINT): pytest.approx(0.5 - 0.37)}


def test_mlflow_marks_pruned_and_infeasible_trials(swept):
    uri, _, _, trial_of = swept
    c = MlflowClient(uri)
    runs = {r.data.tags["fairray.trial_id"]: r for r in
            c.search_runs([c.get_experiment_by_name("scripted").experiment_id], "tags.`fairray.kind` = 'trial'")}
    assert set(runs) == set(trial_of.values())
    pruned = runs[trial_of["b"]]
    assert pruned.info.status == "KILLED" and pruned.data.tags["fairray.pruned"] == "true"
    assert pruned.data.tags["fairray.pruned_rung"] == "2"
    assert "pruned by moasha at the 2-epoch rung" in pruned.data.tags["fairray.failure_reason"]
    assert json.loads(pruned.data.tags["fairray.pruned_values"]) == pytest.approx(CURVES["b"][1])
    assert runs[trial_of["a"]].info.status == runs[trial_of["c"]].info.status == "FINISHED"
    assert runs[trial_of["a"]].data.tags["fairray.feasible"] == "true"
    assert runs[trial_of["c"]].data.tags["fairray.feasible"] == "false"
    assert json.loads(runs[trial_of["c"]].data.tags["fairray.violations"]) == {
        str(CONSTRAINT): pytest.approx(0.13)}


def test_the_front_leaves_out_pruned_and_infeasible_trials_unless_asked(swept):
    uri, _, _, trial_of = swept
    sweep = load_sweep(uri, "scripted")
    assert sorted(t.trial_id for t in sweep.trials) == sorted([trial_of["a"], trial_of["c"]])
    assert sweep.n_pruned == 1 and sweep.constraints == (CONSTRAINT,)
    front = fronts(sweep)[0]
    on = {t.trial_id for t, keep in zip(front.trials, front.on_front, strict=True) if keep}
    assert on == {trial_of["a"]}  # c is not dominated, but infeasible
    assert front.hypervolume == pytest.approx(0.63 * (1 - 0.14))

    with_pruned = load_sweep(uri, "scripted", include_pruned=True)
    b = next(t for t in with_pruned.trials if t.trial_id == trial_of["b"])
    assert b.pruned_rung == 2 and (b.metrics[UTIL], b.metrics[GAP]) == pytest.approx(CURVES["b"][1])
    front = fronts(with_pruned)[0]
    assert not front.on_front[with_pruned.trials.index(b)]  # dominated by a at any time
    np.testing.assert_allclose(front.values[with_pruned.trials.index(b)], CURVES["b"][1])


@pytest.fixture(scope="module")
def repeated(tmp_path_factory, ray_session):
    """budget.repeats: 3 over two configurations: six Tune trials, two Optuna trials."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    tmp = tmp_path_factory.mktemp("repeats")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    experiment_id = ensure_experiment(uri, "repeated", str(tmp))
    parent = start_sweep_run(uri, experiment_id, "repeated", str(tmp), {"method": {"name": "erm"}}, OBJECTIVES)
    MlflowClient(uri).set_tag(parent.run_id, "fairray.repeats", "3")
    searcher = FairraySearcher({"curve": CategoricalDistribution(list(CURVES))},
                               {"curve": ParamSpec("categorical", choices=tuple(CURVES))}, OBJECTIVES,
                               RandomSampler(seed=0), repeats=3, seed=10)
    for curve in ("a", "c"):
        searcher.study.enqueue_trial({"curve": curve})
    tune.Tuner(
        tune.with_parameters(_scripted, uri=uri, experiment_id=experiment_id, parent=parent.run_id),
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, 2), num_samples=6, reuse_actors=True),
        run_config=tune.RunConfig(name="repeated", storage_path=str(tmp / "ray"), verbose=0)).fit()
    return uri, searcher


def test_repeats_give_one_run_per_seed_and_optuna_their_mean(repeated):
    uri, searcher = repeated
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("repeated").experiment_id], "tags.`fairray.kind` = 'trial'")
    seeds = sorted((r.data.params["curve"], r.data.params["train.seed"]) for r in runs)
    assert seeds == [(k, str(s)) for k in ("a", "c") for s in (10, 11, 12)]  # three child runs per configuration
    trials = searcher.study.get_trials()
    assert [(t.params["curve"], t.state) for t in trials] == [("a", TrialState.COMPLETE), ("c", TrialState.COMPLETE)]
    for t in trials:  # told once, the mean over the seeds (F1 + 0.10, 0.11, 0.12)
        util, gap = CURVES[t.params["curve"]][-1]
        assert t.values == pytest.approx([util + 0.11, gap]) and t.user_attrs["fairray.repeats"] == 3

    sweep = load_sweep(uri, "repeated")
    assert len(sweep.trials) == 2 and sweep.n_failed == 0
    for record in sweep.trials:
        util, gap = CURVES[record.params["curve"]][-1]
        assert len(record.seeds) == 3 and "train.seed" not in record.params
        assert record.metrics[UTIL] == pytest.approx(util + 0.11)
        assert record.spread[UTIL] == pytest.approx((util + 0.10, util + 0.12))
    from fairray.cli import _format_fronts

    table = _format_fronts(sweep, fronts(sweep), "table", show_all=True)
    assert "[3 seeds: weighted_f1 0.7300-0.7500; tpr_gap 0.1400-0.1400]" in table  # the spread, on the front
