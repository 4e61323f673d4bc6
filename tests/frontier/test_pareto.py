"""Pareto logic: hand cases, NaN/inf/tie semantics, and cross-checks against Optuna's own code."""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest
from optuna._hypervolume import compute_hypervolume
from optuna.study._multi_objective import _fast_non_domination_rank, _is_pareto_front

from fairray.frontier import pareto
from fairray.frontier.pareto import (
    Direction,
    default_reference,
    hypervolume,
    non_dominated_mask,
    pareto_ranks,
    to_minimization,
)

INF = np.inf
NAN = np.nan


def _naive_mask(loss: np.ndarray) -> np.ndarray:
    """Textbook double loop in minimisation space, NaN rows excluded."""
    valid = [not np.isnan(row).any() for row in loss]
    out = []
    for i, b in enumerate(loss):
        dominated = any(valid[j] and all(a <= b) and any(a < b) for j, a in enumerate(loss) if j != i)
        out.append(valid[i] and not dominated)
    return np.array(out, dtype=bool)


def test_module_docstring_examples_run() -> None:
    result = doctest.testmod(pareto)
    assert result.attempted >= 3
    assert result.failed == 0


# --- Direction / normalisation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("max", Direction.MAX),
        ("MAXIMIZE", Direction.MAX),
        ("Maximize", Direction.MAX),
        ("min", Direction.MIN),
        ("minimize", Direction.MIN),
        (" Min ", Direction.MIN),
        (Direction.MAX, Direction.MAX),
    ],
)
def test_direction_parse_accepts_spellings(spelling: str, expected: Direction) -> None:
    assert Direction.parse(spelling) is expected


@pytest.mark.parametrize("bad", ["up", "maximum", "", None, 1])
def test_direction_parse_lists_valid_spellings(bad: object) -> None:
    with pytest.raises(ValueError, match="maximize") as info:
        Direction.parse(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)


def test_to_minimization_negates_max_columns_only() -> None:
    values = np.array([[0.5, 0.2, 3.0], [INF, NAN, -INF]])
    out = to_minimization(values, ["max", "min", Direction.MAX])
    np.testing.assert_array_equal(out, [[-0.5, 0.2, -3.0], [-INF, NAN, INF]])
    assert values[0, 0] == 0.5  # input untouched


def test_to_minimization_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(2,\)"):
        to_minimization(np.zeros((4, 3)), ["max", "min"])
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        to_minimization(np.zeros(3), ["max", "min"])


def test_directions_must_be_a_sequence_of_directions() -> None:
    with pytest.raises(ValueError, match="string 'max'"):
        to_minimization(np.zeros((2, 3)), "max")
    with pytest.raises(ValueError, match="at least one"):
        to_minimization(np.zeros((2, 0)), [])


# --- non-dominated mask ----------------------------------------------------------------------


def test_mask_two_objectives_mixed_directions() -> None:
    # accuracy (max) vs fairness gap (min)
    values = np.array(
        [
            [0.80, 0.10],  # front
            [0.70, 0.05],  # front
            [0.60, 0.20],  # dominated by row 0
            [0.80, 0.12],  # dominated by row 0 (equal accuracy, larger gap)
            [0.50, 0.01],  # front
        ]
    )
    assert non_dominated_mask(values, ["max", "min"]).tolist() == [True, True, False, False, True]
    # Flipping both directions flips which corner is good.
    assert non_dominated_mask(values, ["min", "max"]).tolist() == [False, False, True, False, True]


def test_mask_one_objective_keeps_all_ties_of_the_best() -> None:
    values = np.array([[0.3], [0.9], [0.9], [0.1]])
    assert non_dominated_mask(values, ["max"]).tolist() == [False, True, True, False]
    assert non_dominated_mask(values, ["min"]).tolist() == [False, False, False, True]


def test_mask_three_objectives() -> None:
    values = np.array(
        [
            [1.0, 1.0, 1.0],
            [0.0, 2.0, 2.0],  # not dominated: best first objective
            [2.0, 2.0, 2.0],  # dominated by row 0
            [1.0, 1.0, 0.5],  # dominates row 0
        ]
    )
    assert non_dominated_mask(values, ["min"] * 3).tolist() == [False, True, False, True]


