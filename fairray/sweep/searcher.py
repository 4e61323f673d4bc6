"""Optuna's ask/tell behind Ray Tune's ``Searcher`` interface, with what a sweep needs beyond ``OptunaSearch``.

* **No configuration twice.** A sample whose :func:`~fairray.search.space.config_key` matches a configuration
  already finished is told that configuration's outcome at once and never trained; one that matches a running
  configuration is told its outcome when it finishes. Either way Tune is asked for no trial and the next sample
  is drawn. After :data:`MAX_REPEATED_DRAWS` repeated samples in a row the space counts as exhausted.
* **Pruned trials.** A trial the scheduler (:class:`~fairray.sweep.scheduler.MOASHA`) stopped is told
  ``TrialState.PRUNED``. Optuna refuses values with that state in multi-objective studies, so the values it had at
  its rung are kept as the user attribute ``fairray.values`` (with ``fairray.pruned_rung``); samplers treat
  pruned trials as worse than complete ones.
* **Constraints.** Each ``search.constraints`` entry becomes ``Trial.set_constraint(text, violation)`` before the
  trial is told (Optuna 5's replacement of the deprecated ``constraints_func``; TPE, NSGA-II and GP read it).
* **Repeats.** With ``budget.repeats: N`` each new configuration goes to Tune N times, ``train.seed`` = seed,
  seed + 1 ...; Optuna is told once per configuration, the mean over its seeds (:func:`combine`).
* **No silent NaN.** A final result whose objectives are not finite is told ``FAIL`` (``OptunaSearch`` would pass
  it to ``tell()``, which drops the trial with only a warning).

Lifecycle (Ray Tune, on the driver): :meth:`suggest` per new trial, :meth:`on_trial_complete` once per trial
(``error=True`` after the last retry), :meth:`save` / :meth:`restore` with the experiment (``--resume``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from fairray.config import Constraint, ParamSpec
from fairray.frontier.pareto import Direction
from fairray.search import ConditionalSpace
from fairray.search.space import config_key

MAX_REPEATED_DRAWS = 100
"""Consecutive samples that repeat a finished or running configuration before the space counts as exhausted."""

USER_VALUES = "fairray.values"
USER_PRUNED_RUNG = "fairray.pruned_rung"
USER_DUPLICATE_OF = "fairray.duplicate_of"
USER_FAILURE = "fairray.failure"
USER_REPEATS = "fairray.repeats"


def combine(outcomes: Sequence[Outcome]) -> Outcome:
    """One configuration's outcome from its repeats' (one per seed): FAIL if one failed; PRUNED if one was stopped
    (``fairray.values``: the mean of the values each repeat had, at its rung or at the end); else COMPLETE with
    the mean objectives and mean constraint violations (a violation is linear in its metric: the violation of
    the mean metric)."""
    if len(outcomes) == 1:
        return outcomes[0]
    failed = [o for o in outcomes if o.state == TrialState.FAIL]
    if failed:
        return Outcome(TrialState.FAIL, attrs={USER_FAILURE: "; ".join(str(o.attrs.get(USER_FAILURE)) for o in failed)})
    values = [tuple(o.attrs[USER_VALUES]) if o.state == TrialState.PRUNED else o.values for o in outcomes]
    mean = tuple(float(v) for v in np.mean(np.array(values, dtype=float), axis=0))
    if any(o.state == TrialState.PRUNED for o in outcomes):
        rungs = [o.attrs[USER_PRUNED_RUNG] for o in outcomes if o.state == TrialState.PRUNED]
        return Outcome(TrialState.PRUNED, attrs={USER_VALUES: list(mean), USER_PRUNED_RUNG: min(rungs)})
    constraints = {k: float(np.mean([o.constraints[k] for o in outcomes])) for k in outcomes[0].constraints}
    return Outcome(TrialState.COMPLETE, mean, constraints)


@dataclass(frozen=True)
class Outcome:
    """What Optuna is told about one configuration (and about every later sample of it)."""

    state: TrialState
    values: tuple[float, ...] | None = None
    constraints: Mapping[str, float] = field(default_factory=dict)
    attrs: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class _Config:
    trial: optuna.Trial  # the sample Optuna is told about once every repeat has finished
    trial_ids: list[str] = field(default_factory=list)  # the Tune trials that train it (one per repeat)
    repeats: dict[str, Outcome] = field(default_factory=dict)  # Tune trial id -> its own outcome
    outcome: Outcome | None = None  # None while a repeat runs
    waiting: list[optuna.Trial] = field(default_factory=list)  # duplicate samples told when it finishes


class FairraySearcher(Searcher):
    """Multi-objective Optuna search for Ray Tune that trains each distinct configuration once (or once per seed).

    Parameters
    ----------
    space
        Optuna distributions by dotted path, or a define-by-run :class:`~fairray.search.ConditionalSpace`.
    param_specs
        The spec's ``search.space`` (what :func:`config_key` needs to drop inactive parameters).
    objectives
        ``(metric, direction)`` pairs, in the study's order.
    sampler
        Any Optuna sampler (:func:`fairray.search.make_sampler`).
    constraints
        Feasibility conditions told to Optuna with every complete trial.
    pruned
        Lookup of the trials the scheduler stopped (``MOASHA.record``): trial id -> record with ``rung`` and
        ``values``, or None.
    repeats, seed
        ``budget.repeats``: each configuration is handed to Tune ``repeats`` times with ``train.seed`` =
        ``seed``, ``seed + 1`` ...; Optuna is told once, when all have finished: the mean of their objectives
        (COMPLETE), PRUNED if a repeat was stopped (the mean of the values each had), FAIL if one failed.
    """

    def __init__(self, space: Mapping[str, BaseDistribution] | ConditionalSpace, param_specs: Mapping[str, ParamSpec],
                 objectives: Sequence[tuple[str, Direction | str]], sampler: optuna.samplers.BaseSampler,
                 constraints: Sequence[Constraint] = (), pruned: Callable[[str], Any] | None = None,
                 repeats: int = 1, seed: int = 0) -> None:
        super().__init__(metric=None, mode=None)
        self.space = space
        # plain dicts: the loader's read-only mappings do not pickle (Tune saves the searcher with the experiment)
        self.param_specs = {k: dataclasses.replace(v, when=dict(v.when) if v.when else None)
                            for k, v in param_specs.items()}
        self.metrics = tuple(m for m, _ in objectives)
        self.directions = tuple(Direction.parse(d) for _, d in objectives)
        self.constraints = tuple(constraints)
        self.pruned = pruned
        self.repeats, self.seed = int(repeats), int(seed)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage = optuna.storages.InMemoryStorage()
        self.study = optuna.create_study(
            storage=self.storage, sampler=sampler,
            directions=["maximize" if d is Direction.MAX else "minimize" for d in self.directions])
        self.configs: dict[str, _Config] = {}
        self.running: dict[str, str] = {}  # Tune trial id -> config key
        self.queued: list[tuple[str, dict[str, Any], int]] = []  # repeats still to hand out: (key, params, index)
        self.n_duplicates = 0
        self.exhausted = False

    # ---------------------------------------------------------------- Tune's interface
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # objectives and space come from the spec, not from TuneConfig

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.queued:  # the other seeds of a configuration come before any new sample
            key, params, index = self.queued.pop(0)
            return self._hand_out(trial_id, key, params, index)
        for _ in range(MAX_REPEATED_DRAWS):
            trial = self._ask()
            params = dict(trial.params)
            key = config_key(params, self.param_specs)
            known = self.configs.get(key)
            if known is None:
                self.configs[key] = _Config(trial)
                self.queued += [(key, params, i) for i in range(1, self.repeats)]
                return self._hand_out(trial_id, key, params, 0)
            self.n_duplicates += 1
            trial.set_user_attr(USER_DUPLICATE_OF, known.trial_ids[0])
            if known.outcome is None:
                known.waiting.append(trial)
            else:
                self._tell(trial, known.outcome)
        self.exhausted = True
        return Searcher.FINISHED

    def _hand_out(self, trial_id: str, key: str, params: dict[str, Any], index: int) -> dict[str, Any]:
        self.configs[key].trial_ids.append(trial_id)
        self.running[trial_id] = key
        return {**params, "train.seed": self.seed + index} if self.repeats > 1 else dict(params)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # multi-objective Optuna takes final values only; intermediate ranking is the scheduler's

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        key = self.running.pop(trial_id, None)
        if key is None:
            return
        config = self.configs[key]
        config.repeats[trial_id] = self.outcome(trial_id, result, error)
        if len(config.repeats) < self.repeats:
            return
        config.outcome = combine([config.repeats[t] for t in config.trial_ids])
        self._tell(config.trial, config.outcome)
        for duplicate in config.waiting:
            self._tell(duplicate, config.outcome)
        config.waiting.clear()

    def outcome(self, trial_id: str, result: Mapping[str, Any] | None, error: bool) -> Outcome:
        """What one finished Tune trial amounts to: PRUNED (stopped at a rung), COMPLETE or FAIL."""
        if error or result is None:
            return Outcome(TrialState.FAIL, attrs={USER_FAILURE: f"trial {trial_id} errored"})
        pruned = self.pruned(trial_id) if self.pruned is not None else None
        if pruned is not None:
            return Outcome(TrialState.PRUNED, attrs={USER_VALUES: list(pruned.values), USER_PRUNED_RUNG: pruned.rung})
        values = tuple(_number(result.get(m)) for m in self.metrics)
        if not result.get("final") or not all(math.isfinite(v) for v in values):
            return Outcome(TrialState.FAIL, attrs={USER_FAILURE: f"trial {trial_id}: no finite final values of "
                                                                f"{list(self.metrics)}: {list(values)}"})
        constraints = {str(c): c.violation(result.get(c.metric)) for c in self.constraints}
        return Outcome(TrialState.COMPLETE, values, constraints)

    def save(self, checkpoint_path: str) -> None:
        state = {k: v for k, v in self.__dict__.items() if k != "pruned"}
        with open(checkpoint_path, "wb") as fh:  # one pickle: the trials keep their study
            pickle.dump(state, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.__dict__.update(pickle.load(fh))

    # ---------------------------------------------------------------- Optuna
    def _ask(self) -> optuna.Trial:
        if isinstance(self.space, ConditionalSpace):
            trial = self.study.ask()
            self.space(trial)
            return trial
        return self.study.ask(fixed_distributions=dict(self.space))

    def _tell(self, trial: optuna.Trial, outcome: Outcome) -> None:
        if self.repeats > 1:
            trial.set_user_attr(USER_REPEATS, self.repeats)
        for key, value in outcome.attrs.items():
            trial.set_user_attr(key, value)
        for key, violation in outcome.constraints.items():
            trial.set_constraint(key, violation)
        values = list(outcome.values) if outcome.state == TrialState.COMPLETE else None
        self.study.tell(trial, values, state=outcome.state)

    def export(self, path: str | os.PathLike) -> str:
        """Write the study (every sample, its state, values, user attributes and constraints) to a SQLite file
        that ``optuna.load_study`` and optuna-dashboard read; replaces an earlier export. Returns its URL."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(f".{target.name}.tmp")
        staged.unlink(missing_ok=True)
        optuna.copy_study(from_study_name=self.study.study_name, from_storage=self.storage,
                          to_storage=f"sqlite:///{staged}", to_study_name="fairray")
        os.replace(staged, target)
        return f"sqlite:///{target}"

    # ---------------------------------------------------------------- summary
    def counts(self) -> dict[str, int]:
        """Samples drawn, distinct configurations trained, duplicates (told, not trained), per Optuna state."""
        states: dict[str, int] = {}
        for t in self.study.get_trials(deepcopy=False):
            states[t.state.name] = states.get(t.state.name, 0) + 1
        return {"samples": len(self.study.trials), "configurations": len(self.configs), "repeats": self.repeats,
                "duplicates": self.n_duplicates, **{f"optuna_{k.lower()}": v for k, v in sorted(states.items())}}


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
