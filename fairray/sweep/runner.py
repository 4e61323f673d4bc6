"""``fairray sweep``: a Ray Tune run with an Optuna multi-objective searcher, one MLflow run per trial.

Flow: validate spec → prepare the dataset once (shared through the object store) → MLflow parent
run → ``Tuner`` whose trainable runs :func:`fairray.train.run_trial`, either directly in the Tune
trial (``backend: function``) or under a Ray Train ``TorchTrainer`` (``backend: train``) → close
the parent run (and any child run a killed process left RUNNING) → print the dev Pareto front.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fairray.config import LoadedSpec, SweepSpec
from fairray.data import SERData, prepare
from fairray.errors import ConfigError, FairrayError
from fairray.search import make_sampler, to_distributions
from fairray.tracking import (
    client,
    close_orphan_trials,
    default_tracking_uri,
    end_run,
    ensure_experiment,
    is_remote,
    local_path,
    start_sweep_run,
    trial_runs,
)
from fairray.train import TrialTracking, TuneSession, run_trial, train_loop_per_worker

TAG_RAY_PATH = "fairray.ray_path"


@dataclass(frozen=True)
class SweepOutcome:
    experiment: str
    tracking_uri: str
    sweep_run_id: str
    ray_path: str
    n_trials: int
    n_finished: int
    n_errored: int
    wall_s: float
    interrupted: bool


def storage_root(spec: SweepSpec) -> str:
    path = spec.storage.path
    return path if is_remote(path) else str(local_path(path))


def prepare_data(spec: SweepSpec) -> SERData:
    """The spec's dataset, features from the cache under ``dataset.cache`` or ``<storage>/features``."""
    return prepare(spec.dataset, cache_root=f"{storage_root(spec).rstrip('/')}/features")


def tracking_uri(spec: SweepSpec) -> str:
    return spec.tracking.uri or default_tracking_uri(storage_root(spec))


def _threads(spec: SweepSpec) -> int:
    return max(1, int(spec.resources.cpus_per_worker))


def _function_trainable(config: dict, raw: Mapping[str, Any], data: SERData, tracking: dict, threads: int) -> None:
    import torch
    from ray import tune

    torch.set_num_threads(threads)
    trial_id = tune.get_context().get_trial_id()
    run_trial(raw, config, data, TuneSession(), TrialTracking(trial_id=trial_id, **tracking))


def _train_trainable(config: dict, raw: Mapping[str, Any], data: SERData, tracking: dict, threads: int,
                     scaling: dict, storage: str) -> None:
    """The Tune trial builds and fits a TorchTrainer; a fixed name per trial resumes its checkpoints."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"raw": raw, "params": dict(config), "data": data, "threads": threads,
                           "tracking": TrialTracking(trial_id=trial_id, **tracking)},
        scaling_config=ray.train.ScalingConfig(**scaling),
        run_config=ray.train.RunConfig(name=f"train-{trial_id}", storage_path=storage,
                                       callbacks=[TuneReportCallback()]),
    )
    trainer.fit()


def _reporter(spec: SweepSpec):
    from ray import tune

    metric_columns = {o.metric: o.metric.split("/", 1)[1] for o in spec.search.objectives}
    metric_columns["training_iteration"] = "iter"
    return tune.CLIReporter(metric_columns=metric_columns, parameter_columns=list(spec.search.space),
                            max_report_frequency=15, sort_by_metric=False)


def _init_ray(address: str | None) -> bool:
    """Start or join Ray; True when this call connected (and must disconnect again)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # Trial output stays in the trial logs; Tune's table and error summaries reach the console.
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    return True


