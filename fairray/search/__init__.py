"""Search spaces (YAML → Optuna distributions) and samplers."""

from fairray.search.space import (
    SAMPLERS,
    ConditionalSpace,
    is_conditional,
    make_sampler,
    to_distribution,
    to_distributions,
)

__all__ = ["SAMPLERS", "ConditionalSpace", "is_conditional", "make_sampler", "to_distribution", "to_distributions"]
