"""Pareto fronts of a sweep, read from MLflow (not from Ray's local files).

A front is computed on the sweep's objectives (dev metrics) or on the same objectives restricted to
one language and/or one subgroup (``--by``). Restricting follows :func:`fairray.metrics.restrict`:
a utility becomes the subset's utility, a gap becomes the gap inside the stratum, and a gap
"restricted" to one gender stays the enclosing gap (a gap is between groups).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from fairray.config import Constraint, DatasetConfig
from fairray.errors import ConfigError, TrackingError
from fairray.frontier.pareto import (
    Direction,
    best_at_gap,
    default_reference,
    hypervolume,
    igd_plus,
    non_dominated_mask,
    utility_at_gap,
    utopia_distance,
)
from fairray.metrics import MetricKey, restrict
from fairray.tracking import TAG_OBJECTIVES, TAG_TRIAL, find_sweep_run, trial_runs

TAG_PRUNED = "fairray.pruned"  # "true" on a trial early stopping stopped (its run ends KILLED)
TAG_PRUNED_RUNG = "fairray.pruned_rung"  # the rung (epochs trained) where it was stopped
TAG_PRUNED_VALUES = "fairray.pruned_values"  # JSON: its objective values there, as Optuna was told
TAG_FEASIBLE = "fairray.feasible"  # "true" / "false" under the sweep's constraints
TAG_VIOLATIONS = "fairray.violations"  # JSON {constraint: violation > 0} of an infeasible trial
TAG_CONSTRAINTS = "fairray.constraints"  # on the sweep run: JSON list of the constraint texts
TAG_EARLY_STOPPING = "fairray.early_stopping"  # on the sweep run: JSON of the scheduler's settings
TAG_DUPLICATES = "fairray.duplicates"  # on the sweep run: samples that repeated a configuration (not trained)
TAG_REPEATS = "fairray.repeats"  # on the sweep run: budget.repeats (seeds per configuration) when above 1


@dataclass(frozen=True)
class TrialRecord:
    """One finished (or, when asked for, pruned) trial as MLflow holds it."""

    run_id: str
    trial_id: str
    params: dict[str, str]
    metrics: dict[str, float]
    #: The rung (epochs trained) where early stopping stopped it; None for a trial that trained fully. A pruned
    #: trial's objectives are its values at that rung (what Optuna was told).
    pruned_rung: int | None = None
    #: {constraint: violation > 0} under the sweep's constraints; empty when feasible.
    violations: dict[str, float] = field(default_factory=dict)
    #: With ``budget.repeats``: the trial ids of the configuration's seeds (``metrics`` is their mean) and the
    #: (min, max) over them of every metric they all logged.
    seeds: tuple[str, ...] = ()
    spread: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return not self.violations


@dataclass(frozen=True)
class Sweep:
    experiment: str
    run_id: str
    objectives: tuple[tuple[str, Direction], ...]
    trials: tuple[TrialRecord, ...]
    n_failed: int
    tracking_uri: str
    attribute: str
    #: The sweep's own spec as flat MLflow params (``method.name``, ``dataset.groups.name`` ...): the values
    #: a trial did not sample.
    base_params: dict[str, str] = field(default_factory=dict)
    #: The sweep's ``search.constraints``: a front holds feasible trials only.
    constraints: tuple[Constraint, ...] = ()
    #: Trials early stopping stopped (in ``trials`` only when loaded with ``include_pruned``).
    n_pruned: int = 0


DTO_BOUNDS = (0.0, 1.0)
"""The box DTO and the gap budget are measured in (METHODS §2.7: utilities and gaps are fractions in [0, 1])."""


@dataclass(frozen=True)
class Front:
    """One panel: trials x objectives, which are non-dominated, the hypervolume and each trial's DTO.

    ``dto`` is :func:`~fairray.frontier.pareto.utopia_distance` of each trial's objectives (NaN for an invalid
    trial), or None when some objective value lies outside :data:`DTO_BOUNDS` (no utopia point to measure from).
    """

    title: str
    objectives: tuple[str, ...]
    directions: tuple[Direction, ...]
    trials: tuple[TrialRecord, ...]
    values: np.ndarray
    on_front: np.ndarray
    hypervolume: float
    reference: tuple[float, ...]
    restriction: dict[str, str] = field(default_factory=dict)
    dto: np.ndarray | None = None
    #: Which trials meet the sweep's constraints: only they can be on the front or add to its hypervolume.
    feasible: np.ndarray | None = None

    def quality(self, reference_front: np.ndarray | None = None) -> FrontQuality:
        """Hypervolume, the best DTO on the front and, given a reference front, IGD+ of this front against it."""
        points = self.points()
        igd = None
        if reference_front is not None and len(reference_front):
            igd = igd_plus(points, self.directions, reference_front)
        best = None
        if self.dto is not None and self.on_front.any():
            best = float(np.nanmin(self.dto[self.on_front]))
        return FrontQuality(self.hypervolume, igd, best, int(self.on_front.sum()), len(self.trials))

    def points(self) -> np.ndarray:
        """The objective values of the non-dominated trials, ``[n_front, n_objectives]``."""
        return self.values[self.on_front].reshape(-1, len(self.objectives))


@dataclass(frozen=True)
class FrontQuality:
    """How good one front is: hypervolume (reference point of the front), IGD+ against a reference front (None
    without one), the smallest distance to the utopia point among its trials (None when undefined)."""

    hypervolume: float
    igd_plus: float | None
    best_dto: float | None
    n_front: int
    n_trials: int


@dataclass(frozen=True)
class GapBudget:
    """A front under a gap budget: ``util_at_tau`` of each trial and the best trial with ``gap <= tau``."""

    tau: float
    utility: str
    gap: str
    values: np.ndarray
    best: int | None


def gap_budget(front: Front, tau: float) -> GapBudget:
    """``util_at_tau`` (METHODS §2.7) of every trial of ``front``, which must have one utility and one gap objective.

    ``values[i]`` is trial ``i``'s utility when its gap is at most ``tau``, else -1 (NaN for an invalid trial);
    ``best`` indexes the trial with the highest utility under the budget (Pareto-optimal), None if none meets it.
    """
    kinds = [MetricKey.parse(k).is_gap for k in front.objectives]
    if len(kinds) != 2 or sorted(kinds) != [False, True]:
        raise ConfigError(f"--tau needs a front of one utility and one gap objective; got {list(front.objectives)}")
    gap, utility = kinds.index(True), kinds.index(False)
    try:
        values = utility_at_gap(front.values, front.directions, tau, utility=utility, gap=gap, bounds=DTO_BOUNDS)
        best = best_at_gap(front.values, front.directions, tau, utility=utility, gap=gap, bounds=DTO_BOUNDS)
    except ValueError as exc:
        raise ConfigError(f"--tau {tau!r} on front [{front.title}]: {exc}") from None
    return GapBudget(float(tau), front.objectives[utility], front.objectives[gap], values, best)


def load_sweep(tracking_uri: str, experiment: str, run_id: str | None = None, ablation: str | None = None,
               include_pruned: bool = False) -> Sweep:
    """The latest sweep of ``experiment`` — or of its ablation ``ablation`` — (or ``run_id``) with its
    FINISHED trials, and with ``include_pruned`` the trials early stopping stopped (their objectives at the rung).

    Each trial carries its violations of the sweep's constraints (recorded on the sweep run), computed from its
    logged final metrics: the same values the searcher told Optuna.
    """
    parent = find_sweep_run(tracking_uri, experiment, run_id, ablation)
    objectives = tuple((m, Direction.parse(d)) for m, d in json.loads(parent.data.tags[TAG_OBJECTIVES]))
    constraints = tuple(Constraint.parse(c) for c in json.loads(parent.data.tags.get(TAG_CONSTRAINTS, "[]")))
    trials, failed, pruned = [], 0, 0
    for run in trial_runs(tracking_uri, parent):
        rung = run.data.tags.get(TAG_PRUNED_RUNG) if run.data.tags.get(TAG_PRUNED) == "true" else None
        if rung is not None:
            pruned += 1
            if not include_pruned:
                continue
        elif run.info.status != "FINISHED":
            failed += 1
            continue
        searched = json.loads(run.data.tags.get("fairray.searched_params", "[]"))
        params = {k: run.data.params[k] for k in searched if k in run.data.params}
        metrics = dict(run.data.metrics)
        if rung is not None:  # the values Optuna was told, not whatever the process logged after the stop
            metrics.update(zip((m for m, _ in objectives), json.loads(run.data.tags.get(TAG_PRUNED_VALUES, "[]")),
                               strict=False))
        violations = {str(c): v for c in constraints if (v := c.violation(metrics.get(c.metric))) > 0}
        trials.append(TrialRecord(run.info.run_id, run.data.tags.get(TAG_TRIAL, run.info.run_name), params,
                                  metrics, None if rung is None else int(rung), violations))
    repeats = int(parent.data.tags.get(TAG_REPEATS, "1"))
    if repeats > 1:
        trials, incomplete = mean_over_seeds(trials, repeats, constraints)
        failed += incomplete
    trials.sort(key=lambda t: t.trial_id)
    attribute = parent.data.params.get("dataset.attribute", DatasetConfig().attribute)
    return Sweep(experiment, parent.info.run_id, objectives, tuple(trials), failed, tracking_uri, attribute,
                 dict(parent.data.params), constraints, pruned)


def mean_over_seeds(trials: Sequence[TrialRecord], repeats: int, constraints: Sequence[Constraint] = ()
                    ) -> tuple[list[TrialRecord], int]:
    """One record per configuration (its searched parameters but ``train.seed``) from its ``repeats`` seeds: the
    mean of every metric all seeds logged, the (min, max) spread, a pruned rung if a seed was pruned, and the
    constraints checked on the means (as Optuna was told). Configurations with fewer than ``repeats`` records (a
    seed failed or is missing) are dropped and counted: returns (records, how many were dropped)."""
    groups: dict[tuple, list[TrialRecord]] = {}
    for t in trials:
        groups.setdefault(tuple(sorted((k, v) for k, v in t.params.items() if k != "train.seed")), []).append(t)
    out, incomplete = [], 0
    for group in groups.values():
        if len(group) < repeats:
            incomplete += 1
            continue
        group.sort(key=lambda t: t.trial_id)
        keys = set.intersection(*(set(t.metrics) for t in group))
        stacked = {k: np.array([t.metrics[k] for t in group], dtype=float) for k in keys}
        metrics = {k: float(v.mean()) for k, v in stacked.items()}
        spread = {k: (float(v.min()), float(v.max())) for k, v in stacked.items()}
        rungs = [t.pruned_rung for t in group if t.pruned_rung is not None]
        violations = {str(c): v for c in constraints if (v := c.violation(metrics.get(c.metric))) > 0}
        params = {k: v for k, v in group[0].params.items() if k != "train.seed"}
        out.append(TrialRecord(group[0].run_id, group[0].trial_id, params, metrics, min(rungs) if rungs else None,
                               violations, tuple(t.trial_id for t in group), spread))
    return out, incomplete


def _values_of(sweep: Sweep, which: str) -> list[str]:
    """Strata values (``language``) or attribute groups (``gender``) present in the trials' metrics."""
    found: set[str] = set()
    keys = set().union(*(trial.metrics for trial in sweep.trials))  # each distinct key parsed once
    for key in keys:
        try:
            k = MetricKey.parse(key)
        except ValueError:
            continue
        if k.stratum == which and k.stratum_value and not k.is_aggregate:
            found.add(k.stratum_value)
        if k.attr == which and k.group:
            found.add(k.group)
    return sorted(found)


