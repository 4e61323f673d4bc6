"""The ablation report: seed means, shared-resample intervals, Random / Overall / Gain rows, rendering."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from fairray.frontier.query import Sweep, TrialRecord
from fairray.metrics import Predictions
from fairray.report import ablation_rows, render_markdown, render_svg
from fairray.report.ablation import COLUMNS, Cell, random_predictions

CLASSES = ("anger", "fear", "happiness")


def _population(seed: int = 0):
    rng = np.random.default_rng(seed)
    speakers = np.repeat([f"s{i}" for i in range(24)], 20)
    gender = np.where(np.repeat(np.arange(24) % 2, 20) == 0, "F", "M")
    language = np.repeat(np.array(["en", "de"])[np.arange(24) % 4 // 2], 20)
    y = rng.integers(0, 3, len(speakers))
    return speakers, pd.DataFrame({"gender": gender, "language": language}), y


def _preds(bias: float, seed: int) -> Predictions:
    """A model that is right with probability 0.8 for F and 0.8 - bias for M."""
    speakers, groups, y = _population()
    rng = np.random.default_rng(seed)
    right = rng.random(len(y)) < np.where(groups["gender"] == "F", 0.8, 0.8 - bias)
    y_pred = np.where(right, y, (y + 1) % 3)
    prob = np.full((len(y), 3), 0.1)
    prob[np.arange(len(y)), y_pred] = 0.8
    return Predictions(uid=np.array([f"u{i}" for i in range(len(y))]), speaker=speakers, groups=groups,
                       y_true=y, y_pred=y_pred, prob=prob, classes=CLASSES, attribute="gender",
                       stratum="language")


def _cell(method: str, source: str, n: int) -> Cell:
    trials = tuple(TrialRecord(f"r-{method}-{source}-{s}", f"t{s}", {"method.name": method}, {}) for s in range(n))
    return Cell(method, source, (), trials)


SWEEP = Sweep("idi", "parent", (), (), 0, "sqlite:///unused.db", "gender")


def test_rows_are_seed_means_with_intervals_and_idi_extra_rows():
    cells = [_cell("erm", "-", 2), _cell("lff", "-", 2)]
    cells += [_cell(m, "attribute", 2) for m in ("ds", "rw", "gdro", "gadro")]
    cells += [_cell("ds", "kmeans", 2)]  # kmeans lacks three methods: no Overall row for it
    bias = {"erm": 0.4, "lff": 0.4, "ds": 0.05, "rw": 0.2, "gdro": 0.25, "gadro": 0.25}
    preds = [[_preds(bias[c.method], 10 * i + s) for s in range(2)] for i, c in enumerate(cells)]
    rows = ablation_rows(SWEEP, cells, preds, n_boot=60, seed=1)
    kinds = [(r.kind, r.method, r.source) for r in rows]
    assert kinds[:2] == [("cell", "erm", "-"), ("random", "random", "-")]
    assert ("overall", "overall", "attribute") in kinds and ("overall", "overall", "kmeans") not in kinds
    assert kinds[-1] == ("gain", "gain", "attribute")

    erm = rows[0]
    expected = np.mean([p.report().get("test/tpr_gap/gender") for p in preds[0]])
    assert erm.values["TPR gap"].estimate == pytest.approx(expected)
    assert erm.values["F1"].estimate == pytest.approx(np.mean([p.report().get("test/macro_f1") for p in preds[0]]))
    assert erm.values["TPR gap"].lo <= erm.values["TPR gap"].estimate <= erm.values["TPR gap"].hi
    assert erm.vs_erm == {}  # ERM is the reference

    ds = next(r for r in rows if r.method == "ds" and r.source == "attribute")
    assert ds.vs_erm["TPR gap"].estimate == pytest.approx(ds.values["TPR gap"].estimate - expected)
    assert ds.vs_erm["TPR gap"].hi < 0  # a clearly fairer model: not within noise
    lff = next(r for r in rows if r.method == "lff")
    assert lff.vs_erm["TPR gap"].lo <= 0 <= lff.vs_erm["TPR gap"].hi  # same bias as ERM: within noise

    overall = next(r for r in rows if r.kind == "overall")
    members = [r for r in rows if r.kind == "cell" and r.source == "attribute"]
    assert overall.values["F1"].estimate == pytest.approx(np.mean([r.values["F1"].estimate for r in members]))
    gain = rows[-1]
    base = erm.values
    assert gain.values["F1"].estimate == pytest.approx(
        100 * (overall.values["F1"].estimate - base["F1"].estimate) / base["F1"].estimate)
    assert gain.values["TPR gap"].estimate == pytest.approx(
        100 * (base["TPR gap"].estimate - overall.values["TPR gap"].estimate) / base["TPR gap"].estimate)
    assert gain.values["TPR gap"].estimate > 0

    md = render_markdown(rows, title="t")
    assert md.count("\n| ") == len(rows) + 1  # header + one line per row
    assert "| Random | – | 2 |" in md and "TPR gap −/−" in md  # DS: fairer here and in the paper
    ET.fromstring(render_svg(rows, title="t"))  # well-formed SVG


def test_random_baseline_is_uniform_and_seeded():
    template = _preds(0.0, 0)
    a, b = random_predictions(template, 0), random_predictions(template, 0)
    assert np.array_equal(a.y_pred, b.y_pred)
    assert not np.array_equal(a.y_pred, random_predictions(template, 1).y_pred)
    acc = a.report().get("test/acc")
    assert abs(acc - 1 / 3) < 0.06  # chance level for three classes on 480 clips
    assert np.array_equal(a.y_true, template.y_true)


def test_an_interval_is_nan_free_even_with_a_tiny_cell():
    cells = [_cell("erm", "-", 1)]
    rows = ablation_rows(SWEEP, cells, [[_preds(0.3, 0)]], n_boot=30, idi=False)
    assert len(rows) == 1 and all(math.isfinite(rows[0].values[c].lo) for c in COLUMNS)


def test_overall_averages_method_means_whatever_their_seed_counts():
    seeds = {"erm": 1, "ds": 3, "rw": 1, "gdro": 1, "gadro": 1}
    bias = {"erm": 0.4, "ds": 0.0, "rw": 0.2, "gdro": 0.3, "gadro": 0.3}
    cells = [_cell(m, "-" if m == "erm" else "attribute", n) for m, n in seeds.items()]
    preds = [[_preds(bias[c.method], 10 * i + s) for s in range(len(c.trials))] for i, c in enumerate(cells)]
    rows = ablation_rows(SWEEP, cells, preds, n_boot=20)
    overall = next(r for r in rows if r.kind == "overall")
    means = [np.mean([p.report().get("test/tpr_gap/gender") for p in ps]) for c, ps in zip(cells, preds, strict=True) if
             c.method != "erm"]
    assert overall.values["TPR gap"].estimate == pytest.approx(np.mean(means))
    assert overall.n_seeds == 6


def test_cells_take_unsampled_values_from_the_sweep_spec():
    from fairray.report.ablation import group_cells

    trials = (TrialRecord("r1", "t1", {"method.name": "gdro", "train.seed": "0"}, {}),
              TrialRecord("r2", "t2", {"method.name": "gdro", "train.seed": "1"}, {}),
              TrialRecord("r3", "t3", {"method.name": "erm", "train.seed": "0"}, {}))
    sweep = Sweep("idi", "parent", (), trials, 0, "sqlite:///unused.db", "gender",
                  {"method.name": "erm", "dataset.groups.name": "kmeans"})
    cells = group_cells(sweep)
    assert [(c.method, c.source, len(c.trials)) for c in cells] == [("erm", "-", 1), ("gdro", "kmeans", 2)]


def test_cells_with_numeric_parameters_sort_by_value():
    from fairray.report.ablation import group_cells

    trials = tuple(TrialRecord(f"r{k}", f"t{k}", {"method.name": "rw", "dataset.groups.name": "kmeans",
                                                  "dataset.groups.params.K": str(k), "train.seed": "0"}, {})
                   for k in (16, 2, 32, 4))
    sweep = Sweep("idi", "parent", (), trials, 0, "sqlite:///unused.db", "gender", {})
    assert [c.label for c in group_cells(sweep)] == ["K=2", "K=4", "K=16", "K=32"]
