"""GroupReport: cross-checks against scikit-learn and fairlearn, hand-computed gaps, §2.6 edge cases."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from fairray.errors import ConfigError, DataError
from fairray.metrics import (
    GAP_METRICS,
    UTILITY_METRICS,
    GroupReport,
    evaluate_frame,
    format_report,
    validate_metric_name,
)
from fairray.metrics import _report as report_module

CLASSES = ["ang", "hap", "neu", "sad", "sur"]


def _random(seed: int, n: int = 600, n_groups: int = 2, n_classes: int = 5, p_missing: float = 0.1):
    """Predictions that are right about 60% of the time, groups F/M(/X) with some U, three languages."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, n_classes, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, n_classes, n))
    names = ["F", "M", "X"][:n_groups]
    gender = rng.choice(names + ["U"], n, p=[(1 - p_missing) / n_groups] * n_groups + [p_missing])
    groups = pd.DataFrame({"gender": gender, "language": rng.choice(["en", "de", "ja"], n)})
    return y_true, y_pred, CLASSES[:n_classes], groups


def _sk_utilities(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """The §2.2 utilities through scikit-learn (the oracle)."""
    labels = list(range(n_classes))
    present = sorted(set(y_true.tolist()))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    fp = cm.sum(0) - np.diag(cm)
    neg = len(y_true) - cm.sum(1)
    return {
        "acc": accuracy_score(y_true, y_pred),
        "weighted_f1": f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0),
        "macro_f1": f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0),
        "uar": recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0),
        "fpr": float(np.mean(fp[neg > 0] / neg[neg > 0])),
        "n": float(len(y_true)),
    }


def _uar(y_true, y_pred) -> float:
    return recall_score(
        y_true, y_pred, labels=sorted(set(np.asarray(y_true).tolist())), average="macro", zero_division=0
    )


def _weighted_f1(y_true, y_pred) -> float:
    return f1_score(y_true, y_pred, labels=list(range(5)), average="weighted", zero_division=0)


# --- cross-checks ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_groups", [2, 3])
def test_utilities_match_sklearn_on_every_subset(seed: int, n_groups: int) -> None:
    y_true, y_pred, classes, groups = _random(seed, n_groups=n_groups)
    report = GroupReport.compute(y_true, y_pred, classes, groups)
    gender, language = groups["gender"].to_numpy(), groups["language"].to_numpy()
    subsets = {"": np.ones(len(y_true), bool)}
    subsets |= {f"/gender:{g}": gender == g for g in report.groups}
    subsets |= {f"/language:{s}": language == s for s in report.strata}
    subsets |= {
        f"/gender:{g}/language:{s}": (gender == g) & (language == s) for g in report.groups for s in report.strata
    }
    assert report.groups == ("F", "M", "X")[:n_groups]
    for suffix, mask in subsets.items():
        expected = _sk_utilities(y_true[mask], y_pred[mask], len(classes))
        for metric, value in expected.items():
            assert report.get(f"dev/{metric}{suffix}") == pytest.approx(value, abs=1e-12), (metric, suffix)


@pytest.mark.parametrize("seed", [3, 4, 5])
@pytest.mark.parametrize("n_groups", [2, 3])
def test_scalar_gaps_match_fairlearn_metric_frame(seed: int, n_groups: int) -> None:
    y_true, y_pred, classes, groups = _random(seed, n_groups=n_groups)
    report = GroupReport.compute(y_true, y_pred, classes, groups)
    known = groups["gender"] != "U"
    frame = MetricFrame(
        metrics={"acc": accuracy_score, "weighted_f1": _weighted_f1, "uar": _uar},
        y_true=y_true[known],
        y_pred=y_pred[known],
        sensitive_features=groups.loc[known, "gender"],
        control_features=groups.loc[known, "language"],
    )
    pooled = MetricFrame(
        metrics={"acc": accuracy_score, "weighted_f1": _weighted_f1, "uar": _uar},
        y_true=y_true[known],
        y_pred=y_pred[known],
        sensitive_features=groups.loc[known, "gender"],
    )
    for metric in ("acc", "weighted_f1", "uar"):
        for group, value in pooled.by_group[metric].items():
            assert report.get(f"dev/{metric}/gender:{group}") == pytest.approx(value)
        assert report.get(f"dev/{metric}_gap/gender") == pytest.approx(pooled.difference()[metric])
        per_stratum = frame.difference()[metric]
        for language, value in per_stratum.items():
            assert report.get(f"dev/{metric}_gap/gender/language:{language}") == pytest.approx(value)
        assert report.get(f"dev/{metric}_gap/gender/worst:language") == pytest.approx(per_stratum.max())
        assert report.get(f"dev/{metric}_gap/gender/mean:language") == pytest.approx(per_stratum.mean())