def fronts(sweep: Sweep, *, by: Sequence[str] = (), split: str = "dev",
           objectives: Sequence[tuple[str, Direction]] | None = None,
           reference: Sequence[float] | None = None) -> list[Front]:
    """The overall front, or one front per value (combination) of the ``by`` columns."""
    objectives = tuple(objectives or sweep.objectives)
    if not sweep.trials:
        raise TrackingError(f"sweep {sweep.experiment!r} (run {sweep.run_id}) has no finished trial yet "
                            f"({sweep.n_failed} failed or running)")
    base = [MetricKey.parse(m) for m, _ in objectives]
    base = [MetricKey(split, k.metric, k.attr, k.group, k.stratum, k.stratum_value) for k in base]
    directions = tuple(d for _, d in objectives)
    ref = tuple(reference) if reference is not None else tuple(default_reference(directions))
    combos: list[dict[str, str]] = [{}]
    for column in by:
        values = _values_of(sweep, column)
        if not values:
            raise TrackingError(f"--by {column}: no metric of sweep {sweep.experiment!r} is split by {column!r}")
        combos = [{**c, column: v} for c, v in product(combos, values)]
    out = []
    for combo in combos:
        keys = []
        for k in base:
            for column, value in combo.items():
                if column == sweep.attribute:
                    k = restrict(k, group=value, attr=column)
                else:
                    k = restrict(k, stratum_value=value, stratum=column)
            keys.append(k.format())
        values = np.array([[t.metrics.get(key, math.nan) for key in keys] for t in sweep.trials], dtype=float)
        feasible = np.array([t.feasible for t in sweep.trials], dtype=bool)
        candidates = np.where(feasible[:, None], values, math.nan)  # infeasible trials are never on the front
        mask = non_dominated_mask(candidates, directions)
        hv = hypervolume(candidates, directions, ref)
        try:
            dto = utopia_distance(values, directions, DTO_BOUNDS)
        except ValueError:  # an objective outside [0, 1] (e.g. a loss): no utopia point to measure from
            dto = None
        title = ", ".join(f"{c}={v}" for c, v in combo.items()) or "all"
        out.append(Front(title, tuple(keys), directions, sweep.trials, values, mask, hv, ref, combo, dto, feasible))
    return out


