"""``fairray sweep``: a Ray Tune run with an Optuna multi-objective searcher, one MLflow run per trial.

Flow: validate spec → prepare the dataset once (shared through the object store) → MLflow parent
run → ``Tuner`` whose trainable runs :func:`fairray.train.run_trial`, either directly in the Tune
trial (``backend: function``) or under a Ray Train ``TorchTrainer`` (``backend: train``) → close
the parent run (and any child run a killed process left RUNNING) → print the dev Pareto front.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fairray.config import LoadedSpec, SweepSpec, ablation_points, resolve_trial, to_plain
from fairray.data import SERData, prepare
from fairray.errors import ClusterError, ConfigError, FairrayError
from fairray.frontier.query import TAG_CONSTRAINTS, TAG_DUPLICATES, TAG_EARLY_STOPPING, TAG_REPEATS
from fairray.search import ConditionalSpace, is_conditional, make_sampler, to_distributions
from fairray.search.space import fixed_points_searcher
from fairray.tracking import (
    TAG_ABLATION,
    client,
    close_orphan_trials,
    default_tracking_uri,
    end_run,
    ensure_experiment,
    is_remote,
    local_path,
    shown_uri,
    start_sweep_run,
    start_writer,
    stop_writer,
    trial_runs,
)
from fairray.train import TrialTracking, TuneSession, run_trial, train_loop_per_worker

TAG_RAY_PATH = "fairray.ray_path"
TAG_OPTUNA_STUDY = "fairray.optuna_study"  # sqlite URL of the sweep's Optuna study (study name "fairray")


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
    #: Trials early stopping stopped (PRUNED in Optuna, KILLED and tagged in MLflow).
    n_pruned: int = 0
    #: Samples that repeated a finished or running configuration: told its result, not trained (None: unknown,
    #: a resumed sweep).
    n_duplicates: int | None = 0
    #: The searcher ran out of new configurations before num_samples (every further sample was a repeat).
    exhausted: bool = False


def storage_root(spec: SweepSpec) -> str:
    path = spec.storage.path
    return path if is_remote(path) else str(local_path(path))


def prepare_data(spec: SweepSpec) -> SERData:
    """The spec's dataset, features from the cache under ``dataset.cache`` or ``<storage>/features``."""
    return prepare(spec.dataset, cache_root=f"{storage_root(spec).rstrip('/')}/features")


def thin_dev_cells(data: SERData, s_min: int) -> str | None:
    """The one-line warning naming the dev split's stratum x attribute x class cells whose TPR is undefined
    (positives below ``s_min``, METHODS §2.3, §2.6.5), or None when there are none.

    The cells come from a :class:`~fairray.metrics.GroupReport` of the dev targets and the groups the training
    loop's reports read (supports do not depend on predictions), so they are exactly the cells every trial's dev
    gaps leave out.
    """
    from fairray.metrics import GroupReport, format_thin_cells, multi_hot

    if data.task == "regression":  # no class cells: a regression's gaps need only n >= s_min per group
        return None
    dev = data.indices("dev")
    groups = data.groups_frame("dev")
    if data.task == "multi":
        targets = multi_hot(data.soft[dev])
        report = GroupReport.compute_multilabel(targets, targets, data.classes, groups, data.attribute,
                                                data.stratum_name, s_min=s_min)
    else:
        report = GroupReport.compute(data.y[dev], data.y[dev], data.classes, groups, data.attribute,
                                     data.stratum_name, s_min=s_min)
    return format_thin_cells(report, "dev")


def warn_thin_dev_cells(datasets: Iterable[SERData], s_min: int) -> None:
    """Log :func:`thin_dev_cells` of each prepared dataset once (identical lines once) on the ``fairray`` logger."""
    seen = set()
    for data in datasets:
        text = thin_dev_cells(data, s_min)
        if text is not None and text not in seen:
            seen.add(text)
            logging.getLogger("fairray").warning(text)


def _is_dataset_path(path: str) -> bool:
    return path.startswith("dataset.")


_GROUP_FIELDS = ("group", "group_values", "group_prob", "group_info", "fingerprint")


