"""Multi-label GroupReport (METHODS §2.1–2.4, the ES/IDI convention): sklearn and fairlearn cross-checks,
hand-computed gaps for two and three groups, decisions and targets, and the real CREMA-D fold-1 test set."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
from sklearn.metrics import f1_score, hamming_loss, multilabel_confusion_matrix, recall_score

from fairray.errors import ConfigError, DataError
from fairray.metrics import (
    COUNT_METRICS,
    GroupReport,
    decide,
    format_report,
    multi_hot,
    task_metrics,
    validate_metric_name,
)
from fairray.metrics import _report as report_module

CLASSES = ["ang", "dis", "fea", "hap", "neu"]
MULTI_GAPS = ("tpr_gap", "fpr_gap", "dp_gap", "tpr_gap_range", "fpr_gap_range", "dp_gap_range",
              "uar_gap", "mfpr_gap", "weighted_f1_gap")
CLASSWISE = (("tpr_gap", true_positive_rate), ("fpr_gap", false_positive_rate), ("dp_gap", selection_rate))


def _random(seed: int, n: int = 600, n_groups: int = 2, n_classes: int = 5, p_missing: float = 0.1):
    """Multi-hot targets (~30% positives), decisions flipping 20% of the entries, groups F/M(/X) with some U."""
    rng = np.random.default_rng(seed)
    y_true = (rng.random((n, n_classes)) < 0.3).astype(np.int64)
    y_pred = np.where(rng.random((n, n_classes)) < 0.2, 1 - y_true, y_true)
    names = ["F", "M", "X"][:n_groups]
    gender = rng.choice(names + ["U"], n, p=[(1 - p_missing) / n_groups] * n_groups + [p_missing])
    groups = pd.DataFrame({"gender": gender, "language": rng.choice(["en", "de", "ja"], n)})
    return y_true, y_pred, CLASSES[:n_classes], groups


def _sk_utilities(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """The §2.2 multi-label utilities through scikit-learn on the multi-hot arrays (the oracle)."""
    mcm = multilabel_confusion_matrix(y_true, y_pred)  # [C, 2, 2]: tn fp / fn tp
    fp, neg, tp, fn = mcm[:, 0, 1], mcm[:, 0].sum(1), mcm[:, 1, 1], mcm[:, 1, 0]
    has_pos = y_true.sum(0) > 0
    recall = recall_score(y_true, y_pred, average=None, zero_division=0)
    return {
        "hamming_acc": 1 - hamming_loss(y_true, y_pred),
        "macro_f1": f1_score(y_true, y_pred, average="macro", zero_division=0),
        "weighted_f1": f1_score(y_true, y_pred, average="weighted", zero_division=0),
        "uar": float(recall[has_pos].mean()),
        "fpr": float(np.mean(fp[neg > 0] / neg[neg > 0])),
        "n": float(len(y_true)),
        "n_undefined_f1": float((2 * tp + fp + fn == 0).sum()),
    }


def _report(rows, classes=("a", "b", "c"), **kwargs) -> GroupReport:
    """``rows`` = (group, stratum, y_true, y_pred) with multi-hot strings such as ``"110"``."""
    frame = pd.DataFrame(rows, columns=["gender", "language", "t", "p"])
    y_true = np.array([[int(ch) for ch in t] for t in frame["t"]]).reshape(len(frame), len(classes))
    y_pred = np.array([[int(ch) for ch in p] for p in frame["p"]]).reshape(len(frame), len(classes))
    return GroupReport.compute_multilabel(y_true, y_pred, list(classes), frame, **kwargs)


def _gap_row(report: GroupReport, metric: str, stratum_value: str | None = None) -> pd.Series:
    table = report.table()
    value = table["stratum_value"].isna() if stratum_value is None else table["stratum_value"] == stratum_value
    return table[(table["metric"] == metric) & value].iloc[0]


# --- cross-checks ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n_groups", [2, 3])
def test_utilities_match_sklearn_on_every_subset(seed: int, n_groups: int) -> None:
    y_true, y_pred, classes, groups = _random(seed, n_groups=n_groups)
    report = GroupReport.compute_multilabel(y_true, y_pred, classes, groups)
    assert report.task == "multi" and report.groups == ("F", "M", "X")[:n_groups]
    gender, language = groups["gender"].to_numpy(), groups["language"].to_numpy()
    subsets = {"": np.ones(len(y_true), bool)}
    subsets |= {f"/gender:{g}": gender == g for g in report.groups}
    subsets |= {f"/language:{s}": language == s for s in report.strata}
    subsets |= {
        f"/gender:{g}/language:{s}": (gender == g) & (language == s) for g in report.groups for s in report.strata
    }
    for suffix, mask in subsets.items():
        for metric, value in _sk_utilities(y_true[mask], y_pred[mask]).items():
            assert report.get(f"dev/{metric}{suffix}") == pytest.approx(value, abs=1e-12), (metric, suffix)
    assert report.get("dev/hamming_acc") == pytest.approx(np.mean(y_true == y_pred))


def test_sklearn_macro_f1_with_an_undefined_class() -> None:
    # Class c is never true nor predicted: F1_c = 0 (zero_division=0) and counts in n_undefined_f1.
    y_true, y_pred, _, groups = _random(2, n_classes=3)
    y_true[:, 2] = y_pred[:, 2] = 0
    report = GroupReport.compute_multilabel(y_true, y_pred, ["a", "b", "c"], groups)
    assert report.get("dev/macro_f1") == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert report.get("dev/n_undefined_f1") == 1
    assert report.get("dev/weighted_f1") == pytest.approx(f1_score(y_true, y_pred, average="weighted", zero_division=0))
    assert report.get("dev/uar") == pytest.approx(recall_score(y_true[:, :2], y_pred[:, :2], average="macro"))


def _fairlearn_classwise(rate, y_true, y_pred, gender, language, gap_op):
    """Per class column: the rate per group through fairlearn, the gap per class, RMS over classes."""
    gaps = []
    for c in range(y_true.shape[1]):
        frame = MetricFrame(
            metrics=rate, y_true=y_true[:, c], y_pred=y_pred[:, c], sensitive_features=gender, control_features=language
        )
        if gap_op == "range":
            gaps.append(frame.difference())
        else:
            by_group = frame.by_group
            overall = frame.overall.reindex(by_group.index.get_level_values(0)).to_numpy()
            gaps.append((by_group - overall).abs().groupby(level=0).sum())
    return np.sqrt((pd.concat(gaps, axis=1) ** 2).mean(axis=1))


@pytest.mark.parametrize(
    ("seed", "n_groups", "gap_op"), [(3, 2, "sum_abs_dev"), (4, 3, "sum_abs_dev"), (3, 3, "range"), (4, 2, "range")]
)
def test_classwise_gaps_match_fairlearn_per_class(seed: int, n_groups: int, gap_op: str) -> None:
    y_true, y_pred, classes, groups = _random(seed, n=900, n_groups=n_groups)
    report = GroupReport.compute_multilabel(y_true, y_pred, classes, groups, gap_op=gap_op)
    known = (groups["gender"] != "U").to_numpy()
    gender = groups.loc[known, "gender"]
    for gap, rate in CLASSWISE:
        for language_column in (pd.Series("all", index=gender.index, name="pool"), groups.loc[known, "language"]):
            expected = _fairlearn_classwise(rate, y_true[known], y_pred[known], gender, language_column, gap_op)
            for stratum, value in expected.items():
                key = f"dev/{gap}/gender" if stratum == "all" else f"dev/{gap}/gender/language:{stratum}"
                assert report.get(key) == pytest.approx(value), key


@pytest.mark.parametrize("n_groups", [2, 3])
def test_per_group_rates_of_one_class_column_match_fairlearn(n_groups: int) -> None:
    # The counts behind the gaps: TP/(TP+FN) and (TP+FP)/n of class column 1, per group, from report.counts.
    y_true, y_pred, classes, groups = _random(5, n_groups=n_groups)
    report = GroupReport.compute_multilabel(y_true, y_pred, classes, groups)
    known = (groups["gender"] != "U").to_numpy()
    frame = MetricFrame(
        metrics={"tpr": true_positive_rate, "ppr": selection_rate, "fpr": false_positive_rate},
        y_true=y_true[known, 1],
        y_pred=y_pred[known, 1],
        sensitive_features=groups.loc[known, "gender"],
    )
    for i, group in enumerate(report.groups):
        table = report.counts[i, :, 1].sum(0)  # [2, 2] of class 1 in group i, all strata
        (tn, fp), (fn, tp) = table
        assert tp / (tp + fn) == pytest.approx(frame.by_group.loc[group, "tpr"])
        assert (tp + fp) / table.sum() == pytest.approx(frame.by_group.loc[group, "ppr"])
        assert fp / (fp + tn) == pytest.approx(frame.by_group.loc[group, "fpr"])


def test_two_group_sum_abs_dev_equals_range() -> None:
    y_true, y_pred, classes, groups = _random(6)
    a = GroupReport.compute_multilabel(y_true, y_pred, classes, groups, gap_op="sum_abs_dev").flat("dev")
    b = GroupReport.compute_multilabel(y_true, y_pred, classes, groups, gap_op="range").flat("dev")
    assert list(a) == list(b)
    for key in a:
        assert a[key] == pytest.approx(b[key], nan_ok=True), key


def test_one_hot_rows_give_the_single_label_numbers() -> None:
    # One-hot targets and decisions are single-label data: the per-class binary counts are the one-vs-rest
    # counts of the confusion matrices, so every shared metric is exactly the single-label value.
    rng = np.random.default_rng(7)
    y_true, y_pred = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    groups = pd.DataFrame({"gender": rng.choice(["F", "M", "X", "U"], 500), "language": rng.choice(["en", "de"], 500)})
    eye = np.eye(4, dtype=np.int64)
    single = GroupReport.compute(y_true, y_pred, list("abcd"), groups, s_min=2)
    multi = GroupReport.compute_multilabel(eye[y_true], eye[y_pred], list("abcd"), groups, s_min=2)
    np.testing.assert_array_equal(multi.counts, report_module._one_vs_rest(single.counts))
    single_flat, multi_flat = single.flat("dev"), multi.flat("dev")
    assert set(multi_flat) - set(single_flat) == {k for k in multi_flat if k.startswith("dev/hamming_acc")}
    assert {k.split("/")[1] for k in set(single_flat) - set(multi_flat)} == {"acc", "acc_gap", "avg_gap"}
    for key, value in multi_flat.items():
        if key.startswith("dev/hamming_acc"):
            acc = single_flat[key.replace("hamming_acc", "acc")]
            assert value == pytest.approx(1 - 2 * (1 - acc) / 4, nan_ok=True), key
        else:
            assert value == pytest.approx(single_flat[key], rel=1e-12, abs=1e-12, nan_ok=True), key


# --- hand-computed cases -------------------------------------------------------------------------

# Classes a, b, c. F: TPR (1, .5, 0), PPR (2/4, 1/4, 0); M: TPR (0, 1, 1), PPR (1/4, 2/4, 1/4), FPR_a 1/3.
TWO_GROUPS = [
    ("F", "en", "100", "100"),
    ("F", "en", "110", "100"),
    ("F", "en", "010", "010"),
    ("F", "en", "001", "000"),
    ("M", "en", "100", "000"),
    ("M", "en", "010", "010"),
    ("M", "en", "011", "011"),
    ("M", "en", "000", "100"),
]


@pytest.mark.parametrize(
    ("class_agg", "tpr", "dp"),
    [("rms", math.sqrt(2.25 / 3), 0.25), ("mean", 2.5 / 3, 0.25), ("max", 1.0, 0.25)],
)
@pytest.mark.parametrize("gap_op", ["sum_abs_dev", "range"])
def test_two_groups_by_hand(class_agg: str, tpr: float, dp: float, gap_op: str) -> None:
    report = _report(TWO_GROUPS, class_agg=class_agg, gap_op=gap_op)
    # TPR gaps per class (1, .5, 1); PPR gaps (.25, .25, .25); FPR: only class a differs (0 vs 1/3).
    assert report.get("dev/tpr_gap/gender") == pytest.approx(tpr)
    assert report.get("dev/dp_gap/gender") == pytest.approx(dp)
    fpr = {"rms": math.sqrt((1 / 9) / 3), "mean": 1 / 9, "max": 1 / 3}[class_agg]
    assert report.get("dev/fpr_gap/gender") == pytest.approx(fpr)
    assert report.get("dev/tpr_gap/gender/language:en") == pytest.approx(tpr)
    assert report.get("dev/tpr_gap/gender/worst:language") == pytest.approx(tpr)
    assert _gap_row(report, "tpr_gap")["n_classes"] == 3
    # 10 of 12 entries agree in each group.
    for key in ("dev/hamming_acc", "dev/hamming_acc/gender:F", "dev/hamming_acc/gender:M"):
        assert report.get(key) == pytest.approx(10 / 12), key
    assert report.get("dev/uar/gender:F") == pytest.approx(0.5)  # (1 + .5 + 0) / 3
    assert report.get("dev/uar/gender:M") == pytest.approx(2 / 3)  # (0 + 1 + 1) / 3
    assert report.get("dev/uar_gap/gender") == pytest.approx(1 / 6)
    # F: F1 (1, 2/3, 0) on positives (2, 2, 1); M: F1 (0, 1, 1) on (1, 2, 1).
    assert report.get("dev/macro_f1/gender:F") == pytest.approx(5 / 9)
    assert report.get("dev/weighted_f1/gender:F") == pytest.approx((2 + 4 / 3) / 5)
    assert report.get("dev/weighted_f1/gender:M") == pytest.approx(3 / 4)
    assert report.get("dev/weighted_f1_gap/gender") == pytest.approx(3 / 4 - 2 / 3)
    assert report.get("dev/fpr/gender:M") == pytest.approx(1 / 9)  # FPR (1/3, 0, 0)
    assert report.get("dev/mfpr_gap/gender") == pytest.approx(1 / 9)


# Classes x, y; one stratum s1 with groups A, B, C, and s2 holding only A.
# s1: TPR_x (1, 1, 0) on (1, 2, 1) positives, TPR_y (1, -, .5) on (1, 0, 2): B has no y positive.
#     PPR_x (1, 1, 0), PPR_y (.5, 0, .25) on (2, 2, 4) samples; FPR_x (1, -, 0) on (1, 0, 3), FPR_y all 0.
THREE_GROUPS = [
    ("A", "s1", "10", "10"),
    ("A", "s1", "01", "11"),
    ("B", "s1", "10", "10"),
    ("B", "s1", "10", "10"),
    ("C", "s1", "10", "00"),
    ("C", "s1", "01", "01"),
    ("C", "s1", "01", "00"),
    ("C", "s1", "00", "00"),
    ("A", "s2", "10", "00"),
    ("A", "s2", "01", "01"),
]


@pytest.mark.parametrize(
    ("gap_op", "tpr", "dp", "fpr"),
    [
        # x: pooled TPR 3/4 -> .25 + .25 + .75 = 1.25; y: A, C only, pooled 2/3 -> 1/3 + 1/6 = .5.
        # PPR x: pooled .5 -> 1.5; y: pooled .25 -> .5. FPR x: A, C, pooled 1/4 -> 1; y: 0.
        ("sum_abs_dev", math.sqrt((1.25**2 + 0.5**2) / 2), math.sqrt((1.5**2 + 0.5**2) / 2), math.sqrt(0.5)),
        ("range", math.sqrt((1 + 0.5**2) / 2), math.sqrt((1 + 0.5**2) / 2), math.sqrt(0.5)),
        # mad: x mean 2/3 -> (1/3 + 1/3 + 2/3)/3 = 4/9; y mean .75 -> .25; PPR x 4/9, y (1/4 + 1/4 + 0)/3 = 1/6.
        (
            "mad",
            math.sqrt(((4 / 9) ** 2 + 0.25**2) / 2),
            math.sqrt(((4 / 9) ** 2 + (1 / 6) ** 2) / 2),
            math.sqrt(0.125),
        ),
    ],
)
def test_three_groups_by_hand(gap_op: str, tpr: float, dp: float, fpr: float) -> None:
    report = _report(THREE_GROUPS, classes=("x", "y"), gap_op=gap_op)
    assert report.groups == ("A", "B", "C") and report.strata == ("s1", "s2")
    assert report.get("dev/tpr_gap/gender/language:s1") == pytest.approx(tpr)
    assert report.get("dev/dp_gap/gender/language:s1") == pytest.approx(dp)
    assert report.get("dev/fpr_gap/gender/language:s1") == pytest.approx(fpr)
    assert _gap_row(report, "tpr_gap", "s1")["n_classes"] == 2  # y kept with two defined groups
    assert report.get("dev/n_groups_eff/gender/language:s1") == 3
    # s2 holds one group only: its gaps are NaN and worst/mean are those of s1 alone.
    assert report.get("dev/n_groups_eff/gender/language:s2") == 1
    for gap in task_metrics("multi", "gap"):
        assert math.isnan(report.get(f"dev/{gap}/gender/language:s2")), gap
        s1 = report.get(f"dev/{gap}/gender/language:s1")
        assert report.get(f"dev/{gap}/gender/worst:language") == pytest.approx(s1, nan_ok=True), gap
        assert report.get(f"dev/{gap}/gender/mean:language") == pytest.approx(s1, nan_ok=True), gap
        assert _gap_row(report, gap, "worst")["n_strata"] == 1
    # Pooled over both strata A has x: 2 positives, TPR 1/2 -> pooled TPR_x 3/5, gap |.5-.6| + |1-.6| + |0-.6|.
    if gap_op == "sum_abs_dev":
        y = abs(1 - 3 / 4) + abs(0.5 - 3 / 4)  # A: 2 of 2 y positives now, C: 1 of 2; pooled 3/4
        assert report.get("dev/tpr_gap/gender") == pytest.approx(math.sqrt((1.1**2 + y**2) / 2))


def test_class_defined_in_fewer_than_two_groups_is_dropped() -> None:
    # s_min=2 on s1 of THREE_GROUPS: TPR_x is defined for B only, TPR_y for C only -> no class is left.
    report = _report(THREE_GROUPS[:8], classes=("x", "y"), stratum=None, s_min=2)
    assert math.isnan(report.get("dev/tpr_gap/gender"))
    assert _gap_row(report, "tpr_gap")["n_classes"] == 0
    # PPR needs n_g >= 2 only: all three groups take part.
    assert report.get("dev/dp_gap/gender") == pytest.approx(math.sqrt((1.5**2 + 0.5**2) / 2))
    assert _gap_row(report, "dp_gap")["n_classes"] == 2


def test_fewer_than_two_groups_gives_nan() -> None:
    report = _report([("F", "en", "110", "100"), ("F", "de", "011", "010"), ("U", "de", "001", "001")])
    assert report.n_excluded == 1 and report.get("dev/n_excluded/gender") == 1
    assert report.get("dev/n") == 3 and report.get("dev/hamming_acc") == pytest.approx(7 / 9)
    for key, value in report.flat("dev").items():
        if "_gap/" in key:
            assert math.isnan(value), key
    empty = _report([])
    assert empty.get("dev/n") == 0 and math.isnan(empty.get("dev/hamming_acc"))


def test_weighted_f1_without_any_positive_is_nan() -> None:
    report = _report([("F", "en", "000", "100"), ("M", "en", "100", "100")])
    assert math.isnan(report.get("dev/weighted_f1/gender:F"))  # no positive: no weights
    assert report.get("dev/macro_f1/gender:F") == 0.0  # F1 = 0 for a (FP), undefined (-> 0) for b, c
    assert report.get("dev/n_undefined_f1/gender:F") == 2
    assert math.isnan(report.get("dev/uar/gender:F"))


# --- the object ----------------------------------------------------------------------------------


def test_key_names_and_absent_metrics() -> None:
    report = _report(TWO_GROUPS + [("F", "de", "001", "001"), ("M", "de", "100", "010")])
    flat = report.flat("dev")
    partition = ["n", "hamming_acc", "weighted_f1", "macro_f1", "uar", "fpr", "n_undefined_f1"]
    suffixes = ["", "/gender:F", "/gender:M", "/language:de", "/language:en"]
    suffixes += [f"/gender:{g}/language:{s}" for g in "FM" for s in ("de", "en")]
    expected = {f"dev/{m}{s}" for m in partition for s in suffixes}
    for gap in MULTI_GAPS:
        expected |= {f"dev/{gap}/gender{s}" for s in ("", "/language:de", "/language:en")}
        expected |= {f"dev/{gap}/gender/worst:language", f"dev/{gap}/gender/mean:language"}
    for count in ("n_excluded", "n_groups_eff"):
        expected |= {f"dev/{count}/gender{s}" for s in ("", "/language:de", "/language:en")}
    assert set(flat) == expected
    assert report.metrics == task_metrics("multi") and set(report.metrics) >= set(MULTI_GAPS)
    for key in flat:
        validate_metric_name(key)
    with pytest.raises(KeyError, match=r"multi-label report has no 'acc' \(it has 'hamming_acc'\)"):
        report.get("dev/acc")
    with pytest.raises(KeyError, match="no 'avg_gap'"):
        report.get("dev/avg_gap/gender")
    single = GroupReport.compute(np.array([0, 1]), np.array([0, 0]), ["a", "b"], pd.DataFrame({"gender": ["F", "M"]}),
                                 stratum=None)  # fmt: skip
    with pytest.raises(KeyError, match=r"single-label report has no 'hamming_acc' \(it has 'acc'\)"):
        single.get("dev/hamming_acc")


def test_json_round_trip_and_from_counts() -> None:
    y_true, y_pred, classes, groups = _random(8, n_groups=3)
    report = GroupReport.compute_multilabel(y_true, y_pred, classes, groups, s_min=3, gap_op="range", class_agg="max")
    assert report.counts.shape == (4, 4, 5, 2, 2)
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert data["task"] == "multi"
    restored = GroupReport.from_json(data)
    assert restored.task == "multi" and restored.n_excluded == report.n_excluded == (groups["gender"] == "U").sum()
    assert (restored.s_min, restored.gap_op, restored.class_agg) == (3, "range", "max")
    np.testing.assert_array_equal(restored.counts, report.counts)
    pd.testing.assert_frame_equal(restored.table(), report.table(), check_dtype=False)
    assert restored.flat("dev") == pytest.approx(report.flat("dev"), nan_ok=True)
    args = (report.counts, classes, "gender", "language", report.groups, report.strata)
    rebuilt = GroupReport.from_counts(*args, s_min=3, gap_op="range", class_agg="max")  # task read from ndim
    assert rebuilt.task == "multi"
    pd.testing.assert_frame_equal(rebuilt.table(), report.table())
    with pytest.raises(DataError, match=r"single-label counts must have shape \(4, 4, 5, 5\)"):
        GroupReport.from_counts(*args, task="single")
    bad = report.counts.copy()
    bad[0, 0, 1, 0, 0] += 1
    with pytest.raises(DataError, match="sum to the cell's samples"):
        GroupReport.from_counts(bad, *args[1:])
    with pytest.raises(ConfigError, match="task must be one of single, multi"):
        GroupReport.from_counts(*args, task="multilabel")
    old = GroupReport.compute(y_true[:, 0], y_pred[:, 1], ["a", "b"], groups).to_json()
    del old["task"]  # JSON written before the task field reads as single-label
    assert GroupReport.from_json(old).task == "single"
    with pytest.raises(DataError, match="task 'x'"):
        GroupReport.from_json(data | {"task": "x"})


def test_format_report_and_table() -> None:
    y_true, y_pred, classes, groups = _random(9)
    report = GroupReport.compute_multilabel(y_true, y_pred, classes, groups)
    lines = format_report(report, split="test").splitlines()
    assert lines[0].startswith("test: 5 classes (multi-label), attribute 'gender' (groups F, M;")
    header = lines[lines.index("utility and support") + 1].split()
    assert header == ["n", "hamming_acc", "weighted_f1", "macro_f1", "uar", "fpr", "n_undefined_f1"]
    gap_lines = lines[next(i for i, line in enumerate(lines) if line.startswith("gaps between")) + 2 :]
    assert [line.split()[0] for line in gap_lines] == [*MULTI_GAPS, *COUNT_METRICS[2:]]
    flat = json.loads(format_report(report, "test", fmt="json"))
    assert flat == pytest.approx(report.flat("test"))
    table = report.table()
    assert set(table["scope"]) == {"overall", "group", "stratum", "cell", "gap"}
    assert not table["metric"].isin(["acc", "acc_gap", "avg_gap"]).any()
    cell = table[(table["scope"] == "cell") & (table["metric"] == "hamming_acc")]
    assert cell["support"].sum() == (groups["gender"] != "U").sum()
    assert len(table) == len(report.flat("test"))


def test_bad_inputs() -> None:
    y_true, y_pred, classes, groups = _random(10, n=20)
    with pytest.raises(DataError, match=r"shape \[N, 5\]; got shape \(20,\)"):
        GroupReport.compute_multilabel(y_true[:, 0], y_pred, classes, groups)
    with pytest.raises(DataError, match=r"shape \[N, 5\]; got shape \(20, 4\)"):
        GroupReport.compute_multilabel(y_true, y_pred[:, :4], classes, groups)
    with pytest.raises(DataError, match=r"only 0 and 1 .* \[0\.3\]"):
        GroupReport.compute_multilabel(np.where(y_true == 1, 0.3, 0.0), y_pred, classes, groups)
    with pytest.raises(DataError, match="length mismatch"):
        GroupReport.compute_multilabel(y_true, y_pred[:-1], classes, groups)
    with pytest.raises(DataError, match="at least two classes"):
        GroupReport.compute_multilabel(y_true[:, :1], y_pred[:, :1], ["a"], groups)
    with pytest.raises(ConfigError, match="gap_op"):
        GroupReport.compute_multilabel(y_true, y_pred, classes, groups, gap_op="l2")
    as_bool = GroupReport.compute_multilabel(y_true.astype(bool), y_pred.astype(float), classes, groups)
    assert as_bool.flat("dev") == pytest.approx(
        GroupReport.compute_multilabel(y_true, y_pred, classes, groups).flat("dev"), nan_ok=True
    )


def test_compute_multilabel_is_fast() -> None:
    y_true, y_pred, classes, groups = _random(11, n=1500, n_classes=6)
    GroupReport.compute_multilabel(y_true, y_pred, classes + ["sad"], groups)
    start = time.perf_counter()
    for _ in range(20):
        GroupReport.compute_multilabel(y_true, y_pred, classes + ["sad"], groups).flat("dev")
    assert (time.perf_counter() - start) / 20 < 0.05


# --- decisions and targets -----------------------------------------------------------------------


def test_decide_single_is_argmax() -> None:
    prob = np.array([[0.2, 0.5, 0.3], [0.4, 0.4, 0.2], [0.1, 0.1, 0.8]])
    np.testing.assert_array_equal(decide(prob, "single"), [1, 0, 2])
    np.testing.assert_array_equal(decide(prob, "single", fallback_argmax=True), [1, 0, 2])
    assert decide(prob[0], "single") == 1


def test_decide_multi_threshold_is_strict() -> None:
    third = 1 / 3
    prob = np.array([[0.5, 0.3, 0.2], [third, third, third], [0.34, 0.33, 0.33], [0.4, 0.4, 0.2]])
    np.testing.assert_array_equal(decide(prob, "multi"), [[1, 0, 0], [0, 0, 0], [1, 0, 0], [1, 1, 0]])
    forced = decide(prob, "multi", fallback_argmax=True)
    np.testing.assert_array_equal(forced, [[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0]])  # only the empty row changes
    assert forced.dtype == np.int64


def test_decide_multi_on_a_uniform_softmax_is_all_negative_in_float32_and_float64() -> None:
    import torch

    for dtype in (torch.float32, torch.float64):
        prob = torch.softmax(torch.zeros(2, 6, dtype=dtype), dim=1).numpy()
        assert (prob == prob.dtype.type(1) / prob.dtype.type(6)).all()
        assert decide(prob, "multi").sum() == 0, dtype
        np.testing.assert_array_equal(decide(prob, "multi", fallback_argmax=True), [[1, 0, 0, 0, 0, 0]] * 2)
        nudged = prob.copy()
        nudged[:, 2] = np.nextafter(nudged[:, 2], nudged.dtype.type(1))
        np.testing.assert_array_equal(decide(nudged, "multi")[:, 2], [1, 1])


def test_multi_hot_is_strict_at_one_over_c() -> None:
    votes = np.array([[1, 1, 1, 1, 1, 1], [2, 0, 0, 0, 8, 0], [1, 0, 0, 0, 9, 0], [4, 3, 0, 0, 3, 0]])
    soft = votes / votes.sum(1, keepdims=True)
    expected = [[0] * 6, [1, 0, 0, 0, 1, 0], [0, 0, 0, 0, 1, 0], [1, 1, 0, 0, 1, 0]]
    np.testing.assert_array_equal(multi_hot(soft), expected)  # 1/6 exactly is not positive; 2 of 10 is
    np.testing.assert_array_equal(multi_hot(soft.astype(np.float32)), expected)
    np.testing.assert_array_equal(multi_hot(soft), decide(soft, "multi"))
    np.testing.assert_array_equal(multi_hot([0.5, 0.5, 0.0]), [1, 1, 0])


def test_decision_input_checks() -> None:
    with pytest.raises(ConfigError, match="task must be one of single, multi; got 'multilabel'"):
        decide([[0.5, 0.5]], "multilabel")
    with pytest.raises(DataError, match="at least two classes"):
        decide([[1.0]], "multi")
    with pytest.raises(DataError, match="non-finite"):
        multi_hot([[np.nan, 1.0]])
    with pytest.raises(DataError, match="numeric"):
        multi_hot([[True, False]])


# --- real data: CREMA-D, EMO-SUPERB fold 1 -------------------------------------------------------


@pytest.fixture(scope="module")
def fold1(corpora):
    from fairray.data.corpora.cremad import CLASSES as CREMA_CLASSES
    from fairray.data.corpora.cremad import CremaD, load_emo_superb_fold

    root = corpora / "crema-d"
    if not (root / "emo-superb" / "labels_consensus_1.csv").is_file() or not (root / "meta").is_dir():
        pytest.skip(f"no CREMA-D EMO-SUPERB folds under {root}")
    fold = load_emo_superb_fold(root / "emo-superb", 1)
    demographics = CremaD(metadata_only=True).load(root)[["clip", "race", "age_group"]]
    fold = fold.merge(demographics, on="clip", how="left", validate="one_to_one")
    return fold, list(CREMA_CLASSES)


@pytest.mark.corpora
def test_multi_hot_reproduces_the_fold_targets(fold1) -> None:
    fold, classes = fold1
    soft = fold[[f"soft_{c}" for c in classes]].to_numpy()
    np.testing.assert_array_equal(multi_hot(soft), fold[[f"multi_{c}" for c in classes]].to_numpy())


@pytest.mark.corpora
@pytest.mark.parametrize(
    ("attribute", "groups"), [("gender", ("F", "M")), ("age_group", ("Elderly", "Middle", "Young"))]
)
def test_train_prior_predictor_on_fold1_test(fold1, attribute: str, groups: tuple[str, ...]) -> None:
    fold, classes = fold1
    train, test = fold[fold["split"] == "train"], fold[fold["split"] == "test"].reset_index(drop=True)
    prior = train[[f"soft_{c}" for c in classes]].to_numpy().mean(0)
    constant = decide(prior, "multi", fallback_argmax=True)
    assert constant.tolist() == [0, 0, 0, 0, 1, 0]  # the train prior is above 1/6 for neutral only
    y_true = test[[f"multi_{c}" for c in classes]].to_numpy()
    y_pred = np.tile(constant, (len(test), 1))
    report = GroupReport.compute_multilabel(y_true, y_pred, classes, test, attribute, stratum=None)
    assert len(test) == 1463 and report.groups == groups and report.n_excluded == 0
    assert report.get(f"test/n_groups_eff/{attribute}") == len(groups)
    # A constant decision has the same PPR (1 or 0) in every group; TPR and FPR are 1 or 0 per class as well.
    for gap in ("dp_gap", "tpr_gap", "fpr_gap"):
        assert report.get(f"test/{gap}/{attribute}") == 0.0, gap
    assert report.get("test/hamming_acc") == pytest.approx(np.mean(y_true == y_pred))
    for group in groups:
        mask = (test[attribute] == group).to_numpy()
        assert report.get(f"test/hamming_acc/{attribute}:{group}") == pytest.approx(
            np.mean(y_true[mask] == y_pred[mask])
        )
        assert report.get(f"test/macro_f1/{attribute}:{group}") == pytest.approx(
            f1_score(y_true[mask], y_pred[mask], average="macro", zero_division=0)
        )
        # neutral is the only predicted class: uar = 1/|classes with positives|, F1_neu = 2P/(P + n).
        positives = y_true[mask].sum(0)
        assert report.get(f"test/uar/{attribute}:{group}") == pytest.approx(1 / (positives > 0).sum())
        p_neu = positives[classes.index("neutral")]
        assert report.get(f"test/weighted_f1/{attribute}:{group}") == pytest.approx(
            positives[classes.index("neutral")] / positives.sum() * 2 * p_neu / (p_neu + mask.sum())
        )
    assert report.get("test/n") == 1463 and report.get("test/n_undefined_f1") == 0


@pytest.mark.corpora
def test_race_groups_of_fold1_test_and_a_fairlearn_cross_check(fold1) -> None:
    # Fold 1's test set holds no Asian speaker (IDI Table A4): the race gaps run over the two groups present.
    fold, classes = fold1
    test = fold[fold["split"] == "test"].reset_index(drop=True)
    y_true = test[[f"multi_{c}" for c in classes]].to_numpy()
    rng = np.random.default_rng(0)
    soft = test[[f"soft_{c}" for c in classes]].to_numpy()
    y_pred = decide(soft[rng.permutation(len(test))], "multi")  # another clip's targets: a non-trivial predictor
    report = GroupReport.compute_multilabel(y_true, y_pred, classes, test, "race", stratum=None)
    assert report.groups == ("African American", "Caucasian")
    for gap_op in ("sum_abs_dev", "range"):
        report = GroupReport.compute_multilabel(y_true, y_pred, classes, test, "race", stratum=None, gap_op=gap_op)
        for gap, rate in CLASSWISE:
            expected = _fairlearn_classwise(
                rate, y_true, y_pred, test["race"], pd.Series("all", index=test.index, name="pool"), gap_op
            )
            assert report.get(f"test/{gap}/race") == pytest.approx(expected["all"]), (gap, gap_op)
    age = GroupReport.compute_multilabel(y_true, y_pred, classes, test, "age_group", stratum=None)
    expected = _fairlearn_classwise(true_positive_rate, y_true, y_pred, test["age_group"],
                                    pd.Series("all", index=test.index, name="pool"), "sum_abs_dev")  # fmt: skip
    assert age.get("test/tpr_gap/age_group") == pytest.approx(expected["all"])


def test_multilabel_supports_count_every_positive_column() -> None:
    # F: "110", "100" -> a 2 positives, b 1, c 0; M: "011" -> b 1, c 1. Each row counts for every class.
    report = _report([("F", "en", "110", "000"), ("F", "en", "100", "100"), ("M", "en", "011", "001")], s_min=2)
    supports = report.supports()
    assert supports["positives"].tolist() == [2, 1, 0, 0, 1, 1]
    assert supports["negatives"].tolist() == [0, 1, 2, 1, 0, 0]
    assert supports["n"].tolist() == [2, 2, 2, 1, 1, 1]
    assert report.thin_cells()[["group", "class"]].values.tolist() == [["F", "b"], ["F", "c"], ["M", "a"],
                                                                       ["M", "b"], ["M", "c"]]
