"""The model card's per-group tables (fairray.export) for class-label and regression trials, from the same
``groups/<split>.csv`` frame the loop logs (``GroupReport.table()``)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from fairray.export._export import _card_tables
from fairray.metrics import GroupReport

GROUPS = pd.DataFrame({"gender": ["F", "M"] * 20, "language": ["en"] * 40})


def _header(md: str) -> str:
    return next(line for line in md.splitlines() if line.startswith("| subset |"))


def test_a_regression_card_lists_mae_corr_acc2_f1_and_their_gaps():
    rng = np.random.default_rng(0)
    y = rng.uniform(-3, 3, 40)
    y[::7] = 0.0
    pred = y + rng.normal(0, 0.5, 40)
    report = GroupReport.compute_regression(y, pred, GROUPS)
    table = pd.read_csv(io.StringIO(report.table().to_csv(index=False)))  # as the logged CSV reads back
    md = _card_tables(table)
    header = _header(md)
    for column in ("n", "mae", "corr", "acc2", "f1_2", "n_nonzero"):
        assert f" {column} |" in header, header
    assert "weighted_f1" not in md and "mae_gap" in md and "acc2_gap" in md
    row = next(line for line in md.splitlines() if line.startswith("| all |"))
    assert f"| {np.mean(np.abs(pred - y)):.3f} |" in row, row  # the pooled MAE, as the card prints it
    women = next(line for line in md.splitlines() if line.startswith("| gender=F |"))
    assert f"| {np.mean(np.abs(pred - y)[::2]):.3f} |" in women, women


def test_a_class_label_card_is_unchanged():
    rng = np.random.default_rng(1)
    classes = ("a", "b", "c")
    y = rng.integers(0, 3, 40)
    report = GroupReport.compute(y, np.where(rng.random(40) < 0.7, y, (y + 1) % 3), classes, GROUPS)
    header = _header(_card_tables(report.table()))
    assert all(f" {c} |" in header for c in ("n", "acc", "weighted_f1", "macro_f1", "uar"))
    assert "mae" not in header
