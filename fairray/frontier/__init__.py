"""Pareto fronts: the one module of Pareto logic, fronts read from MLflow, and the interactive page."""

from fairray.frontier.pareto import (
    Direction,
    best_at_gap,
    default_reference,
    hypervolume,
    hypervolume_contributions,
    igd_plus,
    non_dominated_mask,
    nondominated_order,
    pareto_ranks,
    to_minimization,
    utility_at_gap,
    utopia_distance,
)
from fairray.frontier.plot import FrontPanel, FrontPoint, render_frontier_html, write_frontier_html

__all__ = [
    "Direction",
    "FrontPanel",
    "FrontPoint",
    "best_at_gap",
    "default_reference",
    "hypervolume",
    "hypervolume_contributions",
    "igd_plus",
    "non_dominated_mask",
    "nondominated_order",
    "pareto_ranks",
    "render_frontier_html",
    "to_minimization",
    "utility_at_gap",
    "utopia_distance",
    "write_frontier_html",
]