def load_predictions(sweep: Sweep, trials: Sequence[TrialRecord], split: str) -> list:
    """Each trial's logged ``predictions/{split}.npz`` artifact, as :class:`~fairray.metrics.Predictions`."""
    import tempfile

    import mlflow

    from fairray.metrics import Predictions

    out = []
    with tempfile.TemporaryDirectory(prefix="fairray-preds-") as d:
        for trial in trials:
            try:
                path = mlflow.artifacts.download_artifacts(run_id=trial.run_id, artifact_path=f"predictions/{split}.npz",
                                                           dst_path=str(Path(d) / trial.run_id),
                                                           tracking_uri=sweep.tracking_uri)
            except Exception as exc:  # MLflow raises several types for a missing artifact
                raise TrackingError(f"trial {trial.trial_id} (run {trial.run_id}) has no predictions/{split}.npz "
                                    f"artifact ({type(exc).__name__}); it predates prediction logging — rerun "
                                    "the sweep") from None
            out.append(Predictions.load(path))
    return out


def pareto_order(front: Front) -> list[int]:
    """The front's Pareto-optimal trials (indices into ``front.trials``), ordered along its first objective (best
    first): the order of :func:`neighbour_noise`'s entries and of each trial's ``next``."""
    on = [i for i in range(len(front.trials)) if front.on_front[i]]
    sign = -1.0 if front.directions[0] is Direction.MAX else 1.0
    on.sort(key=lambda i: sign * front.values[i][0])
    return on


