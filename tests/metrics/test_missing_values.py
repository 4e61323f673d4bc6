"""One missing-value set: the dataset's attribute codes and the report's groups leave out the same samples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fairray.config import DatasetConfig
from fairray.data import _dataset, prepare
from fairray.metrics import MISSING_VALUES, GroupReport, _keys, _report, is_missing


def test_one_definition() -> None:
    assert _report.MISSING_VALUES is _keys.MISSING_VALUES is MISSING_VALUES
    assert {"", "U", "Unspecified", "Unknown"} <= MISSING_VALUES and not {"F", "M", "X"} & MISSING_VALUES


@pytest.mark.parametrize(("value", "missing"), [
    ("F", False), ("M", False), ("Asian", False), ("u", False), ("0", False), (0, False),
    ("U", True), (" U ", True), ("", True), ("  ", True), ("Unknown", True), ("unspecified", True),
    (None, True), (math.nan, True), (np.float64("nan"), True),
])  # fmt: skip
def test_is_missing(value, missing: bool) -> None:
    assert is_missing(value) is missing


@pytest.mark.parametrize("unknown", sorted(MISSING_VALUES - {""}) + [" U "])
def test_dataset_and_report_exclude_the_same_samples(monkeypatch: pytest.MonkeyPatch, unknown: str) -> None:
    """The English women of ser3 relabelled as an unknown gender: no training group, no metric group."""
    load_ser3 = _dataset.DATASETS.get("ser3")

    def relabelled(cfg, cache_root):
        meta, X, provenance, aux = load_ser3(cfg, cache_root)
        meta = meta.copy()
        meta.loc[(meta["language"] == "en") & (meta["gender"] == "F"), "gender"] = unknown
        return meta, X, provenance, aux

    monkeypatch.setattr(_dataset.DATASETS, "get", lambda name: relabelled)
    data = prepare(DatasetConfig())
    unknown_rows = (data.meta["gender"] == unknown).to_numpy()
    assert unknown_rows.sum() > 100
    assert data.attr_values == ("F", "M")  # before the shared set, "Unknown" became a third training group
    assert (data.attr[unknown_rows] == -1).all() and (data.attr[~unknown_rows] >= 0).all()
    for split in ("train", "dev", "test"):
        rows = data.indices(split)
        report = GroupReport.compute(data.y[rows], data.y[rows], data.classes, data.groups_frame(split))
        assert report.groups == data.attr_values
        assert report.n_excluded == int((data.attr[rows] == -1).sum())


def test_report_reads_the_shared_set() -> None:
    groups = pd.DataFrame({"gender": ["F", "M", "Unknown", " U ", None], "language": ["en"] * 5})
    report = GroupReport.compute([0, 1, 0, 1, 0], [0, 1, 0, 1, 0], ["a", "b"], groups)
    assert report.groups == ("F", "M") and report.n_excluded == 3
