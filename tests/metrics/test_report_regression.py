"""The regression report (MOSI / MOSEI sentiment): MAE, Pearson r, MulT's acc2 / f1_2 with zeros excluded, their
per-group ranges, pinned against hand-computed values; bootstrap rows; Predictions v2 with float targets."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fairray.errors import DataError
from fairray.metrics import GroupReport, Predictions, format_report, metric_direction, task_metrics

# six samples, genders F F M M F M; sample 2 has sentiment exactly 0 (left out of acc2 / f1_2)
Y = np.array([1.0, -2.0, 0.0, 3.0, 0.5, -1.0])
P = np.array([0.5, -1.0, 1.0, 1.0, 1.0, 0.2])
GENDER = list("FFMMFM")


def _report(**kw) -> GroupReport:
    return GroupReport.compute_regression(Y, P, pd.DataFrame({"gender": GENDER, "language": ["en"] * 6}), **kw)


def test_overall_values_by_hand():
    r = _report()
    # |e| = .5, 1, 1, 2, .5, 1.2 -> 6.2 / 6
    assert r.get("dev/mae") == pytest.approx(6.2 / 6, rel=1e-9)
    # non-zero truths 0, 1, 3, 4, 5: 1[p > 0] vs 1[y > 0] right for 0, 1, 3, 4, wrong for 5 (y = -1, p = 0.2)
    assert r.get("dev/acc2") == pytest.approx(4 / 5)
    # TP 3, FN 0, FP 1, TN 1: F1+ = 6/7 (support 3), F1- = 2/3 (support 2), weighted (3·6/7 + 2·2/3) / 5
    assert r.get("dev/f1_2") == pytest.approx((3 * 6 / 7 + 2 * 2 / 3) / 5, rel=1e-9)
    assert r.get("dev/f1_2") == pytest.approx(0.7809523809523808, rel=1e-9)  # sklearn's f1_score(weighted)
    assert r.get("dev/corr") == pytest.approx(np.corrcoef(Y, P)[0, 1], rel=1e-9)
    assert r.get("dev/corr") == pytest.approx(0.7577794480432619, rel=1e-9)
    assert (r.get("dev/n"), r.get("dev/n_nonzero")) == (6.0, 5.0)


def test_per_group_values_and_range_gaps_by_hand():
    r = _report()
    assert r.get("dev/mae/gender:F") == pytest.approx(2.0 / 3) and r.get("dev/mae/gender:M") == pytest.approx(4.2 / 3)
    assert r.get("dev/mae_gap/gender") == pytest.approx(4.2 / 3 - 2.0 / 3)
    assert r.get("dev/acc2/gender:F") == pytest.approx(1.0) and r.get("dev/acc2/gender:M") == pytest.approx(0.5)
    assert r.get("dev/acc2_gap/gender") == pytest.approx(0.5)
    # M: y = 3 (p = 1, TP), y = -1 (p = 0.2, FP): F1+ = 2/3 with support 1, F1- = 0 with support 1
    assert r.get("dev/f1_2/gender:M") == pytest.approx(1 / 3) and r.get("dev/f1_2/gender:F") == pytest.approx(1.0)
    assert r.get("dev/corr/gender:F") == pytest.approx(0.9215506405654279, rel=1e-9)
    assert r.get("dev/corr/gender:M") == pytest.approx(0.6933752452815365, rel=1e-9)
    assert r.get("dev/corr_gap/gender") == pytest.approx(0.9215506405654279 - 0.6933752452815365, rel=1e-9)
    assert r.get("dev/mae_gap/gender/worst:language") == pytest.approx(r.get("dev/mae_gap/gender"))
    assert r.get("dev/mae/gender:M/language:en") == pytest.approx(4.2 / 3)


def test_undefined_values_are_nan_and_s_min_drops_small_groups():
    flat = GroupReport.compute_regression([1.0, 2.0, 0.0], [0.3, 0.3, 0.3], pd.DataFrame({"g": list("aab")}), "g",
                                          None).flat("dev")
    assert np.isnan(flat["dev/corr"])  # constant predictions: r undefined, not 0
    assert np.isnan(flat["dev/acc2/g:b"]) and flat["dev/n_nonzero/g:b"] == 0  # only a zero truth
    assert np.isnan(flat["dev/corr/g:b"])  # one sample
    r = GroupReport.compute_regression(Y, P, pd.DataFrame({"gender": GENDER}), stratum=None, s_min=4)
    assert np.isnan(r.get("dev/mae_gap/gender")) and r.get("dev/n_groups_eff/gender") == 0


def test_the_metric_table_and_directions():
    assert task_metrics("regression", "utility") == ("mae", "corr", "acc2", "f1_2")
    assert metric_direction("dev/mae") == "min" and metric_direction("dev/corr") == "max"
    assert metric_direction("dev/acc2_gap/gender") == "min"
    r = _report()
    assert set(r.metrics) >= {"mae", "mae_gap", "n"} and "weighted_f1" not in r.metrics
    with pytest.raises(KeyError, match="regression-label report has no 'weighted_f1'"):
        r.get("dev/weighted_f1")
    assert "mae_gap" in format_report(r, "dev")
    back = GroupReport.from_json(json.loads(json.dumps(r.to_json(), allow_nan=True)))
    assert back.get("dev/f1_2") == pytest.approx(r.get("dev/f1_2")) and back.task == "regression"


def _predictions() -> Predictions:
    groups = pd.DataFrame({"gender": GENDER, "language": ["en"] * 6})
    return Predictions(uid=np.array([f"u{i}" for i in range(6)]), speaker=np.array(list("aabbcc")), groups=groups,
                       y_true=Y, y_pred=P, classes=(), attribute="gender", stratum="language", task="regression")


def test_predictions_rows_equal_a_report_of_those_rows():
    pred = _predictions()
    assert pred.report().get("test/mae") == pytest.approx(6.2 / 6)
    rows = np.array([0, 0, 3, 5, 5, 5])  # a bootstrap replicate: repetitions count
    sub = pred.report(rows).flat("test")
    direct = GroupReport.compute_regression(Y[rows], P[rows], pred.groups.iloc[rows].reset_index(drop=True),
                                            "gender", "language").flat("test")
    assert sub.keys() == direct.keys()
    for key, value in direct.items():
        assert sub[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key
    only_f = pred.report(np.array([0, 1, 4])).flat("test")  # a group no row holds is dropped
    assert "test/mae/gender:M" not in only_f and only_f["test/mae/gender:F"] == pytest.approx(2.0 / 3)


def test_predictions_v2_round_trip_and_bad_input(tmp_path):
    pred = _predictions()
    path = pred.save(tmp_path / "p.npz")
    with np.load(path) as npz:
        meta = json.loads(npz["meta"].item())
        assert meta["version"] == 2 and meta["task"] == "regression" and npz["y_true"].dtype == np.float64
    back = Predictions.load(path)
    assert back.report().get("test/corr") == pytest.approx(pred.report().get("test/corr"), rel=1e-12)
    with pytest.raises(DataError, match="a regression has no class probabilities"):
        pred.with_outputs(P, np.ones((6, 2)))
    with pytest.raises(DataError, match="a regression has no classes"):
        Predictions(**{**_kwargs(pred), "classes": ("a", "b")})
    with pytest.raises(DataError, match="non-finite"):
        pred.with_outputs(np.array([np.nan, 0, 0, 0, 0, 0]), None)


def _kwargs(pred: Predictions) -> dict:
    return {"uid": pred.uid, "speaker": pred.speaker, "groups": pred.groups, "y_true": pred.y_true,
            "y_pred": pred.y_pred, "classes": pred.classes, "attribute": pred.attribute, "stratum": pred.stratum,
            "task": "regression"}
