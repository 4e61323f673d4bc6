"""Predictions: validation at construction, report(rows) == GroupReport.compute on those rows, .npz round trip."""

from __future__ import annotations

import dataclasses
import io
import json
import os

import numpy as np
import pandas as pd
import pytest

from fairray.errors import ConfigError, DataError
from fairray.metrics import GroupReport
from fairray.metrics.predictions import Predictions

CLASSES = ("ang", "hap", "neu", "sad")


def _single(n: int = 120, *, stratum: str | None = "language", seed: int = 0, prob: bool = True) -> Predictions:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, len(CLASSES), n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, len(CLASSES), n))
    frame = {"gender": rng.choice(["F", "M", "U"], n, p=[0.45, 0.45, 0.1]), "other": np.arange(n)}
    if stratum is not None:
        frame[stratum] = rng.choice(["en", "de", "ja"], n)
    return Predictions(
        uid=[f"u{i:04d}" for i in range(n)],
        speaker=[f"s{i % 17}" for i in range(n)],
        groups=pd.DataFrame(frame),
        y_true=y_true,
        y_pred=y_pred,
        prob=rng.dirichlet(np.ones(len(CLASSES)), n) if prob else None,
        classes=CLASSES,
        attribute="gender",
        stratum=stratum,
        s_min=2,
        gap_op="range",
        class_agg="mean",
    )


def _multi(n: int = 60, seed: int = 1) -> Predictions:
    rng = np.random.default_rng(seed)
    return Predictions(
        uid=[f"u{i}" for i in range(n)],
        speaker=[f"s{i % 7}" for i in range(n)],
        groups=pd.DataFrame({"gender": rng.choice(["F", "M"], n)}),
        y_true=(rng.random((n, len(CLASSES))) < 0.4).astype(np.uint8),
        y_pred=(rng.random((n, len(CLASSES))) < 0.4).astype(np.uint8),
        prob=rng.random((n, len(CLASSES))).astype(np.float32),
        classes=CLASSES,
        attribute="gender",
        task="multi",
    )


def _assert_same(a: Predictions, b: Predictions) -> None:
    for name in ("uid", "speaker", "y_true", "y_pred"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert getattr(a, name).dtype == getattr(b, name).dtype, name
    if a.prob is None:
        assert b.prob is None
    else:
        np.testing.assert_array_equal(a.prob, b.prob)
        assert a.prob.dtype == b.prob.dtype
    pd.testing.assert_frame_equal(a.groups, b.groups)
    for name in ("classes", "attribute", "stratum", "task", "s_min", "gap_op", "class_agg"):
        assert getattr(a, name) == getattr(b, name), name


# --- construction ------------------------------------------------------------------------------


def test_groups_keep_only_the_named_columns_and_missing_values_stay_missing() -> None:
    pred = _single()
    assert list(pred.groups.columns) == ["gender", "language"]
    groups = pd.DataFrame({"gender": ["F", None, "M", np.nan], "language": ["en", "en", "de", "de"]})
    p = Predictions(uid=list("abcd"), speaker=list("abcd"), groups=groups, y_true=[0, 1, 0, 1], y_pred=[0, 1, 1, 1],
                    classes=("x", "y"), attribute="gender", stratum="language")  # fmt: skip
    assert p.groups["gender"].tolist() == ["F", "", "M", ""]
    assert p.report().n_excluded == 2
    assert p.report().groups == ("F", "M")


def test_arrays_are_read_only_copies() -> None:
    y = np.array([0, 1, 1, 0])
    p = Predictions(uid=list("abcd"), speaker=list("aabb"), groups=pd.DataFrame({"g": list("FMFM")}), y_true=y,
                    y_pred=y, classes=("x", "y"), attribute="g")  # fmt: skip
    y[0] = 1
    assert p.y_true[0] == 0
    with pytest.raises(ValueError):
        p.y_true[0] = 1
    with pytest.raises(AttributeError):
        p.attribute = "h"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"uid": list("abc")}, "rows do not align: uid 3, speaker 4"),
        ({"prob": np.ones((3, 2))}, "rows do not align"),
        ({"uid": list("abca")}, "duplicate uids"),
        ({"speaker": ["a", "", "b", "b"]}, "1 rows have no speaker"),
        ({"speaker": [1, 2, 3, 4]}, "speaker must hold strings"),
        ({"y_pred": [0, 1, 2, 0]}, "y_pred holds class indices outside 0..1"),
        ({"y_true": [0.0, 1.0, 1.0, 0.0]}, "y_true must be 1-D integer"),
        ({"groups": pd.DataFrame({"h": list("FMFM")})}, r"groups lacks column\(s\) \['g'\]"),
        ({"stratum": "language"}, r"groups lacks column\(s\) \['language'\]"),
        ({"prob": np.ones((4, 3))}, r"prob must be a float array \[N, 2\]"),
        ({"task": "multi"}, r"y_true must be a 0/1 integer array \[N, 2\]"),
        ({"classes": ("x",)}, "at least two classes"),
    ],
)
def test_construction_errors(change: dict, match: str) -> None:
    kwargs = dict(uid=list("abcd"), speaker=list("aabb"), groups=pd.DataFrame({"g": list("FMFM")}),
                  y_true=[0, 1, 1, 0], y_pred=[0, 1, 0, 0], classes=("x", "y"), attribute="g")  # fmt: skip
    with pytest.raises(DataError, match=match):
        Predictions(**(kwargs | change))