def test_identical_rows_are_all_kept_on_the_front() -> None:
    values = np.array([[0.7, 0.1], [0.7, 0.1], [0.7, 0.1], [0.6, 0.2], [0.6, 0.2]])
    assert non_dominated_mask(values, ["max", "min"]).tolist() == [True, True, True, False, False]


def test_nan_rows_are_never_on_the_front_and_never_dominate() -> None:
    values = np.array(
        [
            [NAN, 0.0],  # would dominate everything if NaN counted as "best"
            [0.5, 0.5],
            [0.9, NAN],
            [0.4, 0.6],  # dominated by row 1 only
        ]
    )
    assert non_dominated_mask(values, ["max", "min"]).tolist() == [False, True, False, False]
    all_nan = np.full((3, 2), NAN)
    assert not non_dominated_mask(all_nan, ["max", "min"]).any()


def test_infinities_are_ordinary_ordered_values() -> None:
    directions = ["max", "min"]
    # +inf gap (worst for a minimised objective) is dominated by anything finite at equal accuracy.
    assert non_dominated_mask(np.array([[0.5, INF], [0.5, 0.9]]), directions).tolist() == [False, True]
    # -inf gap (best) dominates at equal accuracy.
    assert non_dominated_mask(np.array([[0.5, -INF], [0.5, 0.0]]), directions).tolist() == [True, False]
    # +inf accuracy (best for max) is on the front even with a bad gap.
    assert non_dominated_mask(np.array([[INF, 0.9], [0.5, 0.1]]), directions).tolist() == [True, True]
    # Identical infinite rows tie.
    assert non_dominated_mask(np.array([[INF, INF], [INF, INF]]), directions).tolist() == [True, True]


def test_empty_input_returns_empty_mask() -> None:
    for empty in (np.empty((0, 2)), np.array([]), []):
        mask = non_dominated_mask(empty, ["max", "min"])
        assert mask.shape == (0,)
        assert mask.dtype == bool


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_obj", [2, 3])
def test_mask_matches_optuna(seed: int, n_obj: int) -> None:
    rng = np.random.default_rng(seed)
    # Coarse grid values so ties and duplicate rows occur often.
    values = np.round(rng.random((120, n_obj)), 1)
    directions = list(itertools.islice(itertools.cycle(["max", "min"]), n_obj))
    loss = to_minimization(values, directions)
    expected = _is_pareto_front(loss, assume_unique_lexsorted=False)
    np.testing.assert_array_equal(non_dominated_mask(values, directions), expected)


@pytest.mark.parametrize("seed", range(5))
def test_mask_matches_naive_definition_with_nan_and_inf(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.choice([0.0, 0.5, 1.0, INF, -INF, NAN], size=(40, 3), p=[0.3, 0.3, 0.25, 0.05, 0.05, 0.05])
    directions = ["max", "min", "min"]
    np.testing.assert_array_equal(
        non_dominated_mask(values, directions), _naive_mask(to_minimization(values, directions))
    )


@pytest.mark.parametrize("n_obj", [1, 2, 3, 4])
def test_mask_matches_naive_definition_on_ties(n_obj: int) -> None:
    rng = np.random.default_rng(n_obj)
    values = rng.integers(0, 4, size=(60, n_obj)).astype(float)
    directions = ["min"] * n_obj
    np.testing.assert_array_equal(
        non_dominated_mask(values, directions), _naive_mask(to_minimization(values, directions))
    )


def test_negative_zero_ties_with_zero() -> None:
    values = np.array([[-0.0, 0.5], [0.0, 0.5], [0.0, 0.6]])
    assert non_dominated_mask(values, ["min", "min"]).tolist() == [True, True, False]
    assert non_dominated_mask(values[:, :1], ["max"]).tolist() == [True, True, True]


# --- ranks -----------------------------------------------------------------------------------


def test_pareto_ranks_hand_case() -> None:
    values = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [1.0, 1.0], [NAN, 0.0], [0.5, 4.0]])
    assert pareto_ranks(values, ["min", "min"]).tolist() == [0, 1, 2, 0, -1, 0]