class DataVariants:
    """The prepared datasets of one sweep: one per distinct ``dataset`` section that its ``dataset.*``
    parameters (a searched group source, K, fold ...) can produce, all prepared on the driver before the
    first trial; trials pick theirs by their parameters.

    Variants that differ only in ``dataset.groups`` share everything but their training groups, so the
    object store holds their features once: one full dataset per group-free section, plus each variant's
    group fields (``_GROUP_FIELDS``), patched in by :meth:`select`.
    """

    def __init__(self, paths: tuple[str, ...], aliases: Mapping[str, str],
                 items: Mapping[str, tuple[Any, dict[str, Any] | None]]) -> None:
        self.paths, self.aliases, self.items = paths, dict(aliases), dict(items)

    @staticmethod
    def key(assignment: Mapping[str, Any]) -> str:
        return json.dumps(sorted(assignment.items()), default=str)

    def select(self, params: Mapping[str, Any]) -> SERData:
        key = self.key({p: params[p] for p in self.paths if p in params})
        if key not in self.aliases:
            raise FairrayError(f"no prepared dataset for {key}; prepared: {list(self.aliases)}")
        base, groups = self.items[self.aliases[key]]
        if not isinstance(base, SERData):
            import ray

            base = ray.get(base)
        return dataclasses.replace(base, **groups) if groups else base

    def by_reference(self) -> DataVariants:
        """The same variants with every dataset in the object store (put here, once per sweep)."""
        import ray

        refs: dict[int, Any] = {}
        items = {}
        for key, (base, groups) in self.items.items():
            if isinstance(base, SERData):
                base = refs.setdefault(id(base), ray.put(base))
            items[key] = (base, groups)
        return DataVariants(self.paths, self.aliases, items)

    def reference(self, params: Mapping[str, Any]):
        """:meth:`select` as an object reference when the variant is a stored dataset as it is (no groups of its
        own to patch in), else the dataset itself."""
        key = self.key({p: params[p] for p in self.paths if p in params})
        base, groups = self.items.get(self.aliases.get(key), (None, None))
        if base is not None and not isinstance(base, SERData) and not groups:
            return base
        return self.select(params)

    def datasets(self) -> list[SERData]:
        """Each distinct prepared dataset once (variants that differ only in their groups share one)."""
        seen, out = set(), []
        for base, _ in self.items.values():
            if id(base) not in seen:
                seen.add(id(base))
                if not isinstance(base, SERData):
                    import ray

                    base = ray.get(base)
                out.append(base)
        return out

    @classmethod
    def _sections(cls, loaded: LoadedSpec, assignments: list[dict[str, Any]]):
        """``(paths, aliases, specs)``: the assignments' parameter paths, each assignment's canonical dataset
        section, and one resolved spec per distinct section (``{}`` and ``{groups.name: attribute}`` are the
        same data when the spec already says ``attribute``)."""
        spec = loaded.spec
        assignments = assignments or [{}]
        paths = tuple(sorted({p for a in assignments for p in a}))
        aliases, specs = {}, {}
        for a in assignments:
            variant = resolve_trial(loaded.raw, a, source=f"{loaded.source} (dataset {a})").spec if a else spec
            canonical = json.dumps(to_plain(variant.dataset), sort_keys=True, default=str)
            aliases[cls.key(a)] = canonical
            specs.setdefault(canonical, variant)
        return paths, aliases, specs

    @classmethod
    def needs_ray(cls, loaded: LoadedSpec, assignments: list[dict[str, Any]]) -> bool:
        """Whether :meth:`prepare` uses Ray: several variants go to the object store, and extraction with
        ``dataset.extract_workers > 1`` runs as Ray tasks when Ray is up. Otherwise it can run before Ray starts."""
        _, _, specs = cls._sections(loaded, assignments)
        return len(specs) > 1 or any(v.dataset.extract_workers > 1 for v in specs.values())

    @classmethod
    def prepare(cls, loaded: LoadedSpec, assignments: list[dict[str, Any]], verbose: bool = True) -> DataVariants:
        """Prepare each distinct resolved dataset section once (see :meth:`_sections`)."""
        paths, aliases, specs = cls._sections(loaded, assignments)
        if len(specs) == 1:
            return cls(paths, aliases, {k: (prepare_data(v), None) for k, v in specs.items()})
        import ray
        from tqdm import tqdm

        items, bases = {}, {}  # group-free section -> (object ref, the prepared data it holds)
        for canonical, variant in tqdm(specs.items(), desc="preparing datasets", unit="variant",
                                       disable=not verbose):
            data = prepare_data(variant)
            base_key = json.dumps({k: v for k, v in to_plain(variant.dataset).items() if k != "groups"},
                                  sort_keys=True, default=str)
            if base_key not in bases:
                bases[base_key] = (ray.put(data), data)
                items[canonical] = (bases[base_key][0], None)
                continue
            ref, base = bases[base_key]
            same = all(np.array_equal(getattr(data, f), getattr(base, f)) for f in ("X", "y", "split", "soft"))
            if not same:  # the group source changed the data itself: keep the whole variant
                items[canonical] = (ray.put(data), None)
                continue
            items[canonical] = (ref, {f: getattr(data, f) for f in _GROUP_FIELDS})
        return cls(paths, aliases, items)


