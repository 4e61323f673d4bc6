"""Pareto logic as pure functions over plain ``[n_trials, n_objectives]`` arrays.

This is the one module that decides dominance. Search, frontier and export all normalise
objective directions through :func:`to_minimization`, so "better" means the same everywhere.

Semantics shared by every function here (in minimisation space, after :func:`to_minimization`):

* ``a`` dominates ``b`` iff ``a <= b`` in every objective and ``a < b`` in at least one.
* Identical rows do not dominate each other: all copies of a non-dominated row are on the front.
* A row with any NaN is an invalid trial: it is never on the front and never dominates.
* ``+inf`` / ``-inf`` are ordinary ordered values: an objective stuck at the worst infinity is
  dominated by any finite value there, the best infinity dominates every finite value.

Front metrics (METHODS §2.7) read the same normalisation: :func:`utopia_distance` (DTO, the distance to
the best corner of the objectives' bounds) and :func:`utility_at_gap` / :func:`best_at_gap` (the utility
under a gap budget ``tau``).

Example
-------
>>> import numpy as np
>>> values = np.array([[0.8, 0.10], [0.7, 0.05], [0.6, 0.20], [np.nan, 0.0]])
>>> non_dominated_mask(values, ["max", "min"]).tolist()
[True, True, False, False]
>>> round(hypervolume(values, ["max", "min"], default_reference(["max", "min"])), 4)
0.755
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import numpy as np

__all__ = [
    "Direction",
    "best_at_gap",
    "default_reference",
    "hypervolume",
    "hypervolume_contributions",
    "igd_plus",
    "non_dominated_mask",
    "nondominated_order",
    "nondominated_scores",
    "pareto_ranks",
    "to_minimization",
    "utility_at_gap",
    "utopia_distance",
]


class Direction(str, Enum):
    """Optimisation direction of one objective."""

    MAX = "max"
    MIN = "min"

    @classmethod
    def parse(cls, value: Direction | str) -> Direction:
        """Read ``"max"``, ``"maximize"``, ``"min"`` or ``"minimize"`` (any case) or a :class:`Direction`.

        Raises
        ------
        ValueError
            For any other spelling; the message lists the valid ones.
        """
        if isinstance(value, Direction):
            return value
        if isinstance(value, str) and value.strip().lower() in _SPELLINGS:
            return _SPELLINGS[value.strip().lower()]
        raise ValueError(f"an objective direction must be one of {sorted(_SPELLINGS)} (any case); got {value!r}")


_SPELLINGS = {
    "max": Direction.MAX,
    "maximize": Direction.MAX,
    "min": Direction.MIN,
    "minimize": Direction.MIN,
}


def _parse_directions(directions: Sequence[Direction | str]) -> tuple[Direction, ...]:
    if isinstance(directions, str):
        raise ValueError(
            f"directions must be a sequence with one direction per objective; got the string {directions!r}"
        )
    parsed = tuple(Direction.parse(d) for d in directions)
    if not parsed:
        raise ValueError("directions must name at least one objective; got an empty sequence")
    return parsed


def to_minimization(values: np.ndarray, directions: Sequence[Direction | str]) -> np.ndarray:
    """Return a float copy of ``values`` in which every objective is to be minimised.

    Columns whose direction is ``MAX`` are negated; NaN stays NaN and infinities flip sign.

    Parameters
    ----------
    values
        Array of shape ``[n_trials, n_objectives]`` (an empty 1-D array counts as zero trials).
    directions
        One :class:`Direction` or spelling per objective.

    Raises
    ------
    ValueError
        When ``values`` is not ``[n, len(directions)]``; the message names both shapes.
    """
    dirs = _parse_directions(directions)
    arr = np.array(values, dtype=float)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, len(dirs))
    if arr.ndim != 2 or arr.shape[1] != len(dirs):
        raise ValueError(
            f"values must have shape (n_trials, n_objectives) with n_objectives == len(directions); "
            f"got values of shape {arr.shape} and directions of shape ({len(dirs)},)"
        )
    is_max = np.array([d is Direction.MAX for d in dirs])
    return np.where(is_max, -arr, arr)


def _front_of_loss(loss: np.ndarray) -> np.ndarray:
    """Non-dominated mask of an array already in minimisation space (NaN rows excluded)."""
    mask = np.zeros(len(loss), dtype=bool)
    valid = np.flatnonzero(~np.isnan(loss).any(axis=1))
    if valid.size == 0:
        return mask
    # Distinct rows in lexicographic order: a row can only be dominated by rows sorted before it.
    # Equal rows collapse into one, so ties share a verdict (``+ 0.0`` folds -0.0 into 0.0).
    unique, inverse = np.unique(loss[valid] + 0.0, axis=0, return_inverse=True)
    if unique.shape[1] == 2:
        # Dominated iff some earlier row has a y no larger: y must set a new strict running minimum.
        running_min = np.minimum.accumulate(unique[:, 1])
        on_front = np.ones(len(unique), dtype=bool)
        on_front[1:] = unique[1:, 1] < running_min[:-1]
    else:
        on_front = np.zeros(len(unique), dtype=bool)
        remaining = np.arange(len(unique))
        while remaining.size:
            best = remaining[0]  # nothing left dominates it; it dominates every row it never beats
            on_front[best] = True
            remaining = remaining[(unique[remaining] < unique[best]).any(axis=1)]
    mask[valid] = on_front[inverse.reshape(-1)]
    return mask


def non_dominated_mask(values: np.ndarray, directions: Sequence[Direction | str]) -> np.ndarray:
    """Boolean mask of the Pareto-optimal rows of ``values``.

    NaN rows are False; identical non-dominated rows are all True; infinities compare as
    ordinary ordered values (see the module docstring).

    Parameters
    ----------
    values
        Array of shape ``[n_trials, n_objectives]`` in the objectives' own units.
    directions
        One :class:`Direction` or spelling per objective.
    """
    return _front_of_loss(to_minimization(values, directions))


def pareto_ranks(values: np.ndarray, directions: Sequence[Direction | str]) -> np.ndarray:
    """Non-dominated sorting: rank 0 is the Pareto front, rank 1 the front once it is removed, ...

    Rows with any NaN get rank ``-1``. Ties share a rank.
    """
    loss = to_minimization(values, directions)
    ranks = np.full(len(loss), -1, dtype=int)
    remaining = np.flatnonzero(~np.isnan(loss).any(axis=1))
    rank = 0
    while remaining.size:
        # A finite set under a strict partial order always has a non-dominated element: this terminates.
        on_front = _front_of_loss(loss[remaining])
        ranks[remaining[on_front]] = rank
        remaining = remaining[~on_front]
        rank += 1
    return ranks


def hypervolume(
    values: np.ndarray,
    directions: Sequence[Direction | str],
    reference: Sequence[float],
) -> float:
    """Volume dominated by the valid rows of ``values`` and bounded by ``reference``.

    Both ``values`` and ``reference`` are in the objectives' own units; they go through the same
    :func:`to_minimization`. Exact: a sweep for two objectives, recursive slicing along the last
    objective for three or more (fronts here are small, hundreds of points at most).

    Rows that do not strictly beat the reference in every objective contribute nothing (this
    includes rows with the worst infinity). NaN rows are ignored. No valid row gives ``0.0``.

    Raises
    ------
    ValueError
        When the reference point has the wrong length or is not finite, or when a row beats the
        reference in every objective and has the best infinity in one (its volume is infinite).
    """
    dirs = _parse_directions(directions)
    loss = to_minimization(values, dirs)
    ref_arr = np.array(reference, dtype=float)
    if ref_arr.shape != (len(dirs),):
        raise ValueError(
            f"the reference point must have one coordinate per objective, shape ({len(dirs)},); "
            f"got shape {ref_arr.shape}: {list(np.atleast_1d(ref_arr))}"
        )
    if not np.isfinite(ref_arr).all():
        raise ValueError(f"the reference point must be finite in every objective; got {ref_arr.tolist()}")
    ref = to_minimization(ref_arr[None, :], dirs)[0]

    valid = ~np.isnan(loss).any(axis=1)
    contributes = valid & (np.where(valid[:, None], loss, np.inf) < ref).all(axis=1)
    unbounded = contributes & np.isneginf(loss).any(axis=1)
    if unbounded.any():
        row = int(np.flatnonzero(unbounded)[0])
        col = int(np.flatnonzero(np.isneginf(loss[row]))[0])
        original = -loss[row, col] if dirs[col] is Direction.MAX else loss[row, col]
        raise ValueError(
            "hypervolume must be finite, so no point that beats the reference may be unbounded in the better "
            f"direction; got row {row} with value {original} in objective {col} ({dirs[col].value}); "
            "drop that trial or fix its metric"
        )
    pts = loss[contributes]
    if len(pts) == 0:
        return 0.0
    pts = np.unique(pts[_front_of_loss(pts)], axis=0)
    return float(_hv_minimisation(pts, ref))


def _hv_minimisation(pts: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of finite points that all strictly beat ``ref`` (minimisation space)."""
    n_obj = pts.shape[1]
    if n_obj == 1:
        return float(ref[0] - pts[:, 0].min())
    if n_obj == 2:
        # Sweep along x: on [x_i, x_{i+1}) the dominated height is ref_y - min(y_0..y_i).
        order = np.argsort(pts[:, 0], kind="stable")
        widths = np.diff(np.append(pts[order, 0], ref[0]))
        heights = ref[1] - np.minimum.accumulate(pts[order, 1])
        return float(np.sum(widths * heights))
    # Slice along the last objective: between consecutive z levels the cross-section is the
    # (d-1)-dimensional hypervolume of every point at or below that level.
    pts = pts[np.argsort(pts[:, -1], kind="stable")]
    levels = np.append(pts[:, -1], ref[-1])
    total = 0.0
    for i in range(len(pts)):
        depth = levels[i + 1] - levels[i]
        if depth > 0:
            section = pts[: i + 1, :-1]
            if n_obj > 3:  # the 2-D sweep needs no pruning; higher dimensions benefit from it
                section = section[_front_of_loss(section)]
            total += depth * _hv_minimisation(section, ref[:-1])
    return total