def _fairlearn_classwise(rate, y_true, y_pred, gender, language, n_classes, gap_op):
    """Per-class one-vs-rest rates through fairlearn, gap per class, RMS over classes."""
    gaps = []
    for c in range(n_classes):
        frame = MetricFrame(
            metrics=rate,
            y_true=(y_true == c).astype(int),
            y_pred=(y_pred == c).astype(int),
            sensitive_features=gender,
            control_features=language,
        )
        if gap_op == "range":
            gaps.append(frame.difference())
        else:
            by_group = frame.by_group
            overall = frame.overall.reindex(by_group.index.get_level_values(0)).to_numpy()
            gaps.append((by_group - overall).abs().groupby(level=0).sum())
    return np.sqrt((pd.concat(gaps, axis=1) ** 2).mean(axis=1))


@pytest.mark.parametrize(
    ("seed", "n_groups", "gap_op"), [(6, 2, "sum_abs_dev"), (7, 3, "sum_abs_dev"), (6, 3, "range"), (7, 2, "range")]
)
def test_classwise_gaps_match_fairlearn_one_vs_rest(seed: int, n_groups: int, gap_op: str) -> None:
    y_true, y_pred, classes, groups = _random(seed, n=900, n_groups=n_groups)
    report = GroupReport.compute(y_true, y_pred, classes, groups, gap_op=gap_op)
    known = (groups["gender"] != "U").to_numpy()
    gender = groups.loc[known, "gender"]
    for gap, rate in (("tpr_gap", true_positive_rate), ("fpr_gap", false_positive_rate), ("dp_gap", selection_rate)):
        for language_column in (pd.Series("all", index=gender.index, name="pool"), groups.loc[known, "language"]):
            expected = _fairlearn_classwise(
                rate, y_true[known], y_pred[known], gender, language_column, len(classes), gap_op
            )
            for stratum, value in expected.items():
                key = f"dev/{gap}/gender" if stratum == "all" else f"dev/{gap}/gender/language:{stratum}"
                assert report.get(key) == pytest.approx(value), key


def test_two_group_sum_abs_dev_equals_range_equals_pairwise() -> None:
    y_true, y_pred, classes, groups = _random(8)
    a = GroupReport.compute(y_true, y_pred, classes, groups, gap_op="sum_abs_dev").flat("dev")
    b = GroupReport.compute(y_true, y_pred, classes, groups, gap_op="range").flat("dev")
    for key in a:
        assert a[key] == pytest.approx(b[key], nan_ok=True), key


def test_without_strata() -> None:
    y_true, y_pred, classes, groups = _random(9)
    report = GroupReport.compute(y_true, y_pred, classes, groups[["gender"]], stratum=None)
    with_strata = GroupReport.compute(y_true, y_pred, classes, groups)
    flat = report.flat("dev")
    assert not any("language" in key for key in flat)
    assert len(flat) == 7 * 3 + 2 + len(GAP_METRICS)
    for key, value in flat.items():
        assert with_strata.get(key) == pytest.approx(value), key


# --- hand-computed cases -------------------------------------------------------------------------


def _report(rows, *, stratum="language", **kwargs) -> GroupReport:
    """``rows`` = (gender, language, y_true, y_pred) tuples over classes a, b, c."""
    frame = pd.DataFrame(rows, columns=["gender", "language", "y_true", "y_pred"])
    return GroupReport.compute(
        frame["y_true"].to_numpy(), frame["y_pred"].to_numpy(), ["a", "b", "c"], frame, stratum=stratum, **kwargs
    )


# F: TPR (1, .5, 1), FPR (.25, 0, 0), PPR (3/6, 1/6, 2/6); M: TPR (.5, 1, 1), FPR (0, .25, 0), PPR (1/6, 3/6, 2/6).
SWAPPED = [("F", "en", t, p) for t, p in zip([0, 0, 1, 1, 2, 2], [0, 0, 1, 0, 2, 2], strict=True)] + [
    ("M", "en", t, p) for t, p in zip([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 2], strict=True)
]


@pytest.mark.parametrize(
    ("class_agg", "tpr", "fpr", "dp"),
    [
        ("rms", math.sqrt(0.5 / 3), math.sqrt(0.125 / 3), math.sqrt(2 / 27)),
        ("mean", 1 / 3, 1 / 6, 2 / 9),
        ("max", 0.5, 0.25, 1 / 3),
    ],
)
def test_classwise_gaps_by_hand(class_agg: str, tpr: float, fpr: float, dp: float) -> None:
    report = _report(SWAPPED, class_agg=class_agg)
    assert report.get("dev/tpr_gap/gender") == pytest.approx(tpr)
    assert report.get("dev/fpr_gap/gender") == pytest.approx(fpr)
    assert report.get("dev/dp_gap/gender") == pytest.approx(dp)
    # The groups are mirror images: every scalar gap is 0.
    for gap in ("uar_gap", "mfpr_gap", "weighted_f1_gap", "acc_gap", "avg_gap"):
        assert report.get(f"dev/{gap}/gender") == pytest.approx(0.0)


