"""Search quality: does a fairray sweep reach a better dev front than a plain Optuna loop, on less compute?

The issue's five arms, and one more, on the same spec (search_spaces/minmaxgap.yaml: dev weighted-F1 max, dev
worst-language TPR gap min), the same trial budget N and the same seeds, printed side by side (mean and spread
over the seeds):

  * ``fairray tpe+moasha``  `fairray sweep` with TPE and ``search.early_stopping: {type: moasha, grace, reduction}``
                            on N samples: the same N configurations' worth of search, stopped early;
  * ``tpe+moasha 2N samp``  the same with 2N samples, i.e. what successive halving is for: more configurations
                            for the compute the stopped ones free; read at the no-stopping arm's trial-epoch
                            budget (and half of it), never at its end;
  * ``fairray tpe``         the same sweep without early stopping;
  * ``optuna loop tpe``     a plain in-process Optuna loop (``study.optimize``) with the same TPE sampler, each
                            trial the same ``run_trial`` (no Ray, no MLflow);
  * ``fairray random 2N``   random search at twice the budget;
  * ``tune+OptunaSearch``   Ray Tune's ``OptunaSearch`` as it ships (lists of metrics and modes, its default
                            TPE sampler seeded, final values only), each trial the same ``run_trial``.

Hypervolume (reference point 0, 1; the same :func:`fairray.frontier.pareto.hypervolume`) of the trials that
trained fully (pruned trials never count, as on fairray's default front): at the end of each arm, at equal wall
time (the fastest arm's wall time of that seed) and at a trial-epoch budget B: B = the no-stopping
``fairray tpe`` arm's trial-epochs in that seed, and B/2. The budget is counted strictly: a trial counts if it
finished before the arm had trained B epochs in all, the epochs of trials still running (or stopped later)
included (each epoch's time comes from its MLflow / Tune report).

The aims (issue 12, item 7): (A) early stopping reaches ``fairray tpe``'s hypervolume at the end within B/2;
(B) ``fairray tpe`` at N reaches ``fairray random 2N``. Both are printed with paired per-seed differences.

    python benchmarks/search_quality.py [--trials 16] [--epochs 20] [--grace 5] [--reduction 3] [--seeds 0 1 2 3 4]
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
ARMS = ("fairray tpe+moasha", "tpe+moasha 2N samp", "fairray tpe", "optuna loop tpe", "fairray random 2N",
        "tune+OptunaSearch")
ES, ES_MORE, TPE, LOOP, RANDOM, TUNE = ARMS


@dataclass
class Trace:
    """One arm, one seed: per trial its final dev objectives (NaN: pruned or failed), when it ended (seconds
    from the arm's start) and how many epochs it trained; when every epoch of every trial ended (``epoch_s``)."""

    values: np.ndarray
    done_s: np.ndarray
    epochs: np.ndarray
    wall_s: float
    epoch_s: np.ndarray

    def spent(self, t: float) -> int:
        """Trial-epochs trained by all trials together by ``t`` seconds."""
        return int(np.searchsorted(np.sort(self.epoch_s), t, side="right"))

    def hypervolume(self, wall_s: float = np.inf, epochs: float = np.inf) -> float:
        """Of the fully trained trials that ended by ``wall_s`` and before ``epochs`` trial-epochs were spent."""
        from fairray.frontier.pareto import hypervolume

        within = np.array([d <= wall_s and self.spent(d) <= epochs for d in self.done_s], dtype=bool)
        return hypervolume(self.values[within].reshape(-1, 2), ["max", "min"], [0.0, 1.0])


def _raw(tmp: Path, name: str, sampler: str, seed: int, trials: int, epochs: int,
         stopping: tuple[int, float] | None) -> dict:
    raw = yaml.safe_load(SPEC.read_text())
    raw.update(name=name)
    raw["tracking"]["experiment"] = name
    raw["train"].update(epochs=epochs, seed=seed)
    raw["search"]["sampler"] = sampler
    if stopping is not None:
        raw["search"]["early_stopping"] = {"type": "moasha", "grace": stopping[0], "reduction": stopping[1]}
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
    values, done, epochs, epoch_s = [], [], [], []
    for t in sweep.trials:
        full = t.pruned_rung is None
        values.append([t.metrics[m] if full else np.nan for m in objectives])
        done.append(c.get_run(t.run_id).info.end_time / 1000 - t0)
        # a stopped trial may train past its rung before the stop reaches it: count the epochs it logged
        ends = {m.step: m.timestamp / 1000 - t0 for m in c.get_metric_history(t.run_id, "epoch")}
        epochs.append(raw["train"]["epochs"] if full else max(t.pruned_rung, len(ends)))
        epoch_s += sorted(ends.values())
    return Trace(np.array(values, dtype=float).reshape(-1, 2), np.array(done), np.array(epochs), wall,
                 np.array(epoch_s))


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
    # one trial at a time: trial k's epochs all ended by its end
    return Trace(values, np.array(done), np.full(len(done), spec.train.epochs), time.time() - t0,
                 np.repeat(np.array(done), spec.train.epochs))


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
    epoch_s = []  # Tune's per-report timestamps (whole seconds) of the per-epoch reports
    for r in results:
        frame = r.metrics_dataframe
        if frame is not None and "epoch" in frame and "timestamp" in frame:
            epoch_s += (frame.loc[frame["epoch"].notna(), "timestamp"] - t0).tolist()
    return Trace(np.array(values, dtype=float).reshape(-1, 2), np.array(done), np.full(len(done), spec.train.epochs),
                 wall, np.array(epoch_s, dtype=float))


def run_seed(tmp: Path, seed: int, trials: int, epochs: int, stopping: tuple[int, float]) -> dict[str, Trace]:
    out = {}
    out[ES] = _fairray(tmp, _raw(tmp, f"es-s{seed}", "tpe", seed, trials, epochs, stopping))
    out[ES_MORE] = _fairray(tmp, _raw(tmp, f"es2n-s{seed}", "tpe", seed, 2 * trials, epochs, stopping))
    out[TPE] = _fairray(tmp, _raw(tmp, f"tpe-s{seed}", "tpe", seed, trials, epochs, None))
    out[LOOP] = _optuna_loop(tmp, _raw(tmp, f"loop-s{seed}", "tpe", seed, trials, epochs, None), trials)
    out[RANDOM] = _fairray(tmp, _raw(tmp, f"random-s{seed}", "random", seed, 2 * trials, epochs, None))
    out[TUNE] = _tune_optunasearch(tmp, _raw(tmp, f"tune-s{seed}", "tpe", seed, trials, epochs, None), trials)
    return out


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _paired(a: list[float], b: list[float]) -> str:
    """Per-seed differences a - b: mean ± sd and in how many seeds a >= b."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    return f"{_cell(d)} (a >= b in {sum(x >= 0 for x in d)} of {len(d)} seeds)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=16, help="N: trials per arm (random search gets 2N)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--grace", type=int, default=5, help="epochs before MOASHA's first rung")
    ap.add_argument("--reduction", type=float, default=3.0, help="MOASHA's reduction factor")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = ap.parse_args()
    import os

    import ray

    print(f"load average at start: {os.getloadavg()} on {os.cpu_count()} cores", flush=True)
    ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False)
    keys = ("hv", "hv@wall", "hv@half", "hv@budget", "wall", "trial-epochs", "trials")
    rows: dict[str, dict[str, list[float]]] = {a: {k: [] for k in keys} for a in ARMS}
    try:
        with tempfile.TemporaryDirectory() as d:
            for seed in args.seeds:
                traces = run_seed(Path(d), seed, args.trials, args.epochs, (args.grace, args.reduction))
                wall = min(t.wall_s for t in traces.values())
                budget = float(traces[TPE].epochs.sum())
                for arm, t in traces.items():
                    for key, value in (("hv", t.hypervolume()), ("hv@wall", t.hypervolume(wall_s=wall)),
                                       ("hv@half", t.hypervolume(epochs=budget / 2)),
                                       ("hv@budget", t.hypervolume(epochs=budget)), ("wall", t.wall_s),
                                       ("trial-epochs", float(t.epochs.sum())),
                                       ("trials", float(np.isfinite(t.values).all(axis=1).sum()))):
                        rows[arm][key].append(value)
                    print(f"seed {seed} {arm}: " + ", ".join(f"{k} {rows[arm][k][-1]:.4g}" for k in keys), flush=True)
                print(f"seed {seed}: load average {os.getloadavg()}", flush=True)
    finally:
        ray.shutdown()
    print(f"\ndev hypervolume (reference 0, 1), {args.trials} trials x {args.epochs} epochs (random and "
          f"'{ES_MORE}': {2 * args.trials} samples), MOASHA grace {args.grace} reduction {args.reduction:g}, "
          f"seeds {args.seeds}: mean ± sd; B = '{TPE}''s trial-epochs")
    heads = ["arm", "HV at the end", "HV @ equal wall", "HV @ B/2 trial-epochs", "HV @ B trial-epochs",
             "trial-epochs", "wall s", "full trials"]
    print("| " + " | ".join(heads) + " |")
    print("|" + "|".join("---" for _ in heads) + "|")
    for arm in ARMS:
        r = rows[arm]
        print("| " + " | ".join([arm, _cell(r["hv"]), _cell(r["hv@wall"]), _cell(r["hv@half"]), _cell(r["hv@budget"]),
                                 f"{statistics.mean(r['trial-epochs']):.0f}", f"{statistics.mean(r['wall']):.0f}",
                                 f"{statistics.mean(r['trials']):.1f}"]) + " |")
    full = statistics.mean(rows[TPE]["hv"])
    print()
    for arm in (ES, ES_MORE):
        reach = statistics.mean(rows[arm]["hv@half"])
        print(f"(A) {arm}: HV within B/2 trial-epochs {reach:.4f} = {reach / full:.3f} of {TPE}'s HV at the end; "
              f"paired a - b: {_paired(rows[arm]['hv@half'], rows[TPE]['hv'])}; at B: "
              f"{statistics.mean(rows[arm]['hv@budget']) / full:.3f}; at its end {statistics.mean(rows[arm]['hv']) / full:.3f}"
              f" with {statistics.mean(rows[arm]['trial-epochs']) / statistics.mean(rows[TPE]['trial-epochs']):.2f}"
              " of B (aim: >= 1.0 within B/2)")
    rnd = statistics.mean(rows[RANDOM]["hv"])
    print(f"(B) {TPE} at N: {full / rnd:.3f} of {RANDOM}'s HV; paired a - b: {_paired(rows[TPE]['hv'], rows[RANDOM]['hv'])}"
          " (aim: >= 1.0)")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
