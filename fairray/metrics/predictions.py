"""What one model predicted on one split: enough to recompute its :class:`GroupReport` and to bootstrap it.

A :class:`Predictions` holds one row per clip (``uid``, ``speaker``, the attribute / stratum columns,
labels, predictions and class probabilities) plus the evaluation options. :meth:`Predictions.report`
evaluates all rows or any multiset of rows (bootstrap replicates); :meth:`Predictions.save` /
:meth:`Predictions.load` store it as one ``.npz`` file without pickles::

    meta        0-d unicode array: JSON {"format": "fairray.predictions", "version": 1 or 2, "classes", "attribute",
                "stratum", "task", "s_min", "gap_op", "class_agg", "group_columns", "has_prob"}
    uid         unicode [N]
    speaker     unicode [N]
    group_0 ... unicode [N], one per entry of group_columns (missing values as "")
    y_true      int64 [N] (task "single"), 0/1 int64 [N, C] (task "multi") or float64 [N] (task "regression")
    y_pred      like y_true
    prob        float [N, C] (absent when has_prob is false; always absent for regression)

Version 2 (written for ``task: regression`` only, whose float targets version 1 cannot hold) has the same keys;
class-label predictions are still written as version 1, and both versions are read.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fairray._atomic import atomic_write_bytes
from fairray.errors import ConfigError, DataError
from fairray.metrics._keys import TASKS
from fairray.metrics._report import CLASS_AGGS, GAP_OPS, GroupReport, _continuous, _encode_cells, regression_stats

FORMAT = "fairray.predictions"
VERSION = 1
#: The version of regression predictions (float ``y_true`` / ``y_pred``, no classes); readers accept both.
REGRESSION_VERSION = 2
_VERSIONS = (VERSION, REGRESSION_VERSION)
_META_FIELDS = ("classes", "attribute", "stratum", "task", "s_min", "gap_op", "class_agg", "group_columns", "has_prob")


@dataclass(frozen=True, eq=False, kw_only=True)
class Predictions:
    """One model's predictions on one split, row-aligned (``N`` rows everywhere).

    Attributes
    ----------
    uid, speaker : unicode arrays ``[N]``; uids are unique, every row has a speaker.
    groups : DataFrame ``[N]`` holding the ``attribute`` column and, unless ``stratum`` is None, the
        ``stratum`` column (real column names kept; values as strings, missing values as ``""``).
    y_true, y_pred : int64 class indices ``[N]`` (``task="single"``) or 0/1 multi-hot ``[N, C]``
        (``task="multi"``).
    prob : float class probabilities ``[N, C]``, or None when the model gave none.
    classes, attribute, stratum, task, s_min, gap_op, class_agg : what :meth:`report` evaluates with
        (see :meth:`GroupReport.compute`).

    Arrays are copied and made read-only at construction; do not modify ``groups`` in place.
    """

    uid: np.ndarray
    speaker: np.ndarray
    groups: pd.DataFrame
    y_true: np.ndarray
    y_pred: np.ndarray
    prob: np.ndarray | None = None
    classes: tuple[str, ...]
    attribute: str
    stratum: str | None = None
    task: Literal["single", "multi", "regression"] = "single"
    s_min: int = 1
    gap_op: str = "sum_abs_dev"
    class_agg: str = "rms"

    def __post_init__(self) -> None:
        classes = tuple(str(c) for c in self.classes)
        if self.task == "regression":
            if classes:
                raise DataError(f"Predictions: a regression has no classes; got {list(classes)}")
        elif len(classes) < 2:
            raise DataError(f"Predictions: need at least two classes; got {list(classes)}")
        if self.task not in TASKS:
            raise ConfigError(f"Predictions: task must be one of {', '.join(TASKS)}; got {self.task!r}")
        if not isinstance(self.s_min, (int, np.integer)) or isinstance(self.s_min, bool) or self.s_min < 1:
            raise ConfigError(f"Predictions: s_min must be an integer >= 1; got {self.s_min!r}")
        if self.gap_op not in GAP_OPS:
            raise ConfigError(f"Predictions: gap_op must be one of {', '.join(GAP_OPS)}; got {self.gap_op!r}")
        if self.class_agg not in CLASS_AGGS:
            raise ConfigError(f"Predictions: class_agg must be one of {', '.join(CLASS_AGGS)}; got {self.class_agg!r}")
        if self.stratum is not None and self.stratum == self.attribute:
            raise DataError(f"Predictions: attribute and stratum are the same column {self.attribute!r}")

        uid = _strings(self.uid, "uid")
        speaker = _strings(self.speaker, "speaker")
        groups = _group_frame(self.groups, self.attribute, self.stratum)
        n_classes = len(classes)
        y_true = _targets(self.y_true, "y_true", self.task, n_classes)
        y_pred = _targets(self.y_pred, "y_pred", self.task, n_classes)
        if self.task == "regression" and self.prob is not None:
            raise DataError("Predictions: a regression has no class probabilities (prob must be None)")
        prob = None if self.prob is None else _probabilities(self.prob, n_classes)
        lengths = {"uid": len(uid), "speaker": len(speaker), "groups": len(groups), "y_true": len(y_true),
                   "y_pred": len(y_pred)} | ({} if prob is None else {"prob": len(prob)})  # fmt: skip
        if len(set(lengths.values())) > 1:
            raise DataError(f"Predictions: rows do not align: {', '.join(f'{k} {v}' for k, v in lengths.items())}")
        unique, counts = np.unique(uid, return_counts=True)
        if (counts > 1).any():
            raise DataError(f"Predictions: duplicate uids {unique[counts > 1][:5].tolist()}")
        no_speaker = np.char.strip(speaker) == ""
        if no_speaker.any():
            raise DataError(
                f"Predictions: {int(no_speaker.sum())} rows have no speaker (first uid {uid[no_speaker][0]!r}); "
                "the bootstrap resamples speakers (pass the uid as speaker to resample clips)"
            )
        for name, value in (("uid", uid), ("speaker", speaker), ("y_true", y_true), ("y_pred", y_pred),
                            ("prob", prob), ("groups", groups), ("classes", classes),
                            ("s_min", int(self.s_min))):  # fmt: skip
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return len(self.uid)

    def with_outputs(self, y_pred: np.ndarray, prob: np.ndarray | None) -> Predictions:
        """The same rows, labels and options with new model outputs (what changes from one epoch to the next):
        only ``y_pred`` and ``prob`` are checked, the rest was checked when ``self`` was made."""
        if self.task == "regression" and prob is not None:
            raise DataError("Predictions: a regression has no class probabilities (prob must be None)")
        y_pred = _targets(y_pred, "y_pred", self.task, len(self.classes))
        prob = None if prob is None else _probabilities(prob, len(self.classes))
        if len(y_pred) != len(self) or (prob is not None and len(prob) != len(self)):
            raise DataError(f"Predictions: rows do not align: {len(self)} rows, y_pred {len(y_pred)}"
                            + ("" if prob is None else f", prob {len(prob)}"))
        _ = self._group_cells  # computed on the template once, shared by every Predictions made from it
        new = object.__new__(Predictions)
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k not in _CACHED})
        object.__setattr__(new, "y_pred", y_pred)
        object.__setattr__(new, "prob", prob)
        return new

    # --- evaluation ----------------------------------------------------------------------------

    @cached_property
    def full_report(self) -> GroupReport:
        """The report on all rows (computed once; the rows' group cells once for all :meth:`with_outputs`)."""
        if self.task == "regression":
            return GroupReport._from_regression_cells(self._group_cells, self.y_true, self.y_pred, self.groups,
                                                      self.attribute, self.stratum, s_min=self.s_min)
        return GroupReport._from_cells(self._group_cells, self.y_true, self.y_pred, self.classes, self.groups,
                                       self.attribute, self.stratum, s_min=self.s_min, gap_op=self.gap_op,
                                       class_agg=self.class_agg, task=self.task)

    @cached_property
    def _group_cells(self) -> tuple[np.ndarray, tuple[str, ...], np.ndarray, tuple[str, ...]]:
        """The rows' attribute and stratum codes and values (:func:`_encode_cells`): they depend on the groups
        only, so :meth:`with_outputs` keeps them."""
        return _encode_cells(self.groups, self.attribute, self.stratum)

    def report(self, rows: Sequence[int] | np.ndarray | None = None) -> GroupReport:
        """The :class:`GroupReport` on all rows (``rows=None``) or on ``rows``.

        ``rows`` are integer row indices in ``0..N-1``; repetitions are allowed (a bootstrap replicate)
        and the result equals :meth:`GroupReport.compute` on those rows in that multiplicity.
        """
        if rows is None:
            return self.full_report
        rows = np.asarray(rows)
        if rows.ndim != 1 or not (np.issubdtype(rows.dtype, np.integer) or rows.size == 0):
            raise ValueError(
                f"rows must be a 1-D array of integer row indices; got dtype {rows.dtype}, shape {rows.shape}"
            )
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows must lie in 0..{len(self) - 1}; got values from {rows.min()} to {rows.max()}")
        if self.task == "single":
            return self._report_from_codes(rows)
        if self.task == "regression":
            return self._report_from_stats(rows)
        return self._compute(self.y_true[rows], self.y_pred[rows], self.groups.iloc[rows].reset_index(drop=True))

    def _compute(self, y_true: np.ndarray, y_pred: np.ndarray, groups: pd.DataFrame) -> GroupReport:
        options = {"s_min": self.s_min, "gap_op": self.gap_op, "class_agg": self.class_agg}
        if self.task == "single":
            return GroupReport.compute(y_true, y_pred, self.classes, groups, self.attribute, self.stratum, **options)
        return GroupReport.compute_multilabel(y_true, y_pred, self.classes, groups, self.attribute, self.stratum,
                                              **options)

    def _report_from_codes(self, rows: np.ndarray) -> GroupReport:
        """Single-label fast path: one ``bincount`` of precomputed cell codes, then ``from_counts``.

        Groups / strata that no row of ``rows`` holds are dropped, as :meth:`GroupReport.compute`
        (which only sees the values present) would.
        """
        full = self.full_report
        n_g, n_s, n_c = len(full.groups), len(full.strata), len(self.classes)
        counts = np.bincount(self._cell_codes[rows], minlength=(n_g + 1) * (n_s + 1) * n_c * n_c)
        counts = counts.reshape(n_g + 1, n_s + 1, n_c, n_c)
        keep_g = np.flatnonzero(counts[:n_g].sum((1, 2, 3)) > 0)
        keep_s = np.flatnonzero(counts[:, :n_s].sum((0, 2, 3)) > 0)
        counts = counts[np.append(keep_g, n_g)][:, np.append(keep_s, n_s)]
        return GroupReport.from_counts(
            counts, self.classes, self.attribute, self.stratum,
            [full.groups[i] for i in keep_g], [full.strata[j] for j in keep_s],
            s_min=self.s_min, gap_op=self.gap_op, class_agg=self.class_agg,
        )  # fmt: skip

    def _report_from_stats(self, rows: np.ndarray) -> GroupReport:
        """Regression fast path: per statistic one weighted ``bincount`` of the rows' precomputed cell ids, then
        the report from those sums (groups / strata no row of ``rows`` holds are dropped, as in
        :meth:`_report_from_codes`)."""
        full = self.full_report
        n_g, n_s = len(full.groups), len(full.strata)
        cells, stats = self.cell_ids()[rows], self._row_stats[rows]
        size = (n_g + 1) * (n_s + 1)
        sums = np.stack([np.bincount(cells, weights=stats[:, k], minlength=size) for k in range(stats.shape[1])], -1)
        sums = sums.reshape(n_g + 1, n_s + 1, -1)
        keep_g = np.flatnonzero(sums[:n_g, :, 0].sum(1) > 0)
        keep_s = np.flatnonzero(sums[:, :n_s, 0].sum(0) > 0)
        sums = sums[np.append(keep_g, n_g)][:, np.append(keep_s, n_s)]
        return GroupReport.from_counts(sums, (), self.attribute, self.stratum, [full.groups[i] for i in keep_g],
                                       [full.strata[j] for j in keep_s], s_min=self.s_min, task="regression")

    @cached_property
    def _row_stats(self) -> np.ndarray:
        """Per row, its regression statistics (:data:`~fairray.metrics._report.REGRESSION_STATS`)."""
        return regression_stats(self.y_true, self.y_pred)

    @cached_property
    def _cell_codes(self) -> np.ndarray:
        """Per row, the flat index of its (group, stratum, true, predicted) cell in the report counts."""
        n_c = len(self.classes)
        return (self.cell_ids() * n_c + self.y_true) * n_c + self.y_pred

    def cell_ids(self) -> np.ndarray:
        """Per row, the index ``g * (S + 1) + s`` of its (attribute group, stratum) cell in the full report.

        ``g`` indexes ``full_report.groups`` and ``s`` ``full_report.strata``; a missing attribute
        (stratum) value gets ``g = G`` (``s = S``), as in :attr:`GroupReport.counts`.
        """
        full = self.full_report
        g = _positions(self.groups[self.attribute], full.groups)
        s = (
            np.zeros(len(self), np.int64)
            if self.stratum is None
            else _positions(self.groups[self.stratum], full.strata)
        )
        return g * (len(full.strata) + 1) + s

    # --- persistence ---------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.npz`` file atomically (readers see nothing or the whole file); returns the path."""
        path = Path(path)
        columns = list(self.groups.columns)
        meta = {
            "format": FORMAT, "version": REGRESSION_VERSION if self.task == "regression" else VERSION, "classes": list(self.classes), "attribute": self.attribute,
            "stratum": self.stratum, "task": self.task, "s_min": self.s_min, "gap_op": self.gap_op,
            "class_agg": self.class_agg, "group_columns": columns, "has_prob": self.prob is not None,
        }  # fmt: skip
        arrays: dict[str, np.ndarray] = {
            "meta": np.array(json.dumps(meta)),
            "uid": self.uid,
            "speaker": self.speaker,
            "y_true": self.y_true,
            "y_pred": self.y_pred,
        }
        arrays |= {f"group_{i}": self.groups[c].to_numpy(dtype=str) for i, c in enumerate(columns)}
        if self.prob is not None:
            arrays["prob"] = self.prob
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Predictions:
        """Read a file written by :meth:`save`; any defect is a one-line :class:`DataError` naming file and key."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such predictions file")
        try:
            npz = np.load(path, allow_pickle=False)
        except Exception as err:  # zip, npy and OS errors all mean "not a predictions file"
            raise DataError(f"{path}: not a predictions .npz file ({type(err).__name__}: {_one_line(err)})") from None
        with npz:
            try:
                meta = _read_meta(path, _read(npz, path, "meta"))
                arrays = {k: _read(npz, path, k) for k in ("uid", "speaker", "y_true", "y_pred")}
                if meta["has_prob"]:
                    arrays["prob"] = _read(npz, path, "prob")
                columns = {c: _read(npz, path, f"group_{i}") for i, c in enumerate(meta["group_columns"])}
            except DataError:
                raise
            except Exception as err:  # a damaged member of the zip
                raise DataError(f"{path}: damaged predictions file ({type(err).__name__}: {_one_line(err)})") from None
        try:
            return cls(
                **arrays, groups=pd.DataFrame(columns), classes=tuple(meta["classes"]),
                attribute=meta["attribute"], stratum=meta["stratum"], task=meta["task"], s_min=meta["s_min"],
                gap_op=meta["gap_op"], class_agg=meta["class_agg"],
            )  # fmt: skip
        except (DataError, ConfigError) as err:
            raise DataError(f"{path}: {_one_line(err)}") from None


# --- helpers -----------------------------------------------------------------------------------


#: Values a :class:`Predictions` computes once from its outputs (dropped by :meth:`Predictions.with_outputs`);
#: ``_group_cells`` depends on the rows' groups only and is kept.
_CACHED = frozenset(n for n, v in vars(Predictions).items() if isinstance(v, cached_property)) - {"_group_cells"}


def _positions(column: pd.Series, values: Sequence[str]) -> np.ndarray:
    """Position of each (stripped) entry of ``column`` in ``values``; ``len(values)`` when not among them."""
    text = np.char.strip(column.to_numpy(dtype=str))
    codes = pd.Categorical(text, categories=list(values)).codes.astype(np.int64)
    codes[codes < 0] = len(values)
    return codes


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _read(npz: Any, path: Path, key: str) -> np.ndarray:
    if key not in npz.files:
        raise DataError(f"{path}: predictions file lacks the key {key!r}")
    return npz[key]


def _read_meta(path: Path, raw: np.ndarray) -> dict[str, Any]:
    if raw.shape != () or raw.dtype.kind != "U":
        raise DataError(
            f"{path}: key 'meta' must be a unicode scalar holding JSON; got dtype {raw.dtype}, shape {raw.shape}"
        )
    try:
        meta = json.loads(raw.item())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: key 'meta' is not valid JSON ({err.msg})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: key 'meta' does not describe a {FORMAT} file (meta key 'format')")
    if meta.get("version") not in _VERSIONS:
        raise DataError(
            f"{path}: predictions format version {meta.get('version')!r} is not one of "
            f"{', '.join(map(str, _VERSIONS))} (meta key 'version')"
        )
    if meta.get("version") == VERSION and meta.get("task") == "regression":
        raise DataError(f"{path}: task 'regression' needs predictions format version {REGRESSION_VERSION} "
                        "(meta key 'version')")
    for key in _META_FIELDS:
        if key not in meta:
            raise DataError(f"{path}: key 'meta' lacks the field {key!r}")
    return meta


def _strings(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"Predictions: {name} must be 1-D; got shape {arr.shape}")
    if arr.dtype.kind not in "UO" and arr.size:
        raise DataError(f"Predictions: {name} must hold strings; got dtype {arr.dtype}")
    # infer_dtype: "string" iff every element is a str (one pass in C; None/NaN/numbers make it "mixed")
    if arr.dtype.kind == "O" and arr.size and pd.api.types.infer_dtype(arr, skipna=False) != "string":
        raise DataError(f"Predictions: {name} must hold strings only (no None/NaN/numbers)")
    out = arr.astype(str)
    out.flags.writeable = False
    return out


def _group_frame(groups: Any, attribute: str, stratum: str | None) -> pd.DataFrame:
    if not isinstance(groups, pd.DataFrame):
        raise DataError(f"Predictions: groups must be a pandas DataFrame; got {type(groups).__name__}")
    columns = [attribute] + ([] if stratum is None else [stratum])
    missing = [c for c in columns if c not in groups.columns]
    if missing:
        raise DataError(f"Predictions: groups lacks column(s) {missing}; found columns {list(groups.columns)}")
    frame = {}
    for column in columns:
        raw = groups[column].to_numpy(dtype=object)
        frame[column] = np.where(pd.isna(raw), "", raw).astype(str).astype(object)
    return pd.DataFrame(frame)


def _targets(values: Any, name: str, task: str, n_classes: int) -> np.ndarray:
    if task == "regression":
        try:
            out = _continuous(values, name)
        except DataError as err:
            raise DataError(f"Predictions: {err}") from None
        out.flags.writeable = False
        return out
    arr = np.asarray(values)
    integral = np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_) or arr.size == 0
    if task == "single":
        if arr.ndim != 1 or not integral:
            raise DataError(
                f"Predictions: {name} must be 1-D integer class indices; got dtype {arr.dtype}, shape {arr.shape}"
            )
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise DataError(f"Predictions: {name} holds class indices outside 0..{n_classes - 1}")
    else:
        if arr.ndim != 2 or arr.shape[1] != n_classes or not integral:
            raise DataError(
                f"Predictions: {name} must be a 0/1 integer array [N, {n_classes}]; got dtype {arr.dtype}, shape {arr.shape}"
            )
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise DataError(f"Predictions: {name} must hold only 0 and 1 (multi-hot)")
    out = arr.astype(np.int64)
    out.flags.writeable = False
    return out


def _probabilities(values: Any, n_classes: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 2 or arr.shape[1] != n_classes or not np.issubdtype(arr.dtype, np.number):
        raise DataError(
            f"Predictions: prob must be a float array [N, {n_classes}]; got dtype {arr.dtype}, shape {arr.shape}"
        )
    out = arr.astype(arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64, copy=True)
    out.flags.writeable = False
    return out