def test_scalar_gaps_by_hand() -> None:
    # F perfect on (0, 1); M predicts 0 for everything on (0, 1, 0, 1).
    rows = [("F", "en", 0, 0), ("F", "en", 1, 1)] + [("M", "en", t, 0) for t in (0, 1, 0, 1)]
    report = GroupReport.compute(
        np.array([r[2] for r in rows]), np.array([r[3] for r in rows]), ["a", "b"],
        pd.DataFrame(rows, columns=["gender", "language", "t", "p"]),
    )  # fmt: skip
    assert report.get("dev/acc_gap/gender") == pytest.approx(0.5)
    assert report.get("dev/uar_gap/gender") == pytest.approx(0.5)  # uar_M = (1 + 0) / 2
    assert report.get("dev/mfpr_gap/gender") == pytest.approx(0.5)  # FPR_M = (1 + 0) / 2
    assert report.get("dev/weighted_f1_gap/gender") == pytest.approx(2 / 3)  # W-F1_M = (2/3 + 0) / 2
    assert report.get("dev/avg_gap/gender") == pytest.approx((0.5 + 0.5 + 2 / 3 + 0.5) / 4)
    assert report.get("dev/n_undefined_f1/gender:M") == 0  # class b: TP 0, FP 0, FN 2
    assert report.get("dev/macro_f1/gender:M") == pytest.approx(1 / 3)


@pytest.mark.parametrize(("gap_op", "expected"), [("sum_abs_dev", 1.125), ("range", 1.0), ("mad", 1 / 3)])
def test_three_group_gap_operators_by_hand(gap_op: str, expected: float) -> None:
    # Every sample is class b: TPR_b = .5, 1, 0 on 2, 4, 2 positives; pooled TPR = 5/8.
    # sum_abs_dev = .125 + .375 + .625; class a has no positives and is dropped.
    rows = [("A", "x", 1, p) for p in (1, 0)] + [("B", "x", 1, 1)] * 4 + [("C", "x", 1, 0)] * 2
    table = _report(rows, gap_op=gap_op).table()
    row = table[(table["metric"] == "tpr_gap") & table["stratum"].isna()].iloc[0]
    assert row["value"] == pytest.approx(expected)
    assert row["n_classes"] == 1


# Three groups, one stratum, classes a, b (two samples each per group):
#   A: a -> (a, b), b -> (b, b)    TPR (.5, 1)   FPR (0, .5)   PPR (1/4, 3/4)
#   B: a -> (a, a), b -> (b, a)    TPR (1, .5)   FPR (.5, 0)   PPR (3/4, 1/4)
#   C: a -> (b, b), b -> (b, b)    TPR (0, 1)    FPR (0, 1)    PPR (0, 1)
THREE = [(g, "x", t, p) for g, pairs in (("A", [(0, 0), (0, 1), (1, 1), (1, 1)]),
                                          ("B", [(0, 0), (0, 0), (1, 1), (1, 0)]),
                                          ("C", [(0, 1), (0, 1), (1, 1), (1, 1)])) for t, p in pairs]


@pytest.mark.parametrize(
    ("class_agg", "tpr", "fpr", "dp"),
    [
        # range per class: TPR (1 - 0, 1 - .5), FPR (.5 - 0, 1 - 0), PPR (3/4 - 0, 1 - 1/4)
        ("rms", math.sqrt((1 + 0.25) / 2), math.sqrt((0.25 + 1) / 2), 0.75),
        ("mean", 0.75, 0.75, 0.75),
        ("max", 1.0, 1.0, 0.75),
    ],
)
def test_range_variants_by_hand(class_agg: str, tpr: float, fpr: float, dp: float) -> None:
    frame = pd.DataFrame(THREE, columns=["gender", "language", "y_true", "y_pred"])
    report = GroupReport.compute(frame["y_true"].to_numpy(), frame["y_pred"].to_numpy(), ["a", "b"], frame,
                                 class_agg=class_agg)
    assert report.get("dev/tpr_gap_range/gender") == pytest.approx(tpr)
    assert report.get("dev/fpr_gap_range/gender") == pytest.approx(fpr)
    assert report.get("dev/dp_gap_range/gender") == pytest.approx(dp)
    for key in ("dev/tpr_gap_range/gender/language:x", "dev/tpr_gap_range/gender/worst:language",
                "dev/tpr_gap_range/gender/mean:language"):
        assert report.get(key) == pytest.approx(tpr), key  # one stratum: per stratum = worst = mean = pooled
    if class_agg == "rms":
        # Beside it, tpr_gap keeps the default sum_abs_dev: pooled TPR (1/2, 5/6); class a |0| + |.5| + |.5| = 1,
        # class b 1/6 + 1/3 + 1/6 = 2/3.
        assert report.gap_op == "sum_abs_dev"
        assert report.get("dev/tpr_gap/gender") == pytest.approx(math.sqrt((1 + 4 / 9) / 2))
    table = report.table()
    row = table[(table["metric"] == "tpr_gap_range") & table["stratum"].isna()].iloc[0]
    assert row["n_classes"] == 2 and row["support"] == 12


