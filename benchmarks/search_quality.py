"""Search quality: does a fairray sweep reach a better dev front than a plain Optuna loop, on less compute?

Five arms on the same spec (search_spaces/minmaxgap.yaml: dev weighted-F1 max, dev worst-language TPR gap min),
the same trial budget N and the same seeds, printed side by side (mean and spread over the seeds):

  * ``fairray tpe+moasha``  `fairray sweep` with TPE and ``search.early_stopping: {type: moasha}``;
  * ``fairray tpe``         the same sweep without early stopping;
  * ``optuna loop tpe``     a plain in-process Optuna loop (``study.optimize``) with the same TPE sampler, each
                            trial the same ``run_trial`` (no Ray, no MLflow);
  * ``fairray random 2N``   random search at twice the budget;
  * ``tune+OptunaSearch``   Ray Tune's ``OptunaSearch`` as it ships (lists of metrics and modes, its default
                            TPE sampler seeded, final values only), each trial the same ``run_trial``.

Hypervolume (reference point 0, 1; the same :func:`fairray.frontier.pareto.hypervolume`) of the trials that
trained fully (pruned trials never count): at the end of each arm, at equal wall time (the fastest arm's wall
time of that seed) and at equal trial-epochs (the fewest trial-epochs any arm used in that seed).

    python benchmarks/search_quality.py [--trials 24] [--epochs 15] [--grace 3] [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

SPEC = Path(__file__).resolve().parents[1] / "search_spaces" / "minmaxgap.yaml"
ARMS = ("fairray tpe+moasha", "fairray tpe", "optuna loop tpe", "fairray random 2N", "tune+OptunaSearch")


@dataclass
class Trace:
    """One arm, one seed: per trial its final dev objectives (NaN: pruned or failed), when it ended (seconds
    from the arm's start) and how many epochs it trained."""

    values: np.ndarray
    done_s: np.ndarray
    epochs: np.ndarray
    wall_s: float

    def hypervolume(self, wall_s: float = np.inf, epochs: float = np.inf) -> float:
        from fairray.frontier.pareto import hypervolume

        order = np.argsort(self.done_s, kind="stable")
        within = np.zeros(len(order), dtype=bool)
        within[order] = (self.done_s[order] <= wall_s) & (np.cumsum(self.epochs[order]) <= epochs)
        return hypervolume(self.values[within].reshape(-1, 2), ["max", "min"], [0.0, 1.0])


def _raw(tmp: Path, name: str, sampler: str, seed: int, trials: int, epochs: int, grace: int | None) -> dict:
    raw = yaml.safe_load(SPEC.read_text())
    raw.update(name=name)
    raw["tracking"]["experiment"] = name
    raw["train"].update(epochs=epochs, seed=seed)
    raw["search"]["sampler"] = sampler
    if grace is not None:
        raw["search"]["early_stopping"] = {"type": "moasha", "grace": grace, "reduction": 3}
    raw["budget"].update(num_samples=trials, seed=seed)
    raw["storage"]["path"] = str(tmp / "runs")
    return raw


def _fairray(tmp: Path, raw: dict) -> Trace:
    from fairray.config import load_spec
    from fairray.frontier.query import load_sweep
    from fairray.sweep import run_sweep
    from fairray.tracking import client

    path = tmp / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    t0 = time.time()
    out = run_sweep(load_spec(path), verbose=0)
    wall = time.time() - t0
    sweep = load_sweep(out.tracking_uri, out.experiment, out.sweep_run_id, include_pruned=True)
    objectives = [m for m, _ in sweep.objectives]
    c = client(out.tracking_uri)
    values, done, epochs = [], [], []
    for t in sweep.trials:
        full = t.pruned_rung is None
        values.append([t.metrics[m] if full else np.nan for m in objectives])
        done.append(c.get_run(t.run_id).info.end_time / 1000 - t0)
        # a stopped trial may train past its rung before the stop reaches it: count the epochs it logged
        trained = len({m.step for m in c.get_metric_history(t.run_id, "epoch")})
        epochs.append(raw["train"]["epochs"] if full else max(t.pruned_rung, trained))
    return Trace(np.array(values, dtype=float).reshape(-1, 2), np.array(done), np.array(epochs), wall)


def _optuna_loop(tmp: Path, raw: dict, trials: int) -> Trace:
    import optuna

    from fairray.config import build_spec
    from fairray.search import ConditionalSpace, make_sampler
    from fairray.sweep import prepare_data
    from fairray.train import LocalSession, run_trial

    spec = build_spec(raw, raw["name"])
    data = prepare_data(spec)
    objectives = [o.metric for o in spec.search.objectives]
    space = ConditionalSpace(spec.search.space)  # suggests every dimension (and a conditional one when it applies)
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=make_sampler("tpe", spec.budget.seed, len(objectives)))
    done: list[float] = []
    t0 = time.time()

    def objective(trial: optuna.Trial) -> list[float]:
        space(trial)
        params = dict(trial.params)
        with tempfile.TemporaryDirectory(dir=tmp) as d:
            final = run_trial(raw, params, data, LocalSession(d))
        done.append(time.time() - t0)
        return [final[m] for m in objectives]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=trials)
    values = np.array([t.values if t.values else [np.nan, np.nan] for t in study.trials], dtype=float)
    return Trace(values, np.array(done), np.full(len(done), spec.train.epochs), time.time() - t0)