def neighbour_noise(sweep: Sweep, front: Front, *, n_boot: int = 200, level: float = 0.95, seed: int = 0
                    ) -> dict[str, dict[str, Any]]:
    """For each Pareto-optimal trial of ``front``, ordered along its first objective: the speaker-bootstrap
    interval of each objective (``"ci"``) and the paired interval of every objective's difference to the next
    Pareto-optimal trial. All come from ONE speaker resample shared by the front's trials
    (:func:`~fairray.metrics.replicate_matrix`). ``{trial_id: {"ci": {objective: Interval}, "next": trial_id,
    objective: Interval}}``; a difference whose interval contains 0 is within noise. A front without a
    Pareto-optimal trial gives ``{}``.

    :func:`shared_neighbour_noise` of the one front: several fronts of a sweep are better asked for together.
    """
    (noise,) = shared_neighbour_noise(sweep, [front], n_boot=n_boot, level=level, seed=seed)
    if isinstance(noise, TrackingError):
        raise noise
    return noise


def shared_neighbour_noise(sweep: Sweep, fronts_: Sequence[Front], *, n_boot: int = 200, level: float = 0.95,
                           seed: int = 0) -> list[dict[str, dict[str, Any]] | TrackingError]:
    """:func:`neighbour_noise` of each of several fronts of one sweep, in order; a front that cannot have its
    intervals gets the :class:`~fairray.errors.TrackingError` saying why (a trial without logged predictions, an
    objective they do not give), the other fronts their intervals.

    A trial Pareto-optimal on several fronts (the dashboard's six panels share most of theirs: 43 Pareto points
    are 8 trials in the 500-trial benchmark) has its predictions read once, and the fronts of one split are
    served by ONE :func:`~fairray.metrics.replicate_matrix` over the union of their trials and objectives: one
    report per trial and replicate, however many fronts and objectives read it.

    The values are each front's own, not merely close: the resample
    :func:`~fairray.metrics.speaker_replicates` draws for a set of prediction sets depends on the seed, the
    speakers and the (attribute group, stratum) cells of the rows; when every set has the same uids, speakers
    and cells (the trials of one sweep on one split do) the union of the fronts' trials draws the very
    replicates each front's own trials draw. So the union is formed of trials whose predictions agree on those
    three; a front whose trials do not all agree (e.g. a swept ``train.s_min`` that changes which groups a
    report holds) is resampled on its own trials, and so is each front of a union one of whose trials lacks an
    objective of another front.
    """
    from fairray.metrics import replicate_matrix

    orders = [pareto_order(front) for front in fronts_]
    out: list[dict[str, dict[str, Any]] | TrackingError | None] = [None] * len(fronts_)
    by_split: dict[str, list[int]] = {}
    for i, front in enumerate(fronts_):
        if orders[i]:
            by_split.setdefault(MetricKey.parse(front.objectives[0]).split, []).append(i)
        else:
            out[i] = {}  # no Pareto-optimal trial: no interval
    for split, members in by_split.items():
        trials = {fronts_[i].trials[t].run_id: fronts_[i].trials[t] for i in members for t in orders[i]}
        preds = _predictions_of_each(sweep, list(trials.values()), split)
        resample = _resample_classes([p for p in preds.values() if not isinstance(p, TrackingError)])
        unions: dict[object, list[int]] = {}
        for i in members:
            run_ids = [fronts_[i].trials[t].run_id for t in orders[i]]
            missing = next((preds[r] for r in run_ids if isinstance(preds[r], TrackingError)), None)
            if missing is not None:
                out[i] = missing  # as the front alone: its first trial (along the front) without predictions
                continue
            classes = {resample[id(preds[r])] for r in run_ids}
            unions.setdefault(classes.pop() if len(classes) == 1 else ("alone", i), []).append(i)
        work = list(unions.values())
        while work:
            union = work.pop()
            run_ids = list(dict.fromkeys(fronts_[i].trials[t].run_id for i in union for t in orders[i]))
            keys = list(dict.fromkeys(k for i in union for k in fronts_[i].objectives))
            try:
                full, reps = replicate_matrix([preds[r] for r in run_ids], keys, n_boot=n_boot, seed=seed)
            except KeyError as exc:
                if len(union) > 1:  # which front's objective is it? each front on its own says
                    work += [[i] for i in union]
                    continue
                out[union[0]] = TrackingError(f"the logged predictions do not give {exc.args[0]}; choose objectives "
                                              "the trials report")
                continue
            row = {r: a for a, r in enumerate(run_ids)}
            column = {k: j for j, k in enumerate(keys)}
            for i in union:
                out[i] = _noise_entries(fronts_[i], orders[i], row, column, full, reps, level)
    return out  # type: ignore[return-value]  (every front was given its noise or its error)


