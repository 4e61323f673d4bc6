"""Search spaces (YAML → Optuna distributions) and samplers."""

from fairray.search.space import SAMPLERS, make_sampler, to_distribution, to_distributions

__all__ = ["SAMPLERS", "make_sampler", "to_distribution", "to_distributions"]