@pytest.mark.parametrize("gap_op", ["sum_abs_dev", "range", "mad"])
def test_range_variants_do_not_depend_on_the_reports_gap_op(gap_op: str) -> None:
    y_true, y_pred, classes, groups = _random(21, n_groups=3)
    fixed = GroupReport.compute(y_true, y_pred, classes, groups, gap_op="range")
    report = GroupReport.compute(y_true, y_pred, classes, groups, gap_op=gap_op)
    for gap in ("tpr_gap", "fpr_gap", "dp_gap"):
        for suffix in ("", "/language:en", "/worst:language", "/mean:language"):
            key = f"dev/{gap}_range/gender{suffix}"
            assert report.get(key) == pytest.approx(fixed.get(f"dev/{gap}/gender{suffix}")), key
            if gap_op == "range":
                assert report.get(key) == report.get(f"dev/{gap}/gender{suffix}"), key


@pytest.mark.parametrize(("seed", "n_groups"), [(6, 3), (7, 2)])
def test_range_variants_match_fairlearn_difference(seed: int, n_groups: int) -> None:
    y_true, y_pred, classes, groups = _random(seed, n=900, n_groups=n_groups)
    report = GroupReport.compute(y_true, y_pred, classes, groups)  # default gap_op: sum_abs_dev
    known = (groups["gender"] != "U").to_numpy()
    gender = groups.loc[known, "gender"]
    for gap, rate in (("tpr_gap", true_positive_rate), ("fpr_gap", false_positive_rate), ("dp_gap", selection_rate)):
        expected = _fairlearn_classwise(rate, y_true[known], y_pred[known], gender, groups.loc[known, "language"],
                                        len(classes), "range")
        for stratum, value in expected.items():
            assert report.get(f"dev/{gap}_range/gender/language:{stratum}") == pytest.approx(value), (gap, stratum)


def test_overall_rate_pools_only_the_defined_groups() -> None:
    # As above plus D with one positive (TPR 1) below s_min=2: D is left out of the gap and of the
    # pooled TPR (5/8, not 6/9), so the gap is the same 1.125.
    rows = [("A", "x", 1, p) for p in (1, 0)] + [("B", "x", 1, 1)] * 4 + [("C", "x", 1, 0)] * 2 + [("D", "x", 1, 1)]
    assert _report(rows, s_min=2).get("dev/tpr_gap/gender") == pytest.approx(1.125)


def test_mfpr_uses_classes_defined_for_all_groups() -> None:
    # s_min=2. F: FPR (a .5, b 0, c 0), all defined. M (a, a, b->a): FPR_Ma = 1 on Q_Ma = 1 < 2, so
    # class a is left out for both groups: mean FPR over {b, c} is 0 for both. The per-group macro
    # fpr uses the classes defined in that group: F counts a, M does not (unless s_min=1).
    rows = [("F", "en", t, p) for t, p in ((0, 0), (1, 0), (2, 2), (0, 0))]
    rows += [("M", "en", 0, 0), ("M", "en", 0, 0), ("M", "en", 1, 0)]
    report = _report(rows, s_min=2)
    assert report.get("dev/mfpr_gap/gender") == pytest.approx(0.0)
    assert report.get("dev/fpr/gender:F") == pytest.approx(1 / 6)
    assert report.get("dev/fpr/gender:M") == pytest.approx(0.0)
    assert _report(rows, s_min=1).get("dev/fpr/gender:M") == pytest.approx(1 / 3)


def test_worst_and_mean_over_strata_by_hand() -> None:
    rows = (
        [("F", "en", 0, 0), ("F", "en", 1, 1), ("M", "en", 0, 0), ("M", "en", 1, 0)]  # acc_gap .5
        + [("F", "de", 0, 0), ("M", "de", 1, 1)]  # acc_gap 0
        + [("F", "ja", 0, 1), ("F", "ja", 1, 1)]  # no M: undefined
    )
    report = _report(rows)
    assert report.get("dev/acc_gap/gender/language:en") == pytest.approx(0.5)
    assert report.get("dev/acc_gap/gender/language:de") == pytest.approx(0.0)
    assert math.isnan(report.get("dev/acc_gap/gender/language:ja"))
    assert report.get("dev/acc_gap/gender/worst:language") == pytest.approx(0.5)
    assert report.get("dev/acc_gap/gender/mean:language") == pytest.approx(0.25)
    assert report.get("dev/acc_gap/gender") == pytest.approx(4 / 5 - 2 / 3)  # pooled: F 4 of 5, M 2 of 3
    table = report.table()
    worst = table[(table["metric"] == "acc_gap") & (table["stratum_value"] == "worst")].iloc[0]
    assert worst["n_strata"] == 2 and worst["support"] == 6
    assert report.get("dev/n_groups_eff/gender/language:ja") == 1