def test_pareto_ranks_empty_and_all_nan() -> None:
    assert pareto_ranks(np.empty((0, 2)), ["min", "min"]).tolist() == []
    assert pareto_ranks(np.full((2, 2), NAN), ["min", "min"]).tolist() == [-1, -1]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n_obj", [2, 3])
def test_pareto_ranks_match_optuna(seed: int, n_obj: int) -> None:
    rng = np.random.default_rng(100 + seed)
    values = np.round(rng.random((80, n_obj)), 1)
    directions = ["max"] * n_obj
    expected = _fast_non_domination_rank(to_minimization(values, directions))
    np.testing.assert_array_equal(pareto_ranks(values, directions), expected)


# --- hypervolume -----------------------------------------------------------------------------


def test_hypervolume_two_objectives_hand_case() -> None:
    # Minimisation, reference (4, 4): x in [1, 2) has height 4 - 3, x in [2, 4) has height 4 - 1: 1 + 6.
    values = np.array([[1.0, 3.0], [2.0, 1.0]])
    assert hypervolume(values, ["min", "min"], [4.0, 4.0]) == pytest.approx(7.0)


def test_hypervolume_mixed_directions_reference_in_original_units() -> None:
    # accuracy (max) 0.8 with gap (min) 0.1, reference (0, 1): box 0.8 x 0.9.
    assert hypervolume(np.array([[0.8, 0.1]]), ["max", "min"], [0.0, 1.0]) == pytest.approx(0.72)
    # Same point with a reference beyond it in the wrong direction contributes nothing.
    assert hypervolume(np.array([[0.8, 0.1]]), ["max", "min"], [0.9, 1.0]) == 0.0