def trial_points(loaded: LoadedSpec, ablation: str | None) -> list[dict[str, Any]] | None:
    """The fixed trial parameters of an ablation, or None for a search."""
    return ablation_points(loaded.spec, ablation) if ablation else None


def dataset_assignments(spec: SweepSpec, points: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Distinct ``dataset.*`` assignments the trials of this run can ask for."""
    if points is not None:
        out: list[dict[str, Any]] = []
        for point in points:
            projected = {k: v for k, v in point.items() if _is_dataset_path(k)}
            if projected not in out:
                out.append(projected)
        return out
    return ConditionalSpace(spec.search.space).assignments(_is_dataset_path)


def tracking_uri(spec: SweepSpec) -> str:
    return spec.tracking.uri or default_tracking_uri(storage_root(spec))


def _threads(spec: SweepSpec) -> int:
    return max(1, int(spec.resources.cpus_per_worker))


def tune_keys(spec: SweepSpec) -> frozenset[str]:
    """The metrics the sweep's driver reads from a trial's Tune results, whatever their kind: the objectives (the
    searcher, the progress table), early stopping's objectives (the scheduler) and the constrained metrics (the
    searcher, the feasibility marks)."""
    search = spec.search
    return frozenset([*(o.metric for o in search.objectives), *(o.metric for o in search.stopping_objectives),
                      *(c.metric for c in search.constraints)])


def for_tune(metrics: Mapping[str, Any], keep: frozenset[str]) -> dict[str, Any]:
    """What of a trial's report goes to Tune: ``keep``, every key that is not a per-group metric (epoch, final,
    losses, method state) and the headline metrics (overall utilities, gaps pooled and aggregated over strata),
    which are what each epoch reports; not the final evaluation's per-group and per-stratum breakdown.

    Tune keeps statistics of every key of every result in each trial's state and serialises that state into the
    experiment checkpoint again after each change (JSON, a cloudpickle per key): the ~300 breakdown keys of a final
    report cost the driver ~0.2 s of CPU per trial, which trials on the same cores wait for. They reach MLflow
    from the trial itself, where the frontier, dashboard and report read them.
    """
    from fairray.train.loop import headline

    out = {}
    for key, value in metrics.items():
        if key not in keep:
            try:
                if not headline({key: value}):
                    continue
            except ValueError:  # not a metric key: kept
                pass
        out[key] = value
    return out


class _TuneSession(TuneSession):
    """:class:`~fairray.train.TuneSession` reporting :func:`for_tune` of each result."""

    def __init__(self, keep: frozenset[str]) -> None:
        self.keep = keep

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        super().report(for_tune(metrics, self.keep), checkpoint_dir)


def _function_trainable(config: dict, raw: Mapping[str, Any], data: DataVariants, tracking: dict,
                        threads: int, keep: frozenset[str] = frozenset()) -> None:
    import torch
    from ray import tune

    torch.set_num_threads(threads)
    trial_id = tune.get_context().get_trial_id()
    run_trial(raw, config, data.select(config), _TuneSession(keep), TrialTracking(trial_id=trial_id, **tracking))


def _train_worker(config: dict) -> None:
    """Ray Train's entry point on each worker: :func:`fairray.train.train_loop_per_worker` with the dataset
    fetched from the object store when it came by reference."""
    import ray

    if isinstance(config["data"], ray.ObjectRef):
        config = {**config, "data": ray.get(config["data"])}
    train_loop_per_worker(config)


def _trainer_class():
    """Ray Train's ``TorchTrainer``, less its Ray Data set-up when the run has no Ray Datasets: Ray Train 2.60
    starts a ``DatasetManager`` actor (a process importing Ray Data) for every run, datasets or not. Ray Train's
    own worker group, placement group and its cleaner, and torch.distributed set-up are kept as they are."""
    from ray.train.torch import TorchTrainer

    try:
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    except ImportError:  # another Ray Train: keep its defaults
        return TorchTrainer

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return Trainer


_TRAIN_POLL_S = 0.05  # seconds between a Ray Train controller's polls of its workers (see _train_trainable)


def _train_trainable(config: dict, raw: Mapping[str, Any], data: DataVariants, tracking: dict, threads: int,
                     scaling: dict, storage: str, keep: frozenset[str] = frozenset()) -> None:
    """The Tune trial builds and fits a TorchTrainer; a fixed name per trial resumes its checkpoints.
    (``resources.reuse_workers``: :func:`fairray.sweep._group_trial.group_trainable` instead.)"""
    import ray.train
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    # Ray Train's controller takes a worker's report off its one-slot queue only when it polls the workers, every
    # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default), and the worker waits until then: 2 s per epoch. The
    # controller reads the setting from this process's environment (propagated to the actors it starts).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(_TRAIN_POLL_S))
    trial_id = tune.get_context().get_trial_id()
    trainer = _trainer_class()(
        _train_worker,  # the dataset goes by reference: put once per sweep, not once per trial with its config
        train_loop_config={"raw": raw, "params": dict(config), "data": data.reference(config), "threads": threads,
                           "tracking": TrialTracking(trial_id=trial_id, **tracking), "keep": keep},
        scaling_config=ray.train.ScalingConfig(**scaling),
        run_config=ray.train.RunConfig(name=f"train-{trial_id}", storage_path=storage,
                                       callbacks=[TuneReportCallback()]),
    )
    trainer.fit()


def _reporter(spec: SweepSpec, parameters: list[str]):
    from ray import tune

    metric_columns = {o.metric: o.metric.split("/", 1)[1] for o in spec.search.objectives}
    metric_columns["training_iteration"] = "iter"
    return tune.CLIReporter(metric_columns=metric_columns, parameter_columns=parameters,
                            max_report_frequency=15, sort_by_metric=False)


def _init_ray(address: str | None) -> bool:
    """Start or join Ray; True when this call connected (and must disconnect again)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        _join(address)
    elif os.environ.get("RAY_ADDRESS"):  # Ray's own setting (a Ray job's driver has it): join that cluster
        ray.init(configure_logging=False, log_to_driver=False)
    else:
        import psutil

        from fairray.sweep import _reaper

        # A cluster of this sweep alone ("local": never one that some `ray start` left on this machine), whose
        # processes all die with this driver, even of a SIGKILL (fairray/sweep/_reaper.py).
        before = {c.pid for c in psutil.Process().children()}
        # Trial output stays in the trial logs; Tune's table and error summaries reach the console.
        ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False)
        global _REAPER
        _REAPER = _reaper.start(os.getpid(), [c.pid for c in psutil.Process().children() if c.pid not in before])
    return True