# --- §2.6 edge cases -----------------------------------------------------------------------------


def test_empty_group_in_a_stratum_is_dropped() -> None:
    rows = [("F", "en", 0, 0), ("F", "en", 1, 1), ("M", "en", 0, 0), ("M", "en", 1, 0)]
    rows += [("F", "de", 0, 1), ("F", "de", 1, 1)]
    report = _report(rows)
    assert report.get("dev/n/gender:M/language:de") == 0
    for metric in UTILITY_METRICS:
        assert math.isnan(report.get(f"dev/{metric}/gender:M/language:de")), metric
    assert report.get("dev/n_groups_eff/gender/language:de") == 1
    for gap in GAP_METRICS:
        assert math.isnan(report.get(f"dev/{gap}/gender/language:de")), gap
        assert not math.isnan(report.get(f"dev/{gap}/gender/language:en")), gap


def test_fewer_than_two_groups_gives_nan_everywhere() -> None:
    report = _report([("F", "en", 0, 0), ("F", "de", 1, 0), ("U", "de", 2, 2)])
    for key, value in report.flat("dev").items():
        if "_gap/" in key:
            assert math.isnan(value), key
    assert report.get("dev/acc") == pytest.approx(2 / 3)


@pytest.mark.parametrize("gap_op", ["sum_abs_dev", "range", "mad"])
def test_no_known_group_at_all(gap_op: str) -> None:
    report = _report([("U", "en", 0, 0), (None, "de", 1, 0)], gap_op=gap_op)
    assert report.groups == () and report.n_excluded == 2
    assert report.get("dev/acc") == pytest.approx(0.5)
    assert all(math.isnan(v) for k, v in report.flat("dev").items() if "_gap/" in k)
    empty = _report([], gap_op=gap_op)
    assert empty.get("dev/n") == 0 and math.isnan(empty.get("dev/acc"))


def test_class_absent_from_a_group_is_excluded_from_its_tpr_gap() -> None:
    # Class c has positives only in F: its TPR gap is undefined, so the aggregate uses a and b only.
    rows = [("F", "en", 0, 0), ("F", "en", 1, 0), ("F", "en", 2, 2), ("M", "en", 0, 1), ("M", "en", 1, 1)]
    report = _report(rows)
    # TPR_a: F 1, M 0; TPR_b: F 0, M 1  ->  both gaps 1.
    assert report.get("dev/tpr_gap/gender") == pytest.approx(1.0)
    table = report.table()
    pooled = table[(table["metric"] == "tpr_gap") & table["stratum"].isna()].iloc[0]
    assert pooled["n_classes"] == 2


def test_s_min_drops_thin_cells() -> None:
    rows = [("F", "en", 0, 0)] * 3 + [("F", "en", 1, 1)] * 3 + [("M", "en", 0, 1)] * 3 + [("M", "en", 1, 1)]
    loose, strict = _report(rows, s_min=1), _report(rows, s_min=2)
    # TPR_a: F 1, M 0 (3 positives each); TPR_b: F 1, M 1, but M has one b positive only.
    assert loose.get("dev/tpr_gap/gender") == pytest.approx(math.sqrt(0.5))  # classes a (1) and b (0)
    assert strict.get("dev/tpr_gap/gender") == pytest.approx(1.0)  # class b dropped
    too_strict = _report(rows, s_min=5)
    assert math.isnan(too_strict.get("dev/tpr_gap/gender"))
    assert too_strict.get("dev/n_groups_eff/gender") == 1  # M has 4 samples


def test_all_strata_invalid_gives_nan_aggregates() -> None:
    rows = [("F", "en", 0, 0), ("F", "en", 1, 0), ("M", "de", 1, 1), ("M", "de", 2, 2)]
    report = _report(rows)
    assert not math.isnan(report.get("dev/acc_gap/gender"))  # pooled over both languages
    for gap in GAP_METRICS:
        for agg in ("worst", "mean"):
            assert math.isnan(report.get(f"dev/{gap}/gender/{agg}:language")), (gap, agg)


def test_nan_never_becomes_zero() -> None:
    lone = _report([("F", "en", 0, 0), ("F", "en", 1, 1)])
    assert math.isnan(lone.get("dev/avg_gap/gender"))
    table = lone.table()
    assert table.loc[table["metric"] == "avg_gap", "value"].isna().all()
    assert json.loads(format_report(lone, "dev", fmt="json"))["dev/avg_gap/gender"] is None
    assert "nan" in next(line for line in format_report(lone).splitlines() if line.startswith("avg_gap"))
    restored = GroupReport.from_json(json.loads(json.dumps(lone.to_json(), allow_nan=False)))
    assert math.isnan(restored.get("dev/avg_gap/gender"))