def _find_resumable(uri: str, experiment_id: str, sweep: str):
    runs = client(uri).search_runs([experiment_id], filter_string=f"tags.`fairray.kind` = 'sweep' and "
                                   f"tags.`fairray.sweep` = '{sweep}'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _count_finished(uri: str, experiment_id: str, parent_run_id: str) -> int:
    parent = client(uri).get_run(parent_run_id)
    return sum(r.info.status == "FINISHED" for r in trial_runs(uri, parent))


def run_sweep(loaded: LoadedSpec, *, address: str | None = None, resume: bool = False, verbose: int = 1
              ) -> SweepOutcome:
    """Run (or resume) the sweep of ``loaded``; every trial is one MLflow child run."""
    spec, raw = loaded.spec, dict(loaded.raw)
    if not spec.search.objectives:
        raise ConfigError(f"{loaded.source}: search.objectives: a sweep needs at least one objective, e.g. "
                          "[{metric: dev/weighted_f1, direction: max}]")
    if not spec.search.space:
        raise ConfigError(f"{loaded.source}: search.space: a sweep needs at least one dimension to search")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic table shows our objective columns
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # JSON + CSV below, no TensorBoard
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    root = storage_root(spec)
    ray_root = f"{root.rstrip('/')}/ray"
    uri = tracking_uri(spec)
    experiment_id = ensure_experiment(uri, spec.experiment, root)
    previous = _find_resumable(uri, experiment_id, spec.name) if resume else None
    if resume and previous is None:
        raise FairrayError(f"--resume: no earlier sweep {spec.name!r} in MLflow experiment {spec.experiment!r} "
                           f"at {uri}; run without --resume to start one")
    run_name = previous.data.tags[TAG_RAY_PATH].rsplit("/", 1)[1] if previous else \
        f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    ray_path = f"{ray_root}/{run_name}"
    objectives = [(o.metric, o.direction.value) for o in spec.search.objectives]
    sweep = start_sweep_run(uri, experiment_id, spec.name, root, raw, objectives,
                            resume_run_id=previous.info.run_id if previous else None)
    client(uri).set_tag(sweep.run_id, TAG_RAY_PATH, ray_path)
    tracking = {"uri": uri, "experiment_id": experiment_id, "parent_run_id": sweep.run_id, "sweep": spec.name}

    t0 = time.time()
    status, reason, connected = "FAILED", None, False
    try:
        connected = _init_ray(address)
        # once per sweep, before any trial: feature extraction (as Ray tasks with dataset.extract_workers > 1)
        # or the cache; trials get the result through the object store
        data = prepare_data(spec)
        backend = spec.resources.resolved_backend
        threads = _threads(spec)
        if backend == "function":
            trainable = tune.with_parameters(_function_trainable, raw=raw, data=data, tracking=tracking,
                                             threads=threads)
            resources = {"cpu": spec.resources.cpus_per_worker, "gpu": spec.resources.gpus_per_worker}
        else:
            scaling = {"num_workers": spec.resources.num_workers, "use_gpu": spec.resources.gpus_per_worker > 0,
                       "resources_per_worker": {"CPU": spec.resources.cpus_per_worker,
                                                **({"GPU": spec.resources.gpus_per_worker}
                                                   if spec.resources.gpus_per_worker else {})}}
            trainable = tune.with_parameters(_train_trainable, raw=raw, data=data, tracking=tracking,
                                             threads=threads, scaling=scaling, storage=ray_root)
            # The trial's own driver holds no CPU, else two trials on two CPUs starve their workers.
            resources = {"cpu": 0, "memory": 256 * 1024**2}
        trainable = tune.with_resources(trainable, resources)

        if resume and tune.Tuner.can_restore(ray_path):
            tuner = tune.Tuner.restore(ray_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            if resume:
                raise FairrayError(f"--resume: Ray results at {ray_path} cannot be restored; run without --resume")
            searcher = OptunaSearch(space=to_distributions(spec.search.space),
                                    metric=[m for m, _ in objectives], mode=[d for _, d in objectives],
                                    sampler=make_sampler(spec.search.sampler, spec.budget.seed, len(objectives)))
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, spec.budget.max_concurrent),
                                            num_samples=spec.budget.num_samples,
                                            trial_name_creator=lambda t: f"{spec.name}_{t.trial_id}",
                                            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
                                            # one process runs many trials (run_trial reseeds everything):
                                            # 2.2x faster sweeps of small trials (benchmarks/overhead.py)
                                            reuse_actors=True),
                run_config=tune.RunConfig(
                    name=run_name, storage_path=ray_root, verbose=verbose,
                    failure_config=tune.FailureConfig(max_failures=spec.budget.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    progress_reporter=_reporter(spec) if verbose else None,
                    callbacks=[JsonLoggerCallback(), CSVLoggerCallback()],
                ),
            )
        results = tuner.fit()
        # Tune stops gracefully on Ctrl-C and returns; MLflow tells what really finished.
        n_errored = len(results.errors)
        n_finished = _count_finished(uri, experiment_id, sweep.run_id)
        interrupted = n_finished + n_errored < spec.budget.num_samples
        status = "KILLED" if interrupted else "FINISHED"
        if interrupted:
            reason = (f"interrupted after {n_finished} of {spec.budget.num_samples} trials; "
                      "continue with `fairray sweep SPEC --resume`")
        return SweepOutcome(spec.experiment, uri, sweep.run_id, ray_path, len(results), n_finished, n_errored,
                            time.time() - t0, interrupted)
    except KeyboardInterrupt:
        status, reason = "KILLED", "interrupted; continue with `fairray sweep SPEC --resume`"
        raise
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        close_orphan_trials(uri, experiment_id, sweep.run_id, status="KILLED" if status == "KILLED" else "FAILED")
        end_run(uri, sweep.run_id, status, reason)
        if connected:  # leaves a cluster joined with --address running; only this driver disconnects
            ray.shutdown()

