"""The one place a YAML search space becomes Optuna distributions and an Optuna sampler.

Anything that cannot be translated is refused with an error naming the dimension (no silent drops).
"""

from __future__ import annotations

from collections.abc import Mapping

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from fairray.config import ParamSpec
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


def make_sampler(name: str, seed: int, n_objectives: int) -> optuna.samplers.BaseSampler:
    """An Optuna sampler in true multi-objective mode (no weighted sum of objectives).

    ``tpe`` (MOTPE when several objectives), ``nsga2`` (NSGA-II), ``gp`` (Gaussian process with
    log-EHVI for several objectives), ``random``.
    """
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=8)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"search.sampler: unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
