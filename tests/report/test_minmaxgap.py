"""The MinMaxGAP report (METHODS 4.4): per-language and pooled §2.5 columns, seed means with shared-resample
intervals, differences to ERM, no interval where a subset has one speaker per gender, rendering."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fairray.frontier.query import Sweep, TrialRecord
from fairray.metrics import GroupReport, Predictions
from fairray.report.ablation import Cell
from fairray.report.minmaxgap import COLUMNS, cell_label, metric_key, minmaxgap_tables, render_minmaxgap_markdown

CLASSES = ("anger", "fear", "happiness")
SWEEP = Sweep("minmaxgap", "parent", (), (), 0, "sqlite:///unused.db", "gender")


def _preds(bias: float, seed: int, *, one_speaker_de: bool = False) -> Predictions:
    """en: 12 speakers per gender; de: 12, or 1 per gender (``one_speaker_de``). Right with p 0.8 (F), 0.8 - bias (M)."""
    n_spk = 24
    speakers = np.repeat([f"s{i}" for i in range(2 * n_spk)], 10)
    index = np.repeat(np.arange(2 * n_spk), 10)
    gender = np.where(index % 2 == 0, "F", "M")
    language = np.where(index < n_spk, "en", "de")
    if one_speaker_de:
        speakers = np.where(language == "de", np.where(gender == "F", "deF", "deM"), speakers)
    rng = np.random.default_rng(seed)
    y = np.random.default_rng(0).integers(0, 3, len(index))
    right = rng.random(len(y)) < np.where(gender == "F", 0.8, 0.8 - bias)
    y_pred = np.where(right, y, (y + 1) % 3)
    return Predictions(uid=np.array([f"u{i}" for i in range(len(y))]), speaker=speakers,
                       groups=pd.DataFrame({"gender": gender, "language": language}), y_true=y, y_pred=y_pred,
                       prob=None, classes=CLASSES, attribute="gender", stratum="language")


def _cell(method: str, extra: dict[str, str], n: int) -> Cell:
    trials = tuple(TrialRecord(f"r-{method}-{s}", f"t{s}", {"method.name": method, **extra}, {}) for s in range(n))
    return Cell(method, "attribute" if method != "erm" else "-", tuple(sorted(extra.items())), trials)


def test_tables_are_seed_means_per_scope_with_differences_to_erm():
    cells = [_cell("erm", {}, 3), _cell("minmaxgap", {"method.adaptive": "True", "method.p": "2"}, 3)]
    preds = [[_preds(0.4, s) for s in range(3)], [_preds(0.05, 10 + s) for s in range(3)]]
    tables = minmaxgap_tables(SWEEP, cells, preds, n_boot=60, seed=1)
    assert [t.scope for t in tables] == ["pooled", "language=de", "language=en"]
    assert [t.labels for t in tables][0] == ("ERM", "MinMaxGAP, adaptive λ, p=2")
    for table in tables:
        value = None if table.scope == "pooled" else table.scope.split("=")[1]
        for c in COLUMNS:  # a row's value is the mean over its seeds of what GroupReport computes
            key = metric_key("test", c, "gender", "language", value)
            for row, cell_preds in enumerate(preds):
                expected = np.mean([p.report().get(key) for p in cell_preds])
                assert table.values[row][c].estimate == pytest.approx(expected), (table.scope, c)
            delta = table.vs_erm[1][c]
            assert delta.estimate == pytest.approx(table.values[1][c].estimate - table.values[0][c].estimate)
            assert delta.defined and delta.lo <= delta.estimate <= delta.hi
        assert table.vs_erm[0] == {}
    pooled = tables[0]
    assert pooled.vs_erm[1]["AVG"].hi < 0  # a much smaller gender gap than ERM's, outside the noise
    assert pooled.values[0]["AVG"].estimate == pytest.approx(np.mean(
        [np.mean([p.report().get(f"test/{m}/gender") for m in ("uar_gap", "mfpr_gap", "weighted_f1_gap", "acc_gap")])
         for p in preds[0]]))
    md = render_minmaxgap_markdown(tables, title="t")
    assert "## language=en" in md and "AVG ~/−" not in md.split("## language=de")[0] and "AVG −/−" in md


def test_a_subset_with_one_speaker_per_gender_has_no_interval():
    cells = [_cell("erm", {}, 2), _cell("minmaxgap", {"method.adaptive": "False"}, 2)]
    preds = [[_preds(0.4, s, one_speaker_de=True) for s in range(2)],
             [_preds(0.1, 5 + s, one_speaker_de=True) for s in range(2)]]
    tables = {t.scope: t for t in minmaxgap_tables(SWEEP, cells, preds, n_boot=40)}
    de, en = tables["language=de"], tables["language=en"]
    assert de.min_speakers == 1 and en.min_speakers == 12
    assert not any(iv.defined for row in de.values for iv in row.values())
    assert all(iv.defined for row in en.values for iv in row.values())
    md = render_minmaxgap_markdown(list(tables.values()), title="t")
    de_part = md.split("## language=de")[1].split("## ")[0]
    assert "1 test speaker(s) in a gender" in de_part and "?/" in de_part and "[" not in de_part.split("|---")[-1]


def test_labels_name_the_papers_settings():
    assert cell_label(_cell("erm", {}, 1)) == "ERM"
    assert cell_label(_cell("minmaxgap", {"method.adaptive": "False"}, 1)) == "MinMaxGAP, fixed λ"
    assert cell_label(_cell("minmaxgap", {"method.adaptive": "True", "method.p": "1"}, 1)) == \
        "MinMaxGAP, adaptive λ, p=1"


def test_metric_keys_exist_in_a_report():
    p = _preds(0.2, 0)
    report: GroupReport = p.report()
    for value in (None, "en"):
        for c in COLUMNS:
            assert np.isfinite(report.get(metric_key("test", c, "gender", "language", value))), c