def test_avg_gap_is_nan_when_a_component_is_nan() -> None:
    # s_min=3 and M holds one sample of each class: Q_Mc = 2 < 3 for every class, so mfpr is undefined.
    rows = [("F", "en", t, t) for t in (0, 1, 2, 0)] + [("M", "en", 0, 0), ("M", "en", 1, 2), ("M", "en", 2, 2)]
    report = _report(rows, s_min=3)
    assert math.isnan(report.get("dev/mfpr_gap/gender"))
    assert report.get("dev/acc_gap/gender") == pytest.approx(1 / 3)
    assert math.isnan(report.get("dev/avg_gap/gender"))


@pytest.mark.parametrize("missing", ["U", None, np.nan, "", "Unspecified", " U "])
def test_missing_attribute_is_excluded_and_counted(missing) -> None:
    y_true, y_pred, classes, groups = _random(10, p_missing=0.0)
    groups = groups.astype(object)
    groups.loc[:49, "gender"] = missing
    report = GroupReport.compute(y_true, y_pred, classes, groups)
    kept = GroupReport.compute(y_true[50:], y_pred[50:], classes, groups.iloc[50:])
    assert report.groups == ("F", "M")
    assert report.n_excluded == 50
    assert report.get("dev/n_excluded/gender") == 50
    per_language = groups.iloc[:50]["language"].value_counts()
    for language, count in per_language.items():
        assert report.get(f"dev/n_excluded/gender/language:{language}") == count
    assert report.get("dev/n") == len(y_true)
    assert report.get("dev/acc") == pytest.approx(accuracy_score(y_true, y_pred))
    for gap in GAP_METRICS:
        assert report.get(f"dev/{gap}/gender") == pytest.approx(kept.get(f"dev/{gap}/gender"))


def test_missing_stratum_counts_overall_but_in_no_stratum() -> None:
    rows = [("F", "en", 0, 0), ("M", "en", 1, 1), ("F", None, 0, 1), ("M", "", 1, 1)]
    report = _report(rows)
    assert report.strata == ("en",)
    assert report.get("dev/n") == 4 and report.get("dev/n/language:en") == 2
    assert report.get("dev/acc_gap/gender") == pytest.approx(0.5)
    assert report.get("dev/acc_gap/gender/language:en") == pytest.approx(0.0)


# --- the object ----------------------------------------------------------------------------------


def test_key_names_for_gender_by_language() -> None:
    rows = [("F", "en", 0, 0), ("M", "en", 1, 1), ("F", "de", 2, 2), ("M", "de", 0, 1), ("U", "de", 0, 0)]
    flat = _report(rows).flat("dev")
    partition = ["n", "acc", "weighted_f1", "macro_f1", "uar", "fpr", "n_undefined_f1"]
    suffixes = [""] + ["/gender:F", "/gender:M", "/language:de", "/language:en"]
    suffixes += [f"/gender:{g}/language:{s}" for g in "FM" for s in ("de", "en")]
    expected = {f"dev/{m}{s}" for m in partition for s in suffixes}
    for gap in GAP_METRICS:
        expected |= {f"dev/{gap}/gender{s}" for s in ("", "/language:de", "/language:en")}
        expected |= {f"dev/{gap}/gender/worst:language", f"dev/{gap}/gender/mean:language"}
    for count in ("n_excluded", "n_groups_eff"):
        expected |= {f"dev/{count}/gender{s}" for s in ("", "/language:de", "/language:en")}
    assert set(flat) == expected
    assert all(isinstance(v, float) for v in flat.values())


def test_views_read_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    y_true, y_pred, classes, groups = _random(11)
    report = GroupReport.compute(y_true, y_pred, classes, groups)

    def boom(*args, **kwargs):
        raise AssertionError("recomputed")

    for name in ("_utilities", "_gaps", "_classwise_gap", "_build_columns"):
        monkeypatch.setattr(report_module, name, boom)
    flat = report.flat("test")
    table = report.table()
    assert len(table) == len(flat)
    for key, value in flat.items():
        assert report.get(key) == pytest.approx(value, nan_ok=True)
        validate_metric_name(key)
    assert "tpr_gap" in format_report(report) and json.loads(format_report(report, fmt="json")) == pytest.approx(flat)
    report.to_json()


def test_table_columns_and_scopes() -> None:
    y_true, y_pred, classes, groups = _random(12)
    report = GroupReport.compute(y_true, y_pred, classes, groups)
    table = report.table()
    assert list(table.columns) == [
        "scope", "metric", "attr", "group", "stratum", "stratum_value", "value", "support", "n_classes", "n_strata",
    ]  # fmt: skip
    assert set(table["scope"]) == {"overall", "group", "stratum", "cell", "gap"}
    cell = table[(table["scope"] == "cell") & (table["metric"] == "acc")]
    assert cell["support"].sum() == (groups["gender"] != "U").sum()
    table.loc[:, "value"] = -1.0  # a copy: the report keeps its values
    assert report.get("test/acc") == pytest.approx(accuracy_score(y_true, y_pred))