def _tune_trial(config: dict, raw: dict, data) -> None:
    import torch

    from fairray.train import TuneSession, run_trial

    torch.set_num_threads(1)
    run_trial(raw, config, data, TuneSession())


def _tune_optunasearch(tmp: Path, raw: dict, trials: int) -> Trace:
    import optuna
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from fairray.config import build_spec
    from fairray.search import to_distributions
    from fairray.sweep import prepare_data

    spec = build_spec(raw, raw["name"])
    objectives = [(o.metric, o.direction.value) for o in spec.search.objectives]
    searcher = OptunaSearch(space=to_distributions(spec.search.space), metric=[m for m, _ in objectives],
                            mode=[d for _, d in objectives], sampler=optuna.samplers.TPESampler(seed=spec.budget.seed))
    t0 = time.time()
    trainable = tune.with_resources(tune.with_parameters(_tune_trial, raw=raw, data=prepare_data(spec)), {"cpu": 1})
    results = tune.Tuner(trainable, tune_config=tune.TuneConfig(
        search_alg=ConcurrencyLimiter(searcher, spec.budget.max_concurrent), num_samples=trials, reuse_actors=True),
        run_config=tune.RunConfig(name=raw["name"], storage_path=str(tmp / "ray"), verbose=0,
                                  callbacks=[JsonLoggerCallback(), CSVLoggerCallback()])).fit()
    wall = time.time() - t0
    values = [[r.metrics.get(m, np.nan) if r.error is None else np.nan for m, _ in objectives] for r in results]
    done = [r.metrics.get("timestamp", time.time()) - t0 for r in results]
    return Trace(np.array(values, dtype=float).reshape(-1, 2), np.array(done), np.full(len(done), spec.train.epochs),
                 wall)


def run_seed(tmp: Path, seed: int, trials: int, epochs: int, grace: int) -> dict[str, Trace]:
    out = {}
    out[ARMS[0]] = _fairray(tmp, _raw(tmp, f"es-s{seed}", "tpe", seed, trials, epochs, grace))
    out[ARMS[1]] = _fairray(tmp, _raw(tmp, f"tpe-s{seed}", "tpe", seed, trials, epochs, None))
    out[ARMS[2]] = _optuna_loop(tmp, _raw(tmp, f"loop-s{seed}", "tpe", seed, trials, epochs, None), trials)
    out[ARMS[3]] = _fairray(tmp, _raw(tmp, f"random-s{seed}", "random", seed, 2 * trials, epochs, None))
    out[ARMS[4]] = _tune_optunasearch(tmp, _raw(tmp, f"tune-s{seed}", "tpe", seed, trials, epochs, None), trials)
    return out


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=24, help="N: trials per arm (random search gets 2N)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--grace", type=int, default=3, help="epochs before MOASHA's first rung (reduction 3)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = ap.parse_args()
    import ray

    ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False)
    rows: dict[str, dict[str, list[float]]] = {a: {} for a in ARMS}
    try:
        with tempfile.TemporaryDirectory() as d:
            for seed in args.seeds:
                traces = run_seed(Path(d), seed, args.trials, args.epochs, args.grace)
                wall = min(t.wall_s for t in traces.values())
                epochs = min(t.epochs.sum() for t in traces.values())
                for arm, t in traces.items():
                    for key, value in (("hv", t.hypervolume()), ("hv@wall", t.hypervolume(wall_s=wall)),
                                       ("hv@epochs", t.hypervolume(epochs=epochs)), ("wall", t.wall_s),
                                       ("trial-epochs", float(t.epochs.sum())),
                                       ("trials", float(np.isfinite(t.values).all(axis=1).sum()))):
                        rows[arm].setdefault(key, []).append(value)
                    print(f"seed {seed} {arm}: {[round(rows[arm][k][-1], 4) for k in rows[arm]]}", flush=True)
    finally:
        ray.shutdown()
    print(f"\ndev hypervolume (reference 0, 1), {args.trials} trials x {args.epochs} epochs (random: "
          f"{2 * args.trials}), MOASHA grace {args.grace} reduction 3, seeds {args.seeds}: mean ± sd")
    heads = ["arm", "HV at the end", "HV @ equal wall", "HV @ equal trial-epochs", "trial-epochs", "wall s",
             "full trials"]
    print(" | ".join(heads))
    print(" | ".join("---" for _ in heads))
    for arm in ARMS:
        r = rows[arm]
        print(" | ".join([arm, _cell(r["hv"]), _cell(r["hv@wall"]), _cell(r["hv@epochs"]),
                          f"{statistics.mean(r['trial-epochs']):.0f}", f"{statistics.mean(r['wall']):.0f}",
                          f"{statistics.mean(r['trials']):.1f}"]))
    es, full, rnd = (statistics.mean(rows[a]["hv"]) for a in (ARMS[0], ARMS[1], ARMS[3]))
    epochs_ratio = statistics.mean(rows[ARMS[0]]["trial-epochs"]) / statistics.mean(rows[ARMS[1]]["trial-epochs"])
    print(f"\nearly stopping: {es / full:.3f} of the no-stopping hypervolume with {epochs_ratio:.2f} of its "
          f"trial-epochs (aim: >= 1.0 with <= 0.5); fairray tpe at N: {full / rnd:.3f} of random search's at 2N "
          "(aim: >= 1.0)")


if __name__ == "__main__":
    main()