#: connection attempts to a Ray Client server (``ray://``) whose per-client server failed to start
CLIENT_ATTEMPTS = 3


def _join(address: str) -> None:
    """``ray.init`` on the cluster at ``address``. Through Ray Client the head starts one server process per
    connection, and that start can fail on a busy head (the client gets ``ConnectionAbortedError``: "Starting Ray
    client server failed"); it is tried again up to :data:`CLIENT_ATTEMPTS` times. A cluster that cannot be joined
    is a :class:`ClusterError` (one line, exit 1) naming the address and where to look."""
    import ray

    _reachable(address)
    attempts = CLIENT_ATTEMPTS if address.startswith("ray://") else 1
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, log_to_driver=True)
            return
        except ConnectionError as exc:  # ConnectionAbortedError is one: the client server failed to start
            if ray.is_initialized():
                ray.shutdown()
            reason = " ".join(str(exc).split())
            if attempt < attempts and isinstance(exc, ConnectionAbortedError):
                logging.getLogger("fairray").warning("Ray Client at %s: %s; connecting again (attempt %d of %d)",
                                                     address, reason[-300:], attempt + 1, attempts)
                time.sleep(2.0 * attempt)
                continue
            where = " and the head's logs (ray_client_server_*.err)" if address.startswith("ray://") else ""
            raise ClusterError(f"could not join the Ray cluster at {address} after {attempt} attempt(s): "
                               f"{reason[-300:]}; check that the cluster is up (`ray status`){where}") from exc