def test_json_round_trip() -> None:
    y_true, y_pred, classes, groups = _random(13, n_groups=3)
    report = GroupReport.compute(y_true, y_pred, classes, groups, s_min=3, gap_op="range", class_agg="max")
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    restored = GroupReport.from_json(data)
    assert (restored.classes, restored.groups, restored.strata) == (report.classes, report.groups, report.strata)
    assert (restored.s_min, restored.gap_op, restored.class_agg) == (3, "range", "max")
    assert np.array_equal(restored.counts, report.counts)
    pd.testing.assert_frame_equal(restored.table(), report.table(), check_dtype=False)
    assert restored.flat("dev") == pytest.approx(report.flat("dev"), nan_ok=True)
    with pytest.raises(DataError, match="rows"):
        GroupReport.from_json({k: v for k, v in data.items() if k != "rows"})


def test_format_report_table() -> None:
    y_true, y_pred, classes, groups = _random(14)
    text = format_report(GroupReport.compute(y_true, y_pred, classes, groups), split="dev")
    lines = text.splitlines()
    assert lines[0].startswith("dev: 5 classes, attribute 'gender' (groups F, M;")
    assert any(line.startswith("gender:F/language:en") for line in lines)
    gap_header = next(line for line in lines if "pooled" in line)
    assert gap_header.split() == ["pooled", "de", "en", "ja", "worst", "mean"]
    assert any(line.startswith("avg_gap") for line in lines)
    with pytest.raises(ConfigError, match="'yaml'"):
        format_report(GroupReport.compute(y_true, y_pred, classes, groups), fmt="yaml")


# --- cell supports and the cells left out of gaps (§2.3, §2.6.5) ------------------------------------

# de/F empty; de/M one b; en/F (a, a, b); en/M one a; U and the missing language are in no cell.
SUPPORT_ROWS = [("F", "en", 0, 0), ("F", "en", 0, 1), ("F", "en", 1, 1), ("M", "en", 0, 0), ("M", "de", 1, 1),
                ("U", "de", 1, 0), ("F", None, 1, 1)]


def test_supports_by_hand() -> None:
    supports = _report(SUPPORT_ROWS, s_min=2).supports()
    assert list(supports.columns) == ["stratum_value", "group", "class", "positives", "negatives", "n"]
    got = {(s, g, c): (p, q, n) for s, g, c, p, q, n in supports.itertuples(index=False)}
    assert got == {
        ("de", "F", "a"): (0, 0, 0), ("de", "F", "b"): (0, 0, 0), ("de", "F", "c"): (0, 0, 0),
        ("de", "M", "a"): (0, 1, 1), ("de", "M", "b"): (1, 0, 1), ("de", "M", "c"): (0, 1, 1),
        ("en", "F", "a"): (2, 1, 3), ("en", "F", "b"): (1, 2, 3), ("en", "F", "c"): (0, 3, 3),
        ("en", "M", "a"): (1, 0, 1), ("en", "M", "b"): (0, 1, 1), ("en", "M", "c"): (0, 1, 1),
    }  # fmt: skip
    assert list(supports["stratum_value"].unique()) == ["de", "en"]  # the report's order: strata, groups, classes
    # Without strata a group's cell holds every sample of it, the one with a missing language too.
    pooled = _report(SUPPORT_ROWS, stratum=None).supports()
    assert pooled["stratum_value"].isna().all()
    assert pooled["positives"].tolist() == [2, 2, 0, 1, 1, 0]  # F: a a b b; M: a b


def test_thin_cells_are_the_cells_whose_tpr_is_undefined() -> None:
    report = _report(SUPPORT_ROWS, s_min=2)
    thin = report.thin_cells()
    assert len(thin) == 11 and (thin["positives"] < 2).all()
    assert ("en", "F", "a") not in set(zip(thin["stratum_value"], thin["group"], thin["class"], strict=True))
    # en: class a is defined for F only (M has 1 positive < 2), so no class has two defined groups in en.
    assert report.get("dev/tpr_gap/gender/language:en") != report.get("dev/tpr_gap/gender/language:en")  # NaN
    assert _report(SUPPORT_ROWS, s_min=1).thin_cells()["positives"].eq(0).all()