def test_hypervolume_one_and_three_objectives() -> None:
    assert hypervolume(np.array([[0.2], [0.6]]), ["max"], [0.0]) == pytest.approx(0.6)
    # Two boxes in 3-D: [0,2]^2x[0,1] and [0,1]^3 (max, ref at origin) -> second is inside the first.
    boxes = np.array([[2.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    assert hypervolume(boxes, ["max"] * 3, [0.0, 0.0, 0.0]) == pytest.approx(4.0)
    # Add a box sticking out in z: [0,1]x[0,1]x[0,3] adds 1*1*2.
    boxes = np.vstack([boxes, [1.0, 1.0, 3.0]])
    assert hypervolume(boxes, ["max"] * 3, [0.0, 0.0, 0.0]) == pytest.approx(6.0)


def test_hypervolume_ignores_dominated_duplicate_and_boundary_points() -> None:
    base = np.array([[1.0, 3.0], [2.0, 1.0]])
    extra = np.array(
        [
            [1.0, 3.0],  # duplicate
            [3.0, 3.5],  # dominated
            [0.5, 4.0],  # on the reference boundary in objective 2: no volume
            [5.0, 0.0],  # beyond the reference in objective 1
        ]
    )
    hv = hypervolume(np.vstack([base, extra]), ["min", "min"], [4.0, 4.0])
    assert hv == pytest.approx(hypervolume(base, ["min", "min"], [4.0, 4.0]))


def test_hypervolume_nan_and_inf_rows() -> None:
    base = np.array([[0.8, 0.1]])
    with_bad = np.array([[0.8, 0.1], [NAN, 0.0], [0.9, INF], [-INF, 0.0]])
    assert hypervolume(with_bad, ["max", "min"], [0.0, 1.0]) == pytest.approx(
        hypervolume(base, ["max", "min"], [0.0, 1.0])
    )


def test_hypervolume_unbounded_point_raises() -> None:
    with pytest.raises(ValueError, match=r"row 1 .*-inf.* objective 1 \(min\)"):
        hypervolume(np.array([[0.8, 0.1], [0.5, -INF]]), ["max", "min"], [0.0, 1.0])
    with pytest.raises(ValueError, match=r"inf.* objective 0 \(max\)"):
        hypervolume(np.array([[INF, 0.1]]), ["max", "min"], [0.0, 1.0])
    # Unbounded in one objective but no better than the reference in another: contributes nothing.
    assert hypervolume(np.array([[INF, 1.0]]), ["max", "min"], [0.0, 1.0]) == 0.0


@pytest.mark.parametrize("reference", [[0.0, NAN], [0.0, INF], [-INF, 1.0]])
def test_hypervolume_reference_must_be_finite(reference: list[float]) -> None:
    with pytest.raises(ValueError, match="finite"):
        hypervolume(np.array([[0.8, 0.1]]), ["max", "min"], reference)


def test_hypervolume_reference_length_must_match() -> None:
    with pytest.raises(ValueError, match=r"shape \(2,\).*shape \(3,\)"):
        hypervolume(np.array([[0.8, 0.1]]), ["max", "min"], [0.0, 1.0, 1.0])


def test_hypervolume_empty_is_zero() -> None:
    assert hypervolume(np.empty((0, 2)), ["max", "min"], [0.0, 1.0]) == 0.0
    assert hypervolume(np.array([[NAN, NAN]]), ["max", "min"], [0.0, 1.0]) == 0.0


def _optuna_hv(values: np.ndarray, directions: list[str], reference: list[float]) -> float:
    loss = to_minimization(values, directions)
    ref = to_minimization(np.array([reference]), directions)[0]
    inside = loss[(loss <= ref).all(axis=1)]  # Optuna requires every point to weakly dominate ref
    return float(compute_hypervolume(inside, ref))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_obj", [2, 3, 4])
def test_hypervolume_matches_optuna(seed: int, n_obj: int) -> None:
    rng = np.random.default_rng(1000 * n_obj + seed)
    n = {2: 200, 3: 120, 4: 40}[n_obj]
    values = rng.random((n, n_obj))
    values[: n // 4] = np.round(values[: n // 4], 1)  # ties and duplicates
    directions = list(itertools.islice(itertools.cycle(["max", "min"]), n_obj))
    reference = default_reference(directions, bounds=(0.1, 0.9))  # some points lie beyond it
    expected = _optuna_hv(values, directions, reference)
    assert expected > 0
    assert hypervolume(values, directions, reference) == pytest.approx(expected, rel=1e-10, abs=1e-14)


def test_hypervolume_of_front_equals_hypervolume_of_all() -> None:
    rng = np.random.default_rng(3)
    values = rng.random((60, 3))
    directions = ["max", "min", "max"]
    reference = default_reference(directions)
    front = values[non_dominated_mask(values, directions)]
    assert hypervolume(front, directions, reference) == pytest.approx(hypervolume(values, directions, reference))


# --- reference -------------------------------------------------------------------------------


def test_default_reference_is_the_worst_corner() -> None:
    assert default_reference(["max", "min", "maximize"]) == [0.0, 1.0, 0.0]
    assert default_reference([Direction.MIN, "max"], bounds=(-1.0, 2.0)) == [2.0, -1.0]


@pytest.mark.parametrize("bounds", [(1.0, 0.0), (0.0, 0.0), (0.0, INF), (NAN, 1.0)])
def test_default_reference_rejects_bad_bounds(bounds: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="lower < upper"):
        default_reference(["max"], bounds=bounds)


# --- front metrics: DTO and utility under a gap budget (METHODS §2.7) ----------------------------------


def test_utopia_distance_by_hand() -> None:
    # (U, Gap): dto = sqrt((1 - U)^2 + Gap^2): 0.5 (3-4-5 triangle scaled by 0.1), 0, 1, sqrt(2), NaN.
    values = np.array([[0.6, 0.3], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [NAN, 0.1]])
    got = pareto.utopia_distance(values, ["max", "min"])
    np.testing.assert_allclose(got[:4], [0.5, 0.0, 1.0, np.sqrt(2)])
    assert np.isnan(got[4])


def test_utopia_distance_follows_the_directions() -> None:
    # The same points with the columns swapped, or with the utility stored as an error rate (1 - U, minimised),
    # are the same distances: the utopia point is the best corner of [0, 1] in each objective's direction.
    values = np.array([[0.6, 0.3], [0.9, 0.05], [0.2, 0.0]])
    base = pareto.utopia_distance(values, ["max", "min"])
    np.testing.assert_allclose(pareto.utopia_distance(values[:, ::-1], ["min", "max"]), base)
    np.testing.assert_allclose(pareto.utopia_distance(np.c_[1 - values[:, 0], values[:, 1]], ["min", "min"]), base)
    # Three objectives add their terms: a second gap of 0.4 on the first point gives sqrt(0.25 + 0.16).
    three = pareto.utopia_distance(np.array([[0.6, 0.3, 0.4]]), ["max", "min", "min"])
    assert three[0] == pytest.approx(np.sqrt(0.41))
    # Other bounds: U in [0, 100] (percent), gap in [0, 100]: (60, 30) is 50 points away, scaled to 0.5.
    assert pareto.utopia_distance(np.array([[60.0, 30.0]]), ["max", "min"], (0, 100))[0] == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [1.2, -0.1, INF, -INF])
def test_utopia_distance_refuses_values_outside_the_bounds(bad: float) -> None:
    with pytest.raises(ValueError, match=r"needs every objective in \[0, 1\]; got .* in objective 1 \(min\) of row 1"):
        pareto.utopia_distance(np.array([[0.5, 0.1], [0.5, bad]]), ["max", "min"])
    with pytest.raises(ValueError, match="bounds"):
        pareto.utopia_distance(np.array([[0.5, 0.1]]), ["max", "min"], (1.0, 0.0))


VALUES = np.array([
    [0.70, 0.12],   # best utility, over the budget
    [0.60, 0.05],
    [0.60, 0.02],   # ties 0.60 with a smaller gap: the best under tau = 0.1
    [0.50, 0.10],   # exactly on the budget: counts
    [NAN, 0.00],    # invalid trial: NaN, never a number
    [0.65, NAN],
])  # fmt: skip


def test_utility_at_gap_by_hand() -> None:
    got = pareto.utility_at_gap(VALUES, ["max", "min"], 0.1)
    np.testing.assert_array_equal(got[:4], [-1.0, 0.6, 0.6, 0.5])
    assert np.isnan(got[4:]).all()
    np.testing.assert_array_equal(pareto.utility_at_gap(VALUES, ["max", "min"], 0.2)[:4], VALUES[:4, 0])
    np.testing.assert_array_equal(pareto.utility_at_gap(VALUES, ["max", "min"], 0.0)[:4], [-1, -1, -1, -1])
    # Columns in the other order: name them.
    swapped = pareto.utility_at_gap(VALUES[:, ::-1], ["min", "max"], 0.1, utility=1, gap=0)
    np.testing.assert_array_equal(swapped[:4], [-1.0, 0.6, 0.6, 0.5])


def test_best_at_gap_by_hand() -> None:
    assert pareto.best_at_gap(VALUES, ["max", "min"], 0.1) == 2    # 0.60 twice: the smaller gap wins
    assert pareto.best_at_gap(VALUES, ["max", "min"], 0.12) == 0   # the budget now admits 0.70
    assert pareto.best_at_gap(VALUES, ["max", "min"], 0.03) == 2
    assert pareto.best_at_gap(VALUES, ["max", "min"], 0.01) is None
    assert pareto.best_at_gap(VALUES[[1, 1, 3]], ["max", "min"], 0.1) == 0  # identical rows: the first
    # The best point under any budget is on the front.
    mask = non_dominated_mask(VALUES, ["max", "min"])
    for tau in (0.02, 0.05, 0.1, 0.12, 1.0):
        assert mask[pareto.best_at_gap(VALUES, ["max", "min"], tau)], tau


def test_best_at_gap_matches_a_brute_force_search() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        values = np.round(rng.random((12, 2)), 1)  # many ties
        values[rng.random(12) < 0.2, 0] = NAN
        for tau in (0.0, 0.2, 0.5, 1.0):
            ok = [i for i in range(12) if not np.isnan(values[i]).any() and values[i, 1] <= tau]
            want = min(ok, key=lambda i: (-values[i, 0], values[i, 1], i)) if ok else None
            assert pareto.best_at_gap(values, ["max", "min"], tau) == want


@pytest.mark.parametrize("tau", [-0.1, NAN, INF, "0.1", True])
def test_gap_budget_must_be_a_finite_non_negative_number(tau) -> None:
    with pytest.raises(ValueError, match="tau must be a finite number >= 0"):
        pareto.utility_at_gap(VALUES[:4], ["max", "min"], tau)


def test_utility_and_gap_must_be_two_objectives() -> None:
    with pytest.raises(ValueError, match="different objectives"):
        pareto.best_at_gap(VALUES[:4], ["max", "min"], 0.1, utility=1, gap=1)
    with pytest.raises(ValueError, match=r"gap must be an objective index in 0..1; got 2"):
        pareto.utility_at_gap(VALUES[:4], ["max", "min"], 0.1, gap=2)


# --- IGD+, hypervolume contributions, the MOASHA rung order -----------------------------------------------------


def test_igd_plus_by_hand() -> None:
    # (F1 max, gap min). Reference front z1 = (0.8, 0.2), z2 = (0.6, 0.1), z3 = (0.4, 0.0).
    # Front a1 = (0.7, 0.2), a2 = (0.4, 0.05). In minimisation space d+(z, a) = |max(a - z, 0)|:
    #   z1: a1 -> (0.1, 0) = 0.1;            a2 -> (0.4, 0) = 0.4        -> 0.1
    #   z2: a1 -> (0, 0.1) = 0.1;            a2 -> (0.2, 0) = 0.2        -> 0.1
    #   z3: a1 -> (0, 0.2) = 0.2;            a2 -> (0, 0.05) = 0.05      -> 0.05
    # IGD+ = (0.1 + 0.1 + 0.05) / 3
    reference = np.array([[0.8, 0.2], [0.6, 0.1], [0.4, 0.0]])
    front = np.array([[0.7, 0.2], [0.4, 0.05], [NAN, 0.0]])
    assert pareto.igd_plus(front, ["max", "min"], reference) == pytest.approx(0.25 / 3)
    assert pareto.igd_plus(reference, ["max", "min"], reference) == 0.0
    # a point that dominates the reference is at distance 0 (IGD+ is Pareto-compliant, unlike IGD)
    assert pareto.igd_plus(np.array([[0.9, 0.0]]), ["max", "min"], reference) == 0.0
    assert pareto.igd_plus(np.empty((0, 2)), ["max", "min"], reference) == INF
    with pytest.raises(ValueError, match="at least one valid"):
        pareto.igd_plus(front, ["max", "min"], np.array([[NAN, 0.1]]))


def test_hypervolume_contributions_by_hand() -> None:
    values = np.array([[0.8, 0.2], [0.6, 0.1], [0.5, 0.3], [0.8, 0.2], [NAN, 0.0]])
    got = pareto.hypervolume_contributions(values, ["max", "min"], [0.0, 1.0])
    # the copies of (0.8, 0.2) cover their box together: neither alone; (0.5, 0.3) is dominated
    np.testing.assert_allclose(got, [0.0, 0.6 * 0.1, 0.0, 0.0, 0.0], atol=1e-12)
    total = hypervolume(values[:3], ["max", "min"], [0.0, 1.0])
    np.testing.assert_allclose(pareto.hypervolume_contributions(values[:3], ["max", "min"], [0.0, 1.0]).sum(),
                               total - (0.6 * 0.8))  # = 0.16 + 0.06 exclusive; 0.6 * 0.8 is shared


def test_nondominated_order_ranks_then_contribution_then_index() -> None:
    values = np.array([
        [0.50, 0.30],  # rank 1
        [0.80, 0.20],  # rank 0, extreme
        [0.60, 0.10],  # rank 0, extreme
        [0.70, 0.18],  # rank 0, between the two: smallest box of its rank
        [NAN, 0.00],   # invalid: last
        [0.40, 0.40],  # rank 2
    ])  # fmt: skip
    rank, contribution = pareto.nondominated_scores(values, ["max", "min"])
    assert rank.tolist() == [1, 0, 0, 0, 3, 2]
    assert contribution[3] < min(contribution[1], contribution[2])
    order = pareto.nondominated_order(values, ["max", "min"]).tolist()
    assert order[3:] == [0, 5, 4] and order[2] == 3
    # ties (identical rows) keep row order
    assert pareto.nondominated_order(np.array([[0.5, 0.1], [0.5, 0.1]]), ["max", "min"]).tolist() == [0, 1]