@pytest.mark.parametrize(("change", "match"), [({"task": "both"}, "task"), ({"gap_op": "max"}, "gap_op"),
                                               ({"s_min": 0}, "s_min"), ({"class_agg": "sum"}, "class_agg")])  # fmt: skip
def test_option_errors(change: dict, match: str) -> None:
    kwargs = dict(uid=list("ab"), speaker=list("ab"), groups=pd.DataFrame({"g": list("FM")}), y_true=[0, 1],
                  y_pred=[0, 1], classes=("x", "y"), attribute="g")  # fmt: skip
    with pytest.raises(ConfigError, match=match):
        Predictions(**(kwargs | change))


# --- report ------------------------------------------------------------------------------------


def _assert_reports_equal(a: GroupReport, b: GroupReport) -> None:
    assert (a.groups, a.strata, a.classes, a.attribute, a.stratum) == (
        b.groups,
        b.strata,
        b.classes,
        b.attribute,
        b.stratum,
    )
    np.testing.assert_array_equal(a.counts, b.counts)
    pd.testing.assert_frame_equal(a.frame, b.frame)


@pytest.mark.parametrize("stratum", ["language", None])
def test_report_equals_group_report_compute(stratum: str | None) -> None:
    pred = _single(stratum=stratum)
    options = {"s_min": 2, "gap_op": "range", "class_agg": "mean"}
    full = GroupReport.compute(pred.y_true, pred.y_pred, CLASSES, pred.groups, "gender", stratum, **options)
    _assert_reports_equal(pred.report(), full)
    rng = np.random.default_rng(3)
    german = np.flatnonzero(pred.groups["language"] == "de") if stratum else np.arange(10)
    no_males = np.flatnonzero(pred.groups["gender"] != "M")
    for rows in (rng.integers(0, len(pred), len(pred)), np.repeat(german, 3), no_males, np.array([], dtype=int)):
        sub = pred.groups.iloc[rows].reset_index(drop=True)
        expected = GroupReport.compute(pred.y_true[rows], pred.y_pred[rows], CLASSES, sub, "gender", stratum, **options)
        _assert_reports_equal(pred.report(rows), expected)


def test_report_rejects_bad_rows() -> None:
    pred = _single()
    with pytest.raises(IndexError, match="0..119"):
        pred.report([0, 120])
    with pytest.raises(ValueError, match="integer row indices"):
        pred.report(np.ones(3, bool))


