"""The CBERL per-class report: minority-class F1 from the GroupReport's own counts, seed means with intervals from
the IDI report's shared speaker resample, differences to ERM and focal-only, labels, layout choice, rendering."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fairray.errors import DataError
from fairray.frontier.query import Sweep, TrialRecord
from fairray.metrics import GroupReport, Predictions, interval, replicate_matrix
from fairray.report import choose_layout
from fairray.report.ablation import Cell
from fairray.report.cberl import (
    MINORITY,
    baselines,
    cell_label,
    class_f1,
    columns_of,
    per_class_table,
    render_cberl_markdown,
)

CLASSES = ("anger", "disgust", "fear", "neutral")
SWEEP = Sweep("cberl", "parent", (), (), 0, "sqlite:///unused.db", "gender")


def _preds(minority_hit: float, seed: int) -> Predictions:
    """48 speakers x 10 clips, gender F/M and a third of them U (outside the gaps, as MELD's non-main cast).
    Neutral is right with p 0.8; fear and disgust (the rare classes) with p ``minority_hit``, else neutral."""
    n_spk = 48
    speakers = np.repeat([f"s{i}" for i in range(n_spk)], 10)
    index = np.repeat(np.arange(n_spk), 10)
    gender = np.array(["F", "M", "U"])[index % 3]
    y = np.random.default_rng(0).choice(4, size=len(index), p=[0.2, 0.1, 0.1, 0.6])
    rng = np.random.default_rng(seed)
    rare = np.isin(y, [1, 2])
    right = rng.random(len(y)) < np.where(rare, minority_hit, 0.8)
    y_pred = np.where(right, y, np.where(rare, 3, (y + 1) % 4))
    return Predictions(uid=np.array([f"u{i}" for i in range(len(y))]), speaker=speakers,
                       groups=pd.DataFrame({"gender": gender, "language": "en"}), y_true=y, y_pred=y_pred,
                       prob=None, classes=CLASSES, attribute="gender", stratum="language")


def test_class_f1_is_the_hand_computed_one_vs_rest_f1():
    # fear (class 2): TP = 2 (rows 0, 1), FN = 1 (row 2 -> neutral), FP = 1 (row 3, anger -> fear): F1 = 4 / 6
    y_true = [2, 2, 2, 0, 3, 1]
    y_pred = [2, 2, 3, 2, 3, 3]
    groups = pd.DataFrame({"gender": ["F", "M", "F", "U", "M", "F"], "language": "en"})
    report = GroupReport.compute(y_true, y_pred, CLASSES, groups)
    assert class_f1(report, "fear") == pytest.approx(4 / 6)
    assert class_f1(report, "disgust") == 0.0  # one positive, never predicted: 0 / 1
    assert class_f1(report, "neutral") == pytest.approx(2 / 4)  # TP 1, FP 2, FN 0
    # the same per-class F1 that the report's own macro_f1 averages (the U row counts too)
    assert np.mean([class_f1(report, c) for c in CLASSES]) == pytest.approx(report.get("test/macro_f1"))
    multi = GroupReport.compute_multilabel(np.eye(4, dtype=int)[y_true], np.eye(4, dtype=int)[y_pred], CLASSES, groups)
    assert class_f1(multi, "fear") == pytest.approx(4 / 6)
    with pytest.raises(DataError, match="'joy' is not among"):
        class_f1(report, "joy")


def _table(n_boot: int = 80, seed: int = 3):
    labels = ["CBERL", "w/o masking (ρ=0)", "ERM (ce)", "focal-only ERM"]
    hits = [0.7, 0.5, 0.1, 0.45]
    preds = [[_preds(h, 10 * i + s) for s in range(3)] for i, h in enumerate(hits)]
    return labels, preds, per_class_table(SWEEP, labels, preds, n_boot=n_boot, seed=seed)


def test_values_are_seed_means_of_the_logged_predictions_reports_with_intervals_holding_them():
    labels, preds, table = _table()
    assert table.columns == columns_of(MINORITY) == ("F1 fear", "F1 disgust", "minority WA-F1", "minority WA-acc",
                                                     "W-F1", "macro-F1", "ACC", "ΔW-F1", "TPR gap")
    for row, cell_preds in enumerate(preds):
        for c in MINORITY:
            assert table.values[row][f"F1 {c}"].estimate == pytest.approx(
                np.mean([class_f1(p.report(), c) for p in cell_preds]))
        assert table.values[row]["W-F1"].estimate == pytest.approx(
            np.mean([p.report().get("test/weighted_f1") for p in cell_preds]))
        assert table.values[row]["TPR gap"].estimate == pytest.approx(
            np.mean([p.report().get("test/tpr_gap/gender") for p in cell_preds]))
        assert table.values[row]["ACC"].estimate == pytest.approx(
            np.mean([(p.y_pred == p.y_true).mean() for p in cell_preds]))
        for c in ("F1 fear", "F1 disgust", "minority WA-acc", "W-F1", "macro-F1", "ACC"):
            iv = table.values[row][c]
            assert iv.defined and iv.lo <= iv.estimate <= iv.hi and iv.width > 0, (labels[row], c)
    # weighted-average accuracy of the minority classes = their pooled recall, by hand on one report
    p = preds[0][0]
    rare = np.isin(p.y_true, [1, 2])
    assert np.mean([(q.y_pred[rare] == q.y_true[rare]).mean() for q in preds[0]]) == pytest.approx(
        table.values[0]["minority WA-acc"].estimate)


def test_intervals_come_from_the_idi_reports_shared_resample():
    labels, preds, table = _table(n_boot=60, seed=5)
    flat = [p for cell in preds for p in cell]
    full, reps = replicate_matrix(flat, ["test/weighted_f1"], n_boot=60, seed=5)
    expected = interval(full[0:3, 0].mean(), reps[0:3, :, 0].mean(axis=0))
    got = table.values[0]["W-F1"]
    assert (got.lo, got.hi) == pytest.approx((expected.lo, expected.hi), abs=1e-9)


def test_differences_to_erm_and_focal_only_are_paired_and_resolve_a_real_gain():
    labels, _, table = _table()
    assert list(table.versus) == ["ERM (ce)", "focal-only ERM", "CBERL"]
    vs_erm = table.versus["ERM (ce)"]
    assert vs_erm[labels.index("ERM (ce)")] == {}
    full = vs_erm[0]
    for c in ("F1 fear", "F1 disgust", "minority WA-F1"):
        assert full[c].estimate == pytest.approx(table.values[0][c].estimate - table.values[2][c].estimate)
        assert full[c].defined and full[c].lo > 0  # 0.7 vs 0.1 recall of the rare classes: outside the noise
    vs_focal = table.versus["focal-only ERM"]
    assert vs_focal[labels.index("focal-only ERM")] == {}
    assert vs_focal[1]["F1 fear"].estimate == pytest.approx(
        table.values[1]["F1 fear"].estimate - table.values[3]["F1 fear"].estimate)
    vs_full = table.versus["CBERL"]  # an ablation's effect: its paired difference to full CBERL
    assert vs_full[0] == {}
    off = vs_full[labels.index("w/o masking (ρ=0)")]["minority WA-acc"]
    assert off.estimate == pytest.approx(table.values[1]["minority WA-acc"].estimate -
                                         table.values[0]["minority WA-acc"].estimate)
    assert off.defined and off.hi < 0  # 0.5 vs 0.7 recall of the rare classes: a loss outside the noise
    md = render_cberl_markdown(table, title="t")
    assert "## Against ERM (ce)" in md and "## Against focal-only ERM" in md and "## Against CBERL" in md
    assert "| CBERL | 3 | " in md and "minority WA-F1: seed 0.222, here" in md
    assert "(~)" in md  # CBERL's W-F1 vs focal-only and the like are within noise somewhere in these tables


def test_a_minority_class_the_predictions_lack_is_one_clear_error():
    with pytest.raises(DataError, match=r"minority class\(es\) \['joy'\]"):
        per_class_table(SWEEP, ["CBERL"], [[_preds(0.5, 0)]], minority=("fear", "joy"), n_boot=5)


def _cell(method: str, extra: dict[str, str]) -> Cell:
    return Cell(method, "-", tuple(sorted(extra.items())), (TrialRecord("r", "t", {"method.name": method, **extra}, {}),))


def test_labels_name_the_ablation_switches_and_baselines():
    assert cell_label(_cell("cberl", {})) == "CBERL"
    assert cell_label(_cell("cberl", {"method.augment_ratio": "0.0"})) == "w/o augmentation (r=0)"
    assert cell_label(_cell("cberl", {"method.masking_rate": "0"})) == "w/o masking (ρ=0)"
    assert cell_label(_cell("cberl", {"method.djvae": "False"})) == "w/o DJVAE"
    assert cell_label(_cell("cberl", {"method.gamma": "0.0"})) == "w/o focal (γ=0)"
    assert cell_label(_cell("cberl", {"method.masking_rate": "0.5"})) == "CBERL (masking_rate=0.5)"
    assert cell_label(_cell("erm", {"method.loss": "ce", "model.depth": "1"})) == "ERM (ce)"
    assert cell_label(_cell("erm", {"method.loss": "focal", "model.depth": "1"})) == "focal-only ERM"
    assert cell_label(_cell("erm", {}), {"method.loss": "cb_ce"}) == "ERM (cb_ce)"
    assert baselines(["CBERL", "ERM (cb_ce)", "ERM (ce)", "focal-only ERM"]) == ["ERM (ce)", "focal-only ERM"]
    assert baselines(["CBERL", "ERM (cb_ce)"]) == ["ERM (cb_ce)"]
    assert baselines(["CBERL", "w/o DJVAE", "ERM (ce)"]) == ["ERM (ce)", "CBERL"]  # ablation cells: vs full too
    assert baselines(["w/o DJVAE", "ERM (ce)"]) == ["ERM (ce)"]  # no full CBERL cell to compare with


def test_auto_layout_picks_cberl_for_a_cberl_ablation():
    assert choose_layout({"cberl", "erm"}) == "cberl"
    assert choose_layout({"erm", "minmaxgap"}) == "minmaxgap"
    assert choose_layout({"erm", "gear"}) == "idi"
