"""Multi-objective early stopping for Ray Tune: asynchronous successive halving over the dev objective vector.

Ray Tune's ASHA ranks one metric; Optuna has no pruner for multi-objective studies. :class:`MOASHA` (as Syne
Tune's MOASHA) keeps ASHA's asynchronous rungs and ranks the trials that reached a rung by non-dominated sorting,
then hypervolume contribution (:func:`fairray.frontier.pareto.nondominated_order`, the one module of Pareto
logic). Which trials it stopped, where and with what values is kept in :attr:`MOASHA.pruned`: the searcher tells
Optuna they were PRUNED and the sweep marks their MLflow runs.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from fairray.frontier.pareto import Direction, nondominated_order, nondominated_scores

TIME_ATTR = "epoch"
"""The per-epoch report's 0-based epoch index: a report with ``epoch = e`` comes after ``e + 1`` epochs."""


@dataclass(frozen=True)
class Pruned:
    """A trial stopped at a rung: the rung (epochs trained), its values there, and how it ranked."""

    rung: int
    values: tuple[float, ...]
    position: int  # 0 = best of the trials that had reached the rung
    of: int
    kept: int

    def reason(self) -> str:
        return (f"pruned by moasha at the {self.rung}-epoch rung: ranked {self.position + 1} of {self.of} trials "
                f"there (the best {self.kept} go on)")


def from_spec(spec) -> MOASHA | None:
    """The scheduler ``spec.search.early_stopping`` asks for (None without one); rungs below the longest trial."""
    stopping = spec.search.early_stopping
    if stopping is None:
        return None
    objectives = [(o.metric, o.direction) for o in spec.search.stopping_objectives]
    return MOASHA(objectives, stopping.grace, stopping.reduction, spec.search.max_epochs(spec.train.epochs))


def rung_epochs(grace: int, reduction: float, max_epochs: int) -> tuple[int, ...]:
    """Rungs at ``grace * reduction**k`` epochs (rounded), strictly below ``max_epochs``.

    >>> rung_epochs(5, 3, 50)
    (5, 15, 45)
    >>> rung_epochs(1, 2, 8)
    (1, 2, 4)
    """
    out: list[int] = []
    k = 0
    while True:
        epoch = int(round(grace * reduction**k))
        if epoch >= max_epochs:
            return tuple(out)
        if not out or epoch > out[-1]:
            out.append(epoch)
        k += 1


class MOASHA(FIFOScheduler):
    """Asynchronous successive halving on several objectives at once.

    Lifecycle (Ray Tune calls it on the driver): every per-epoch result of a trial goes to
    :meth:`on_trial_result`; when the trial has trained a rung's number of epochs for the first time, its
    objective vector joins the rung's record, the record is ordered by :func:`nondominated_order` and the trial
    goes on only if fewer than ``ceil(n / reduction)`` of the ``n`` trials recorded there rank strictly before it
    (ties keep it; the first trial at a rung always goes on, as in ASHA). Otherwise it is stopped (``STOP``) and
    recorded in :attr:`pruned`. Results without ``epoch`` (the final report of the selected model) or marked
    ``failed`` are not ranked.

    Parameters
    ----------
    objectives
        ``(metric, direction)`` pairs the rungs rank on; each must be in every per-epoch result.
    grace, reduction, max_epochs
        Rungs: :func:`rung_epochs`.
    """

    def __init__(self, objectives: Sequence[tuple[str, Direction | str]], grace: int, reduction: float,
                 max_epochs: int) -> None:
        super().__init__()
        if not objectives:
            raise ValueError("MOASHA needs at least one (metric, direction) objective")
        self.metrics = tuple(m for m, _ in objectives)
        self.directions = tuple(Direction.parse(d) for _, d in objectives)
        self.reduction = float(reduction)
        self.rungs = rung_epochs(grace, reduction, max_epochs)
        #: rung -> trial id -> objective vector there, in arrival order
        self.records: dict[int, dict[str, tuple[float, ...]]] = {r: {} for r in self.rungs}
        #: trial id -> where and why it was stopped
        self.pruned: dict[str, Pruned] = {}

    def record(self, trial_id: str) -> Pruned | None:
        """Where and why ``trial_id`` was stopped, or None if it was not (what the searcher and marks ask)."""
        return self.pruned.get(trial_id)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # the objectives come from the spec, not from TuneConfig's single metric

    def on_trial_result(self, tune_controller, trial, result: Mapping[str, Any]) -> str:
        if TIME_ATTR not in result or result.get("failed") or result.get("final"):
            return TrialScheduler.CONTINUE
        trained = int(result[TIME_ATTR]) + 1
        for rung in self.rungs:
            if trained < rung:
                break
            record = self.records[rung]
            if trial.trial_id in record:
                continue
            record[trial.trial_id] = tuple(_number(result.get(m)) for m in self.metrics)
            decision = self.decide(rung, trial.trial_id)
            if decision is not None:
                self.pruned[trial.trial_id] = decision
                return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def decide(self, rung: int, trial_id: str) -> Pruned | None:
        """None when ``trial_id`` goes on from ``rung``, else its :class:`Pruned` record."""
        ids = list(self.records[rung])
        values = np.array([self.records[rung][i] for i in ids], dtype=float)
        rank, contribution = nondominated_scores(values, self.directions)
        me = ids.index(trial_id)
        # trials strictly before this one in nondominated_order (ties keep it)
        ahead = int(np.sum((rank < rank[me]) | ((rank == rank[me]) & (contribution > contribution[me]))))
        position = int(np.flatnonzero(nondominated_order(values, self.directions) == me)[0])
        kept = max(1, math.ceil(len(ids) / self.reduction))
        if ahead < kept:
            return None
        return Pruned(rung, tuple(values[me].tolist()), position, len(ids), kept)

    def debug_string(self) -> str:
        rungs = ", ".join(f"{r}: {len(self.records[r])}" for r in self.rungs)
        return f"Using MOASHA: rungs at epochs {list(self.rungs)} (trials recorded {rungs}); " \
               f"{len(self.pruned)} stopped"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__dict__, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.__dict__.update(pickle.load(fh))


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