# --- save / load -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [_single, lambda: _single(stratum=None, prob=False), _multi], ids=["single", "no-stratum", "multi"]
)
def test_save_load_round_trip(tmp_path, make) -> None:
    pred = make()
    path = pred.save(tmp_path / "sub" / "dev.npz")
    assert path.is_file() and os.listdir(path.parent) == ["dev.npz"]
    loaded = Predictions.load(path)
    _assert_same(pred, loaded)
    if pred.task == "single":
        _assert_reports_equal(pred.report(), loaded.report())
    with np.load(path, allow_pickle=False) as npz:  # plain arrays, no object arrays
        assert all(npz[k].dtype != object for k in npz.files)
        assert json.loads(npz["meta"].item())["version"] == 1


def test_interrupted_save_leaves_no_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    pred = _single()
    target = tmp_path / "test.npz"

    def crash(fd):
        raise OSError("disk vanished mid-write")

    monkeypatch.setattr(os, "fsync", crash)  # the bytes are written to the temporary file, not yet published
    with pytest.raises(OSError, match="disk vanished"):
        pred.save(target)
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()

    pred.save(target)  # an interrupted overwrite keeps the old complete file
    before = target.read_bytes()
    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        _single(seed=5).save(target)
    assert os.listdir(tmp_path) == ["test.npz"] and target.read_bytes() == before


def _write_npz(path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def _arrays(pred: Predictions, tmp_path) -> dict[str, np.ndarray]:
    path = pred.save(tmp_path / "good.npz")
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda a: a.pop("y_pred"), "lacks the key 'y_pred'"),
        (lambda a: a.pop("group_1"), "lacks the key 'group_1'"),
        (lambda a: a.pop("meta"), "lacks the key 'meta'"),
        (lambda a: a.update(meta=np.array(json.dumps({**json.loads(a["meta"].item()), "version": 3}))), "version 3 is not one of 1, 2"),
        (lambda a: a.update(meta=np.array(json.dumps({"format": "other"}))), "meta key 'format'"),
        (lambda a: a.update(meta=np.array("{not json")), "not valid JSON"),
        (lambda a: a.update(meta=np.array(json.dumps({k: v for k, v in json.loads(a["meta"].item()).items() if k != "classes"}))),
         "lacks the field 'classes'"),
        (lambda a: a.update(y_true=a["y_true"][:-1]), "rows do not align"),
    ],
)  # fmt: skip
def test_bad_file_is_one_line_data_error(tmp_path, edit, match) -> None:
    arrays = _arrays(_single(), tmp_path)
    edit(arrays)
    bad = tmp_path / "bad.npz"
    _write_npz(bad, **arrays)
    with pytest.raises(DataError, match=match) as err:
        Predictions.load(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_missing_or_garbage_file(tmp_path) -> None:
    with pytest.raises(DataError, match="no such predictions file"):
        Predictions.load(tmp_path / "absent.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="not a predictions .npz file") as err:
        Predictions.load(garbage)
    assert str(garbage) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("make", [_single, _multi])
def test_with_outputs_is_a_fresh_predictions_of_those_outputs(make) -> None:
    first, second = make(seed=3) if make is _single else make(), make(seed=4) if make is _single else make(seed=5)
    first.full_report  # noqa: B018 - a cached report must not leak into the copy
    swapped = first.with_outputs(second.y_pred, second.prob)
    fresh = dataclasses.replace(first, y_pred=second.y_pred, prob=second.prob)
    _assert_same(swapped, fresh)
    assert swapped.report().flat("dev") == pytest.approx(fresh.report().flat("dev"), nan_ok=True)
    assert first.report().flat("dev") != pytest.approx(swapped.report().flat("dev"), nan_ok=True)
    with pytest.raises(DataError, match="rows do not align"):
        first.with_outputs(second.y_pred[:-1], None)
    with pytest.raises(DataError):
        first.with_outputs(np.full_like(second.y_pred, 9), None)