def default_reference(
    directions: Sequence[Direction | str],
    bounds: tuple[float, float] = (0.0, 1.0),
) -> list[float]:
    """Worst corner of ``bounds`` for each objective: the lower bound for MAX, the upper for MIN.

    Meant for metrics known to lie in ``bounds`` (accuracies, recalls, gaps in ``[0, 1]``). The
    frontier CLI states the reference point it used next to every hypervolume it prints.

    >>> default_reference(["max", "min"])
    [0.0, 1.0]
    """
    lo, hi = (float(b) for b in bounds)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds must be finite with lower < upper; got {tuple(bounds)!r}")
    return [lo if d is Direction.MAX else hi for d in _parse_directions(directions)]


def hypervolume_contributions(
    values: np.ndarray,
    directions: Sequence[Direction | str],
    reference: Sequence[float],
) -> np.ndarray:
    """Exclusive hypervolume contribution of each row: ``HV(all) - HV(all but this row)``.

    A dominated row, a copy of another row, a NaN row or a row that does not beat ``reference`` contributes 0;
    an extreme point of the front contributes the box it alone covers up to ``reference``.

    >>> hypervolume_contributions(np.array([[0.8, 0.2], [0.6, 0.1], [0.5, 0.3]]), ["max", "min"], [0.0, 1.0]
    ...                           ).round(4).tolist()
    [0.16, 0.06, 0.0]
    """
    arr = np.array(values, dtype=float)
    total = hypervolume(arr, directions, reference)
    out = np.zeros(len(arr))
    for i in range(len(arr)):
        out[i] = total - hypervolume(np.delete(arr, i, axis=0), directions, reference)
    return np.maximum(out, 0.0)  # float noise of equal volumes stays 0


