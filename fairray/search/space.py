"""The one place a YAML search space becomes Optuna distributions and an Optuna sampler.

Anything that cannot be translated is refused with an error naming the dimension (no silent drops).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from fairray.config import ParamSpec, conditions
from fairray.errors import ConfigError

SAMPLERS = ("tpe", "nsga2", "gp", "random")


def to_distribution(name: str, dim: ParamSpec) -> BaseDistribution:
    """One dimension → its Optuna distribution (specs are validated at load time)."""
    if dim.type == "categorical":
        return CategoricalDistribution(list(dim.choices or ()))
    if dim.type == "int":
        return IntDistribution(int(dim.low), int(dim.high), log=dim.log, step=int(dim.step or 1))
    if dim.type == "loguniform":
        return FloatDistribution(float(dim.low), float(dim.high), log=True)
    if dim.type == "uniform":
        return FloatDistribution(float(dim.low), float(dim.high), log=dim.log, step=dim.step)
    raise ConfigError(f"search.space.{name}: unsupported type {dim.type!r}")


def to_distributions(space: Mapping[str, ParamSpec]) -> dict[str, BaseDistribution]:
    """The whole space, keyed by dotted config path."""
    out = {}
    for name, dim in space.items():
        try:
            out[name] = to_distribution(name, dim)
        except ValueError as exc:  # Optuna's own checks; the loader should have caught these first
            raise ConfigError(f"search.space.{name}: {exc}") from None
    return out


def is_conditional(space: Mapping[str, ParamSpec]) -> bool:
    return any(dim.when for dim in space.values())


class ConditionalSpace:
    """A define-by-run search space for Optuna: dimensions are suggested in YAML order, and a dimension
    with ``when`` only if the earlier dimensions it names took one of the listed values.

    An object rather than a closure so that Ray Tune can pickle the searcher (``--resume``).
    """

    def __init__(self, space: Mapping[str, ParamSpec]) -> None:
        dists = to_distributions(space)
        self.dims = [(name, dists[name], conditions(dim)) for name, dim in space.items()]

    def active(self, chosen: Mapping[str, object], when: Mapping[str, tuple]) -> bool:
        return all(key in chosen and chosen[key] in allowed for key, allowed in when.items())

    def __call__(self, trial: optuna.Trial) -> None:
        chosen: dict[str, object] = {}
        for name, dist, when in self.dims:
            if not self.active(chosen, when):
                continue
            if isinstance(dist, CategoricalDistribution):
                chosen[name] = trial.suggest_categorical(name, dist.choices)
            elif isinstance(dist, IntDistribution):
                chosen[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                chosen[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
        return None

    def assignments(self, keep: Callable[[str], bool]) -> list[dict[str, object]]:
        """Every reachable assignment of the categorical dimensions, projected on the paths ``keep`` accepts
        (deduplicated, in order) — e.g. the dataset variants a sweep must prepare before its trials."""
        relevant = {k for _, _, when in self.dims for k in when}
        out: list[dict[str, object]] = []

        def walk(i: int, chosen: dict[str, object]) -> None:
            if i == len(self.dims):
                projected = {k: v for k, v in chosen.items() if keep(k)}
                if projected not in out:
                    out.append(projected)
                return
            name, dist, when = self.dims[i]
            if not self.active(chosen, when) or not (keep(name) or name in relevant):
                walk(i + 1, chosen)
                return
            if not isinstance(dist, CategoricalDistribution):
                raise ConfigError(f"search.space.{name}: must be categorical (it decides the prepared data or "
                                  "another dimension's condition)")
            for choice in dist.choices:
                walk(i + 1, {**chosen, name: choice})

        walk(0, {})
        return out


FLOAT_DIGITS = 12
"""Significant digits two sampled floats must share to count as the same configuration (:func:`config_key`)."""


def _normal(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return float(f"{value:.{FLOAT_DIGITS}g}") if isinstance(value, float) else int(value)


def config_key(params: Mapping[str, object], space: Mapping[str, ParamSpec]) -> str:
    """The identity of a sampled configuration: its parameters with inactive conditional ones dropped (a ``when``
    the other values do not meet) and floats rounded to :data:`FLOAT_DIGITS` significant digits, as sorted JSON.

    Two samples with the same key train the same model: a sweep trains each key once.

    >>> from fairray.config import ParamSpec
    >>> space = {"method.name": ParamSpec("categorical", choices=("erm", "minmaxgap")),
    ...          "method.lambda_max": ParamSpec("loguniform", 0.5, 20, when={"method.name": ["minmaxgap"]})}
    >>> config_key({"method.name": "erm", "method.lambda_max": 3.0}, space) == config_key({"method.name": "erm"}, space)
    True
    """
    import json

    chosen: dict[str, object] = {}
    for name, dim in space.items():  # YAML order: a condition names earlier dimensions only
        if name in params and all(chosen.get(k, _MISSING) in allowed for k, allowed in conditions(dim).items()):
            chosen[name] = _normal(params[name])
    extra = {k: _normal(v) for k, v in params.items() if k not in space}  # fixed points outside the space
    return json.dumps(sorted({**extra, **chosen}.items()), default=str)


_MISSING = object()


def make_sampler(name: str, seed: int, n_objectives: int, conditional: bool = False) -> optuna.samplers.BaseSampler:
    """An Optuna sampler in true multi-objective mode (no weighted sum of objectives).

    ``tpe`` (MOTPE when several objectives; with a conditional space it models each group of
    co-occurring dimensions jointly), ``nsga2`` (NSGA-II), ``gp`` (Gaussian process with log-EHVI for
    several objectives), ``random``.
    """
    if name == "tpe":
        with warnings.catch_warnings():  # `group` is flagged experimental; it is what TPE needs for conditions
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=conditional, n_startup_trials=8)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"search.sampler: unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")


def fixed_points_searcher(points: list[dict]):
    """A Ray Tune searcher that hands out ``points`` (an ablation grid) once each, then reports FINISHED.
    Its position is saved with the experiment, so ``--resume`` continues the list. (Defined inside a
    function so that importing this module does not import Ray.)"""
    import pickle

    from ray.tune.search import Searcher

    class _FixedPoints(Searcher):
        def __init__(self, points: list[dict]) -> None:
            super().__init__()
            self.points, self.next = [dict(p) for p in points], 0

        def suggest(self, trial_id: str):
            if self.next >= len(self.points):
                return Searcher.FINISHED
            self.next += 1
            return dict(self.points[self.next - 1])

        def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
            pass

        def save(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "wb") as fh:
                pickle.dump({"points": self.points, "next": self.next}, fh)

        def restore(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "rb") as fh:
                state = pickle.load(fh)
            self.points, self.next = state["points"], state["next"]

    return _FixedPoints(points)