def test_format_thin_cells() -> None:
    from fairray.metrics import format_thin_cells

    report = _report(SUPPORT_ROWS, s_min=2)
    assert format_thin_cells(report, limit=3) == (
        "dev cells below s_min=2 (their TPR is undefined and left out of gaps): "
        "de/F/a (0), de/F/b (0), de/F/c (0), ... and 8 more"
    )
    assert format_thin_cells(report).endswith("en/M/a (1), en/M/b (0), ... and 1 more")  # 10 by default
    text = format_thin_cells(report, split="test", limit=11)
    assert text.startswith("test cells below s_min=2") and text.endswith("en/M/b (0), en/M/c (0)")
    assert text.count("(") == 1 + 11 and "\n" not in text
    rows = [("F", "en", 0, 0), ("F", "en", 1, 1), ("M", "en", 0, 0), ("M", "en", 1, 1)] * 2
    assert format_thin_cells(_report(rows, s_min=2)) == (
        "dev cells below s_min=2 (their TPR is undefined and left out of gaps): "
        "en/F/c (0), en/M/c (0)"
    )
    assert format_thin_cells(_report([r for r in rows if r[2] < 2] + [("F", "en", 2, 2), ("M", "en", 2, 2)] * 2,
                                     s_min=2)) is None
    with pytest.raises(ConfigError, match="limit"):
        format_thin_cells(report, limit=0)


def test_get_unknown_key() -> None:
    y_true, y_pred, classes, groups = _random(15)
    report = GroupReport.compute(y_true, y_pred, classes, groups)
    with pytest.raises(KeyError, match="language:fr"):
        report.get("dev/acc/language:fr")
    with pytest.raises(ValueError, match="malformed"):
        report.get("dev/acc/gender:F/language")


def test_compute_is_fast() -> None:
    y_true, y_pred, classes, groups = _random(16, n=500)
    GroupReport.compute(y_true, y_pred, classes, groups)
    start = time.perf_counter()
    for _ in range(20):
        GroupReport.compute(y_true, y_pred, classes, groups).flat("dev")
    assert (time.perf_counter() - start) / 20 < 0.05


# --- input checks and evaluate_frame -------------------------------------------------------------


def test_bad_inputs() -> None:
    y_true, y_pred, classes, groups = _random(17, n=20)
    with pytest.raises(DataError, match="integer class indices"):
        GroupReport.compute(y_true.astype(float), y_pred, classes, groups)
    with pytest.raises(DataError, match=r"outside 0\.\.4: \[7\]"):
        GroupReport.compute(np.r_[y_true[:-1], 7], y_pred, classes, groups)
    with pytest.raises(DataError, match="length mismatch"):
        GroupReport.compute(y_true, y_pred[:-1], classes, groups)
    with pytest.raises(DataError, match="attribute column 'race' not found"):
        GroupReport.compute(y_true, y_pred, classes, groups, attribute="race")
    bad = groups.assign(gender="a/b")
    with pytest.raises(DataError, match="a/b"):
        GroupReport.compute(y_true, y_pred, classes, bad)
    with pytest.raises(DataError, match="worst"):
        GroupReport.compute(y_true, y_pred, classes, groups.assign(language="worst"))
    with pytest.raises(ConfigError, match="gap_op must be one of sum_abs_dev, range, mad; got 'l2'"):
        GroupReport.compute(y_true, y_pred, classes, groups, gap_op="l2")
    with pytest.raises(ConfigError, match="class_agg"):
        GroupReport.compute(y_true, y_pred, classes, groups, class_agg="median")
    with pytest.raises(ConfigError, match="s_min"):
        GroupReport.compute(y_true, y_pred, classes, groups, s_min=0)


def _predictions(classes=("sad", "ang", "hap")) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "uid": ["u1", "u2", "u3", "u4"],
            "y_true": ["sad", "ang", "hap", "sad"],
            "y_pred": ["sad", "hap", "hap", "ang"],
            "gender": ["F", "M", "F", "M"],
            "language": ["en", "en", "de", "de"],
        }
        | {f"p_{c}": [1 / len(classes)] * 4 for c in classes}
    )


def test_evaluate_frame_takes_classes_from_probability_columns_in_order() -> None:
    report = evaluate_frame(_predictions(), group="gender", stratum="language")
    assert report.classes == ("sad", "ang", "hap")
    assert report.counts[..., 0, 0].sum() == 1  # sad -> sad
    assert report.get("test/acc") == pytest.approx(0.5)


def test_evaluate_frame_class_sources() -> None:
    frame = _predictions().drop(columns=["p_sad", "p_ang", "p_hap"])
    assert evaluate_frame(frame, group="gender", stratum=None).classes == ("ang", "hap", "sad")
    given = evaluate_frame(frame, group="gender", stratum="language", classes=["hap", "sad", "ang", "neu"])
    assert given.classes == ("hap", "sad", "ang", "neu")
    assert given.get("dev/n_undefined_f1") == 1  # neu never appears
    with pytest.raises(DataError, match=r"labels \['hap'\] .* not among the classes \['sad', 'ang'\]"):
        evaluate_frame(frame, group="gender", stratum="language", classes=["sad", "ang"])


def test_evaluate_frame_missing_columns() -> None:
    frame = _predictions().drop(columns=["y_pred"])
    with pytest.raises(DataError, match=r"lacks column\(s\) \['y_pred', 'race'\]; found columns \['uid', 'y_true'"):
        evaluate_frame(frame, group="race", stratum="language")