def _noise_entries(front: Front, order: Sequence[int], row: dict[str, int], column: dict[str, int],
                   full: np.ndarray, reps: np.ndarray, level: float) -> dict[str, dict[str, Any]]:
    """The ``ci`` / ``next`` entries of :func:`neighbour_noise` of ``front``'s trials ``order`` from a replicate
    matrix (``full [P, K]``, ``reps [P, n_boot, K]``) whose row of a trial is ``row[run_id]`` and column of an
    objective ``column[key]``."""
    from fairray.metrics import interval

    rows = [row[front.trials[t].run_id] for t in order]
    out: dict[str, dict[str, Any]] = {}
    for a, r in enumerate(rows):
        entry: dict[str, Any] = {"ci": {k: interval(full[r, column[k]], reps[r, :, column[k]], level)
                                        for k in front.objectives}}
        if a + 1 < len(rows):
            nxt = rows[a + 1]
            entry["next"] = front.trials[order[a + 1]].trial_id
            for k in front.objectives:
                j = column[k]
                entry[k] = interval(full[r, j] - full[nxt, j], reps[r, :, j] - reps[nxt, :, j], level)
        out[front.trials[order[a]].trial_id] = entry
    return out


def _predictions_of_each(sweep: Sweep, trials: Sequence[TrialRecord], split: str) -> dict[str, Any]:
    """``{run_id: Predictions}`` of ``trials`` on ``split``, or the :class:`TrackingError` of a trial without them."""
    out: dict[str, Any] = {}
    for trial in trials:
        try:
            (out[trial.run_id],) = load_predictions(sweep, [trial], split)
        except TrackingError as exc:
            out[trial.run_id] = exc
    return out