def _reachable(address: str, timeout_s: float = 10.0) -> None:
    """A ClusterError at once when nothing accepts a connection at ``address``'s ``host:port`` (``ray.init`` on
    a GCS address where nothing listens retries for minutes without saying so); ``auto`` and addresses without a
    port are left to Ray."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(f"could not join the Ray cluster at {address}: nothing answers at {host}:{port} "
                           f"({exc.strerror or exc}); check the address and that the cluster is up (`ray status` "
                           "on the head)") from exc


_REAPER = None  # the watchdog of the local cluster this process started last (kept so that it is reaped)


def _init_ray_while(address: str | None, work, first):
    """``first()``, then :func:`_init_ray`, on this thread while ``work()`` runs on another;
    ``(connected, first(), work())``.

    Whichever fails, nothing is left behind: Ray is not started if ``first`` raised, and shut down again if
    ``work`` raised; what ``work`` returned is discarded (its ``discard()``) if ``first`` or Ray's start raised
    (neither writes anything else that would need undoing: ``work`` reads the store or stages a new one aside,
    ``first`` prepares the data).
    """
    from concurrent.futures import ThreadPoolExecutor

    import ray

    with ThreadPoolExecutor(1, thread_name_prefix="fairray-mlflow") as pool:
        future = pool.submit(work)
        try:
            before = first()
            connected = _init_ray(address)
        except BaseException:
            with contextlib.suppress(BaseException):
                if (made := future.result()) is not None and hasattr(made, "discard"):
                    made.discard()
            raise
        try:
            return connected, before, future.result()
        except BaseException:
            if connected:
                ray.shutdown()
            raise


def _warm_store(uri: str):
    """The MLflow store's set-up that writes nothing at the store's path: its imports and, for an existing store,
    the client and its schema check. A SQLite file that does not exist yet gets its schema (every MLflow migration:
    seconds of CPU, on the sweep's critical path before) in a temporary file, returned as a
    :class:`~fairray.tracking._mlflow.StagedStore` that the caller places once the data was read (so bad data
    leaves no empty store behind) or discards; None otherwise."""
    from fairray.tracking._mlflow import stage_sqlite_store

    staged = stage_sqlite_store(uri)
    if staged is None:
        client(uri)
    return staged


def _find_resumable(uri: str, experiment_id: str, sweep: str, ablation: str | None):
    runs = client(uri).search_runs([experiment_id], filter_string=f"tags.`fairray.kind` = 'sweep' and "
                                   f"tags.`fairray.sweep` = '{sweep}'",
                                   order_by=["attributes.start_time DESC"], max_results=1000)
    runs = [r for r in runs if r.data.tags.get(TAG_ABLATION) == ablation]
    return runs[0] if runs else None


def _count_finished(uri: str, experiment_id: str, parent_run_id: str) -> int:
    parent = client(uri).get_run(parent_run_id)
    return sum(r.info.status == "FINISHED" for r in trial_runs(uri, parent))


def _never_pruned(trial_id: str) -> None:
    return None


def _tag_search_settings(uri: str, run_id: str, spec: SweepSpec, ablation: str | None) -> None:
    """The sweep run records its constraints and early stopping (the frontier reads the constraints back)."""
    c = client(uri)
    if spec.budget.repeats > 1 and ablation is None:  # an ablation's seeds are its own points (fairray report)
        c.set_tag(run_id, TAG_REPEATS, str(spec.budget.repeats))
    if spec.search.constraints:
        c.set_tag(run_id, TAG_CONSTRAINTS, json.dumps([str(x) for x in spec.search.constraints]))
    stopping = spec.search.early_stopping
    if stopping is not None and ablation is None:  # an ablation trains every cell fully
        c.set_tag(run_id, TAG_EARLY_STOPPING, json.dumps(
            {"type": stopping.type, "grace": stopping.grace, "reduction": stopping.reduction,
             "objectives": [[o.metric, o.direction.value] for o in spec.search.stopping_objectives]}))


def _restored_parts(tuner):
    """The scheduler and searcher a restored Tuner runs with (Ray keeps them in its pickled state), or Nones."""
    from fairray.sweep.scheduler import MOASHA
    from fairray.sweep.searcher import FairraySearcher

    config = getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None)
    scheduler = getattr(config, "scheduler", None)
    searcher = getattr(getattr(config, "search_alg", None), "searcher", None)
    return (scheduler if isinstance(scheduler, MOASHA) else None,
            searcher if isinstance(searcher, FairraySearcher) else None)


def require_local_gpus(spec: SweepSpec, source: str) -> None:
    """A spec that gives workers GPUs, run on this machine, needs a CUDA device here (checked before anything
    is started or logged). Clusters are not checked: an autoscaler may add GPU nodes on demand."""
    gpus = spec.resources.gpus_per_worker
    if gpus <= 0:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"{source}: resources.gpus_per_worker: {gpus:g} asks for a GPU per worker, but this machine "
                          "has no CUDA device (torch.cuda.is_available() is False); set resources.gpus_per_worker: 0 "
                          "or run on a GPU machine (fairray sweep --address for a cluster)")


def run_sweep(loaded: LoadedSpec, *, address: str | None = None, resume: bool = False, verbose: int = 1,
              ablation: str | None = None) -> SweepOutcome:
    """Run (or resume) the sweep of ``loaded`` — or its declared ablation grid ``ablation`` — every
    trial one MLflow child run."""
    spec, raw = loaded.spec, dict(loaded.raw)
    if not spec.search.objectives:
        raise ConfigError(f"{loaded.source}: search.objectives: a sweep needs at least one objective, e.g. "
                          "[{metric: dev/weighted_f1, direction: max}]")
    if not spec.search.space and ablation is None:
        raise ConfigError(f"{loaded.source}: search.space: a sweep needs at least one dimension to search")
    if address is None:
        require_local_gpus(spec, loaded.source)
    points = trial_points(loaded, ablation)
    # num_samples counts configurations; each is trained budget.repeats times (one seed each)
    n_trials = len(points) if points is not None else spec.budget.num_samples * spec.budget.repeats
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic table shows our objective columns
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # JSON + CSV below, no TensorBoard
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.search import ConcurrencyLimiter

    from fairray.sweep.marks import TrialMarks, close_pruned_runs
    from fairray.sweep.metrics import TrialStateMetrics
    from fairray.sweep.scheduler import from_spec as moasha_from_spec
    from fairray.sweep.searcher import FairraySearcher

    root = storage_root(spec)
    ray_root = f"{root.rstrip('/')}/ray"
    uri = tracking_uri(spec)
    objectives = [(o.metric, o.direction.value) for o in spec.search.objectives]

    what = f"ablation {ablation!r} of sweep {spec.name!r}" if ablation else f"sweep {spec.name!r}"

    def find_previous():
        """The earlier sweep run that ``--resume`` continues (a read; a SQLite store that does not exist has none)."""
        from fairray.tracking._mlflow import _sqlite_file

        missing = (db := _sqlite_file(uri)) is not None and not db.exists()
        experiment = None if missing else client(uri).get_experiment_by_name(spec.experiment)
        previous = _find_resumable(uri, experiment.experiment_id, spec.name, ablation) if experiment else None
        if previous is None:
            raise FairrayError(f"--resume: no earlier {what} in MLflow experiment {spec.experiment!r} "
                               f"at {shown_uri(uri)}; run without --resume to start one")
        return previous

    def open_sweep_run(previous):
        experiment_id = ensure_experiment(uri, spec.experiment, root)
        run_name = previous.data.tags[TAG_RAY_PATH].rsplit("/", 1)[1] if previous else \
            f"{spec.name}{'-' + ablation if ablation else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
        sweep = start_sweep_run(uri, experiment_id, spec.name, root, raw, objectives,
                                resume_run_id=previous.info.run_id if previous else None, ablation=ablation)
        client(uri).set_tag(sweep.run_id, TAG_RAY_PATH, f"{ray_root}/{run_name}")
        _tag_search_settings(uri, sweep.run_id, spec, ablation)
        return experiment_id, run_name, sweep

    def prepare_variants():
        # once per sweep, before any trial: feature extraction (as Ray tasks with dataset.extract_workers > 1)
        # or the cache; trials get the result through the object store
        prepared = DataVariants.prepare(loaded, assignments, verbose=bool(verbose))
        warn_thin_dev_cells(prepared.datasets(), spec.train.s_min)
        return prepared

    # Nothing is written before the data is read: a corpus that lacks a modality, a column or a file stops the
    # sweep with its one line before any experiment or run exists, and (when its preparation needs no Ray) before
    # Ray starts. The MLflow store's set-up (imports, schema: ~40 % of a small sweep's fixed cost) runs meanwhile.
    t0 = time.time()
    assignments = dataset_assignments(spec, points)
    early = not DataVariants.needs_ray(loaded, assignments)
    previous = find_previous() if resume else None  # a missing earlier sweep is reported before Ray starts
    connected, data, staged = _init_ray_while(address, lambda: _warm_store(uri),
                                              lambda: prepare_variants() if early else None)
    # the trials' MLflow writer (fairray/tracking/_writer.py): its imports run while the sweep is set up and the
    # trial processes start, which then never import MLflow themselves
    writer = None
    try:
        writer = start_writer(uri) if spec.tracking.writer else None
        if data is None:
            data = prepare_variants()
        if staged is not None:  # the data was read: the store created meanwhile goes in place
            staged.place()
        experiment_id, run_name, sweep = open_sweep_run(previous)
        if writer is not None:  # opens the store the sweep's run now exists in; the trials' first calls queue after it
            writer.ready.remote()
    except BaseException:
        if staged is not None:
            staged.discard()
        stop_writer(writer, timeout_s=0)
        if connected:
            ray.shutdown()
        raise
    ray_path = f"{ray_root}/{run_name}"
    tracking = {"uri": uri, "experiment_id": experiment_id, "parent_run_id": sweep.run_id, "sweep": spec.name,
                "writer": writer}

    status, reason = "FAILED", None
    scheduler, searcher_impl = None, None
    try:
        backend = spec.resources.resolved_backend
        threads = _threads(spec)
        if backend == "function":
            trainable = tune.with_parameters(_function_trainable, raw=raw, data=data, tracking=tracking,
                                             threads=threads, keep=tune_keys(spec))
            resources = {"cpu": spec.resources.cpus_per_worker, "gpu": spec.resources.gpus_per_worker}
        else:
            data = data.by_reference()
            scaling = {"num_workers": spec.resources.num_workers, "use_gpu": spec.resources.gpus_per_worker > 0,
                       "resources_per_worker": {"CPU": spec.resources.cpus_per_worker,
                                                **({"GPU": spec.resources.gpus_per_worker}
                                                   if spec.resources.gpus_per_worker else {})}}
            from fairray.train._group import TRIAL_PROCESS, GroupShape

            group = None
            if spec.resources.reuse_workers:  # the trial process keeps its workers, in its own placement group
                group = GroupShape(spec.resources.num_workers, spec.resources.cpus_per_worker,
                                   spec.resources.gpus_per_worker, threads)
            if group is None:
                trainable = tune.with_parameters(_train_trainable, raw=raw, data=data, tracking=tracking,
                                                 threads=threads, scaling=scaling, storage=ray_root,
                                                 keep=tune_keys(spec))
            else:  # a light trainable: its trial process imports neither torch nor this module (_group_trial.py)
                from fairray.sweep._group_trial import GroupTrialArgs, group_trainable

                trainable = tune.with_parameters(group_trainable, args=GroupTrialArgs(
                    raw, ray.put(data), dict(tracking), tune_keys(spec), group))
            resources = ({"cpu": TRIAL_PROCESS["CPU"], "memory": TRIAL_PROCESS["memory"]} if group is None
                         else tune.PlacementGroupFactory(group.bundles))
        trainable = tune.with_resources(trainable, resources)

        if resume and tune.Tuner.can_restore(ray_path):
            tuner = tune.Tuner.restore(ray_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
            scheduler, searcher_impl = _restored_parts(tuner)
        else:
            if resume:
                raise FairrayError(f"--resume: Ray results at {ray_path} cannot be restored; run without --resume")
            if points is not None:  # a declared grid: each point once, no sampler
                searcher = ConcurrencyLimiter(fixed_points_searcher(points), spec.budget.max_concurrent)
                parameters = sorted({k for p in points for k in p})
            else:
                conditional = is_conditional(spec.search.space)
                space = ConditionalSpace(spec.search.space) if conditional else to_distributions(spec.search.space)
                scheduler = moasha_from_spec(spec)
                searcher_impl = FairraySearcher(
                    space, spec.search.space, objectives,
                    make_sampler(spec.search.sampler, spec.budget.seed, len(objectives), conditional),
                    spec.search.constraints, pruned=scheduler.record if scheduler is not None else None,
                    repeats=spec.budget.repeats, seed=spec.train.seed)
                searcher = ConcurrencyLimiter(searcher_impl, spec.budget.max_concurrent)
                parameters = list(spec.search.space)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=searcher,
                                            scheduler=scheduler,
                                            num_samples=n_trials,
                                            trial_name_creator=lambda t: f"{spec.name}_{t.trial_id}",
                                            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
                                            # one process runs many trials (run_trial reseeds everything):
                                            # 2.2x faster sweeps of small trials (benchmarks/overhead.py)
                                            reuse_actors=True),
                run_config=tune.RunConfig(
                    name=run_name, storage_path=ray_root, verbose=verbose,
                    failure_config=tune.FailureConfig(max_failures=spec.budget.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    progress_reporter=_reporter(spec, parameters) if verbose else None,
                    callbacks=[JsonLoggerCallback(), CSVLoggerCallback(),
                               TrialStateMetrics(spec.name),  # trial counts for dashboards/grafana
                               TrialMarks(uri, experiment_id, sweep.run_id, spec.search.constraints,
                                          scheduler.record if scheduler is not None else _never_pruned)],
                ),
            )
        results = tuner.fit()
        stop_writer(writer)  # every trial call it received is stored before MLflow is read back
        # Tune stops gracefully on Ctrl-C and returns; MLflow tells what really finished.
        n_pruned = close_pruned_runs(uri, experiment_id, sweep.run_id, scheduler.pruned if scheduler else {})
        n_errored = len(results.errors)
        n_finished = _count_finished(uri, experiment_id, sweep.run_id)
        exhausted = bool(searcher_impl is not None and searcher_impl.exhausted)
        n_duplicates = searcher_impl.n_duplicates if searcher_impl is not None else None
        if n_duplicates is not None:
            client(uri).set_tag(sweep.run_id, TAG_DUPLICATES, str(n_duplicates))
        if searcher_impl is not None and not is_remote(root):  # the Optuna study, for optuna.load_study
            study = searcher_impl.export(local_path(root) / "optuna" / f"{run_name}.db")
            client(uri).set_tag(sweep.run_id, TAG_OPTUNA_STUDY, study)
        # a space that ran out of new configurations ends with fewer trials than num_samples
        interrupted = n_finished + n_pruned + n_errored < (len(results) if exhausted else n_trials)
        status = "KILLED" if interrupted else "FINISHED"
        if interrupted:
            reason = (f"interrupted after {n_finished} of {n_trials} trials; "
                      "continue with `fairray sweep SPEC --resume`")
        return SweepOutcome(spec.experiment, uri, sweep.run_id, ray_path, len(results), n_finished, n_errored,
                            time.time() - t0, interrupted, n_pruned, n_duplicates, exhausted)
    except KeyboardInterrupt:
        status, reason = "KILLED", "interrupted; continue with `fairray sweep SPEC --resume`"
        raise
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        from fairray.tracking import storage_failure

        if (unreachable := storage_failure(exc, root)) is not None:  # one line naming the store, not a traceback
            reason = str(unreachable)
            raise unreachable from exc
        raise
    finally:
        try:  # a no-op when stopped above; else (an error, Ctrl-C) it drains before the closing below
            stop_writer(writer)
        finally:  # a second Ctrl-C during the drain still closes the runs
            if scheduler is not None:  # pruned runs end KILLED with their reason, never as orphans
                close_pruned_runs(uri, experiment_id, sweep.run_id, scheduler.pruned)
            close_orphan_trials(uri, experiment_id, sweep.run_id, status="KILLED" if status == "KILLED" else "FAILED")
            end_run(uri, sweep.run_id, status, reason)
            if connected:  # leaves a cluster joined with --address running; only this driver disconnects
                ray.shutdown()