def nondominated_scores(
    values: np.ndarray,
    directions: Sequence[Direction | str],
    margin: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's non-dominated rank (:func:`pareto_ranks`; NaN rows get the worst rank + 1) and its exclusive
    hypervolume contribution within its rank: how multi-objective successive halving (MOASHA) ranks a rung
    (:func:`nondominated_order`).

    A rank's contributions are measured against its own nadir pushed out by ``margin`` times each objective's
    range over all valid rows (by 1 where that range is 0), so the extremes of a rank keep a finite box.
    """
    dirs = _parse_directions(directions)
    loss = to_minimization(values, dirs)
    ranks = pareto_ranks(values, dirs)
    valid = ranks >= 0
    contribution = np.zeros(len(loss))
    if valid.any():
        spread = np.ptp(loss[valid], axis=0)
        pad = np.where(spread > 0, margin * spread, 1.0)
        for rank in np.unique(ranks[valid]):
            rows = np.flatnonzero(ranks == rank)
            ref = loss[rows].max(axis=0) + pad
            # already in minimisation space: measure with every direction "min"
            contribution[rows] = hypervolume_contributions(loss[rows], ["min"] * len(dirs), ref)
    worst = ranks.max() + 1 if len(ranks) else 0
    return np.where(valid, ranks, worst), contribution


def nondominated_order(
    values: np.ndarray,
    directions: Sequence[Direction | str],
    margin: float = 0.1,
) -> np.ndarray:
    """Rows best first: by non-dominated rank, then by hypervolume contribution within the rank (largest first),
    then by row index (:func:`nondominated_scores`). NaN rows come last.

    >>> nondominated_order(np.array([[0.5, 0.3], [0.8, 0.2], [0.6, 0.1]]), ["max", "min"]).tolist()
    [1, 2, 0]
    """
    rank, contribution = nondominated_scores(values, directions, margin)
    return np.lexsort((np.arange(len(rank)), -contribution, rank))


def igd_plus(
    values: np.ndarray,
    directions: Sequence[Direction | str],
    reference_front: np.ndarray,
) -> float:
    """IGD+ (Ishibuchi et al., 2015) of the valid rows of ``values`` against ``reference_front``: the mean, over
    the reference points ``z``, of the distance from ``z`` to the nearest row ``a`` counting only the objectives
    where ``a`` is worse than ``z``: ``d+(z, a) = sqrt(sum_j max(a_j - z_j, 0)^2)`` in minimisation space.

    Lower is better; 0 means every reference point is weakly dominated by some row. Both arrays are in the
    objectives' own units (no normalisation: the fairness objectives share the unit interval). NaN rows of
    either array are ignored; no valid row gives ``inf``.

    Raises
    ------
    ValueError
        When the reference front has no valid row, or either array has the wrong shape.

    >>> round(igd_plus(np.array([[0.7, 0.2]]), ["max", "min"], np.array([[0.8, 0.2], [0.6, 0.1]])), 4)
    0.1
    """
    dirs = _parse_directions(directions)
    loss = to_minimization(values, dirs)
    ref = to_minimization(reference_front, dirs)
    ref = ref[~np.isnan(ref).any(axis=1)]
    if len(ref) == 0:
        raise ValueError("igd_plus needs a reference front with at least one valid (NaN-free) point; got none")
    loss = loss[~np.isnan(loss).any(axis=1)]
    if len(loss) == 0:
        return float("inf")
    worse = np.maximum(loss[None, :, :] - ref[:, None, :], 0.0)  # [reference point, row, objective]
    return float(np.sqrt((worse**2).sum(axis=2)).min(axis=1).mean())


# --- front metrics: distance to the utopia point, utility under a gap budget (METHODS §2.7) -----------------


def _shortfall(
    values: np.ndarray, directions: Sequence[Direction | str], bounds: tuple[float, float], what: str
) -> np.ndarray:
    """Each value's distance from its objective's best bound, as a fraction of ``hi - lo``: 0 = best, 1 = worst.

    ``hi - v`` for MAX, ``v - lo`` for MIN (through :func:`to_minimization`, so "better" means what it means for
    dominance). NaN stays NaN; a value outside ``bounds`` (infinities included) is a ``ValueError``.
    """
    lo, hi = (float(b) for b in bounds)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds must be finite with lower < upper; got {tuple(bounds)!r}")
    dirs = _parse_directions(directions)
    loss = to_minimization(values, dirs)
    arr = np.array(values, dtype=float).reshape(loss.shape)
    outside = ~np.isnan(arr) & ((arr < lo) | (arr > hi))
    if outside.any():
        row, col = (int(i) for i in np.argwhere(outside)[0])
        raise ValueError(
            f"{what} needs every objective in [{lo:g}, {hi:g}]; got {arr[row, col]!r} in objective "
            f"{col} ({dirs[col].value}) of row {row}"
        )
    utopia = to_minimization(np.array([[hi if d is Direction.MAX else lo for d in dirs]]), dirs)[0]
    return (loss - utopia) / (hi - lo)


def utopia_distance(
    values: np.ndarray,
    directions: Sequence[Direction | str],
    bounds: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """DTO: the Euclidean distance of each row to the utopia point, the best corner of ``bounds``.

    For a maximised utility ``U`` and a minimised gap in ``[0, 1]`` this is METHODS §2.7's
    ``dto = sqrt((1 - U)^2 + Gap^2)``; other directions use the same normalisation as dominance
    (:func:`to_minimization`), and more objectives add their terms. Lower is better. NaN rows give NaN.

    Raises
    ------
    ValueError
        When a value lies outside ``bounds`` (DTO is a distance on that box), or for bad shapes.

    >>> utopia_distance(np.array([[0.6, 0.3], [1.0, 0.0], [np.nan, 0.1]]), ["max", "min"]).round(4).tolist()
    [0.5, 0.0, nan]
    """
    return np.sqrt((_shortfall(values, directions, bounds, "utopia_distance") ** 2).sum(axis=1))


def utility_at_gap(
    values: np.ndarray,
    directions: Sequence[Direction | str],
    tau: float,
    *,
    utility: int = 0,
    gap: int = 1,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """``util_at_tau`` (METHODS §2.7): ``U`` where ``Gap <= tau``, else ``-1``; NaN for rows with a NaN in either.

    ``U`` and ``Gap`` are the columns ``utility`` and ``gap`` of ``values``, normalised within ``bounds`` so that
    ``U`` is higher-is-better and ``Gap`` lower-is-better (:func:`to_minimization`): with the default bounds, a
    maximised utility and a minimised gap are used as they are, and ``tau`` is in the gap's units.

    >>> utility_at_gap(np.array([[0.7, 0.12], [0.6, 0.05], [0.5, 0.10]]), ["max", "min"], 0.1).tolist()
    [-1.0, 0.6, 0.5]
    """
    u, g = _utility_and_gap(values, directions, tau, utility, gap, bounds, "utility_at_gap")
    return np.where(np.isnan(u) | np.isnan(g), np.nan, np.where(g <= tau, u, -1.0))


def best_at_gap(
    values: np.ndarray,
    directions: Sequence[Direction | str],
    tau: float,
    *,
    utility: int = 0,
    gap: int = 1,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> int | None:
    """Index of the row with the highest ``U`` among those with ``Gap <= tau`` (see :func:`utility_at_gap`), or
    None when no valid row meets the budget.

    Ties in ``U`` go to the smaller gap, then to the first row, so the row returned is Pareto-optimal in
    ``(U, Gap)``: the best point of the front under the gap budget.

    >>> best_at_gap(np.array([[0.7, 0.12], [0.6, 0.05], [0.6, 0.02]]), ["max", "min"], 0.1)
    2
    """
    u, g = _utility_and_gap(values, directions, tau, utility, gap, bounds, "best_at_gap")
    ok = np.flatnonzero(~np.isnan(u) & ~np.isnan(g) & (g <= tau))
    if ok.size == 0:
        return None
    order = np.lexsort((ok, g[ok], -u[ok]))  # last key first: highest U, then smallest gap, then first row
    return int(ok[order[0]])


def _utility_and_gap(values, directions, tau, utility, gap, bounds, what) -> tuple[np.ndarray, np.ndarray]:
    if (
        isinstance(tau, bool)
        or not isinstance(tau, (int, float, np.integer, np.floating))
        or not np.isfinite(tau)
        or tau < 0
    ):
        raise ValueError(f"{what}: tau must be a finite number >= 0 (a gap budget); got {tau!r}")
    short = _shortfall(values, directions, bounds, what)
    n_obj = short.shape[1]
    for name, index in (("utility", utility), ("gap", gap)):
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or not 0 <= index < n_obj:
            raise ValueError(f"{what}: {name} must be an objective index in 0..{n_obj - 1}; got {index!r}")
    if utility == gap:
        raise ValueError(f"{what}: utility and gap must be different objectives; got {utility} for both")
    return 1.0 - short[:, utility], short[:, gap]