def _resample_classes(preds: Sequence) -> dict[int, int]:
    """``{id(pred): class}``: prediction sets of one class have equal uids, speakers and (group, stratum) cells
    (rows in the same order), so :func:`~fairray.metrics.speaker_replicates` draws the same replicates for any
    subset of a class (the profiles, and so the draws, are those of one set's cells)."""
    representatives: list = []
    out: dict[int, int] = {}
    for p in preds:
        cells = p.cell_ids()
        for c, (rep, rep_cells) in enumerate(representatives):
            if (len(p) == len(rep) and np.array_equal(p.uid, rep.uid) and np.array_equal(p.speaker, rep.speaker)
                    and np.array_equal(cells, rep_cells)):
                out[id(p)] = c
                break
        else:
            out[id(p)] = len(representatives)
            representatives.append((p, cells))
    return out


@dataclass(frozen=True)
class Comparison:
    """One panel of two sweeps side by side: their fronts, the joint front (the non-dominated points of both) and
    each front's quality against it (IGD+ 0: the front reaches every joint point)."""

    title: str
    fronts: tuple[Front, Front]
    joint_front: np.ndarray
    quality: tuple[FrontQuality, FrontQuality]


def compare_fronts(a: Sequence[Front], b: Sequence[Front]) -> list[Comparison]:
    """Pair the fronts of two sweeps by panel (same ``--by`` restriction) and measure both against their joint
    front. The two sweeps must share objectives, directions and reference point (else the numbers would not
    compare)."""
    by_title = {f.title: f for f in b}
    if [f.title for f in a] != [f.title for f in b]:
        raise ConfigError(f"--compare: the sweeps give different panels ({[f.title for f in a]} vs "
                          f"{[f.title for f in b]}); compare them with the same --by")
    out = []
    for fa in a:
        fb = by_title[fa.title]
        if (fa.objectives, fa.directions) != (fb.objectives, fb.directions):
            raise ConfigError(f"--compare: the sweeps have different objectives ({_named(fa)} vs {_named(fb)}); "
                              "pass the same --objectives for both")
        if fa.reference != fb.reference:
            raise ConfigError(f"--compare: different hypervolume reference points {list(fa.reference)} vs "
                              f"{list(fb.reference)}; pass --reference")
        joint = np.vstack([fa.points(), fb.points()])
        joint = np.unique(joint[non_dominated_mask(joint, fa.directions)], axis=0) if len(joint) else joint
        out.append(Comparison(fa.title, (fa, fb), joint, (fa.quality(joint), fb.quality(joint))))
    return out


def _named(front: Front) -> list[str]:
    return [f"{k}:{d.value}" for k, d in zip(front.objectives, front.directions, strict=True)]
