"""Per-group evaluation computed once (METHODS §2.1–2.6).

:meth:`GroupReport.compute` (single-label) counts one confusion matrix per (group, stratum) cell
with a single ``np.bincount``; :meth:`GroupReport.compute_multilabel` (multi-hot targets and
decisions, the ES/IDI convention) counts one binary confusion matrix per (cell, class). Both are
turned into the same per-class one-vs-rest TP/FP/FN/TN counts (for single-label they are exactly
the one-vs-rest counts of the C×C matrix), from which one code path derives every utility, support
and gap into one long table. ``flat``, ``get``, ``table``, ``to_json`` and :func:`format_report`
only read that table.

Which metrics a report carries depends on its ``task`` (``MetricSpec.tasks``):

- single-label: ``acc`` (exact match) and every gap, including the MinMaxGAP ones (§2.5);
- multi-label: ``hamming_acc`` instead of ``acc``, and no ``acc_gap`` / ``avg_gap``. Exact-match
  (subset) accuracy is not an ES/IDI metric, is not determined by the per-class counts a report
  keeps (so ``from_counts`` could not rebuild it), and under the same key would read as the
  single-label accuracy; ``avg_gap`` needs ``acc_gap`` and with another component would be a
  different number under the same name. ``uar_gap``, ``mfpr_gap`` and ``weighted_f1_gap`` are the
  ranges over groups of the per-group ``uar``, mean FPR and ``weighted_f1`` — per-class quantities,
  the same formulas on binary class columns — and are reported for both tasks.

Each class-wise gap (``tpr_gap``, ``fpr_gap``, ``dp_gap``) uses the report's ``gap_op`` (default
``sum_abs_dev``) and is reported beside its ``range`` variant (``tpr_gap_range`` ...: max_g r_gc - min_g r_gc,
same class aggregation; :data:`~fairray.metrics.GAP_OP_VARIANTS`), so either can be a search objective
(METHODS §2.4: the two agree for two groups and differ for three or more).

Absent metrics are absent keys (``get`` raises ``KeyError`` naming the task), never NaN stand-ins.
All values are fractions in [0, 1] (MMG tables print them in %). Undefined values are NaN, never 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import pandas as pd

from fairray.errors import ConfigError, DataError
from fairray.metrics._keys import (
    CLASSIFICATION_TASKS,
    METRICS,
    MISSING_VALUES,
    SPLITS,
    STRATUM_AGGREGATES,
    TASKS,
    MetricKey,
    is_safe_name,
    task_metrics,
)

GAP_OPS = ("sum_abs_dev", "range", "mad")
CLASS_AGGS = ("rms", "mean", "max")
TABLE_COLUMNS = (
    "scope", "metric", "attr", "group", "stratum", "stratum_value", "value", "support", "n_classes", "n_strata",
)  # fmt: skip
_NUMERIC_COLUMNS = ("value", "support", "n_classes", "n_strata")
_PARTITION_METRICS = {task: (*task_metrics(task, "utility"), *(m for m in task_metrics(task, "count")
                                                                if METRICS[m].layout == "partition"))
                      for task in TASKS}
_GAPS = {task: task_metrics(task, "gap") for task in TASKS}


@dataclass(frozen=True, eq=False)
class GroupReport:
    """Utilities, supports and fairness gaps of one prediction set, per attribute group and stratum.

    Attributes
    ----------
    classes, attribute, stratum : the class names, the protected attribute column and the
        stratum column (``None``: no strata).
    groups, strata : the attribute / stratum values found (sorted); missing values are excluded.
    counts : per cell, index ``G`` holding samples with a missing attribute and ``S`` those with a
        missing (or no) stratum. Single-label: int array ``[G+1, S+1, C, C]`` of (true, predicted)
        counts. Multi-label: ``[G+1, S+1, C, 2, 2]``, per class the binary (true, predicted) counts,
        i.e. ``[..., c, 0, 0]`` = TN, ``[0, 1]`` = FP, ``[1, 0]`` = FN, ``[1, 1]`` = TP.
    columns : the long table (see :meth:`table`) as ``{column: list}``, one entry per metric key; the
        pandas ``frame`` is built from it on first use (an epoch's report is read as a dict, not a frame).
    task : ``"single"`` (:meth:`compute`) or ``"multi"`` (:meth:`compute_multilabel`); fixes the
        layout of ``counts`` and which metrics the table holds (see the module docstring).

    Examples
    --------
    >>> r = GroupReport.compute([0, 1, 1, 0], [0, 1, 0, 0], ["a", "b"],
    ...                         pd.DataFrame({"gender": list("FFMM")}), stratum=None)
    >>> r.get("dev/acc_gap/gender")
    0.5
    """

    classes: tuple[str, ...]
    attribute: str
    stratum: str | None
    groups: tuple[str, ...]
    strata: tuple[str, ...]
    s_min: int
    gap_op: str
    class_agg: str
    counts: np.ndarray = field(repr=False)
    columns: Mapping[str, list] = field(repr=False)
    task: str = "single"
    #: each row's key without the split (``acc/gender:F``), when the builder knows them; else read from ``columns``
    row_keys: tuple[str, ...] | None = field(default=None, repr=False)

    @cached_property
    def frame(self) -> pd.DataFrame:
        """The long table as a DataFrame (see :meth:`table`), built once on first use."""
        frame = pd.DataFrame({c: self.columns[c] for c in TABLE_COLUMNS})
        for col in _NUMERIC_COLUMNS:
            frame[col] = frame[col].astype(float)
        return frame

    @classmethod
    def compute(
        cls,
        y_true: Sequence[int] | np.ndarray,
        y_pred: Sequence[int] | np.ndarray,
        classes: Sequence[str],
        groups: pd.DataFrame,
        attribute: str = "gender",
        stratum: str | None = "language",
        *,
        s_min: int = 1,
        gap_op: str = "sum_abs_dev",
        class_agg: str = "rms",
    ) -> GroupReport:
        """Evaluate integer predictions over classes ``0..C-1`` against ``groups[attribute]``.

        ``groups`` holds one row per sample with the attribute column and, unless ``stratum`` is
        None, the stratum column. Samples whose value is missing (NaN, ``U`` ...; see
        :data:`MISSING_VALUES`) count in the overall numbers but not in that column's groups.
        """
        return cls._from_cells(_encode_cells(groups, attribute, stratum), y_true, y_pred, classes, groups, attribute,
                               stratum, s_min=s_min, gap_op=gap_op, class_agg=class_agg, task="single")

    @classmethod
    def compute_multilabel(
        cls,
        y_true: Sequence[Sequence[int]] | np.ndarray,
        y_pred: Sequence[Sequence[int]] | np.ndarray,
        classes: Sequence[str],
        groups: pd.DataFrame,
        attribute: str = "gender",
        stratum: str | None = "language",
        *,
        s_min: int = 1,
        gap_op: str = "sum_abs_dev",
        class_agg: str = "rms",
    ) -> GroupReport:
        """Evaluate multi-hot decisions ``y_pred [N, C]`` against multi-hot targets ``y_true [N, C]`` (0/1).

        The multi-label counterpart of :meth:`compute` (METHODS §2.1–2.4, the ES/IDI convention):
        column ``c`` is the binary label of class ``classes[c]``; see :func:`multi_hot` and
        :func:`decide` for deriving both from soft labels and probabilities. The report has
        ``task="multi"``: ``hamming_acc`` instead of ``acc``, F1/uar/fpr over the class columns,
        the class-wise gaps (``tpr_gap``, ``fpr_gap``, ``dp_gap``) for any number of groups, and
        no ``acc_gap`` / ``avg_gap``. ``groups``, missing values and strata as in :meth:`compute`.
        """
        return cls._from_cells(_encode_cells(groups, attribute, stratum), y_true, y_pred, classes, groups, attribute,
                               stratum, s_min=s_min, gap_op=gap_op, class_agg=class_agg, task="multi")

    @classmethod
    def compute_regression(
        cls,
        y_true: Sequence[float] | np.ndarray,
        y_pred: Sequence[float] | np.ndarray,
        groups: pd.DataFrame,
        attribute: str = "gender",
        stratum: str | None = "language",
        *,
        s_min: int = 1,
    ) -> GroupReport:
        """Evaluate continuous predictions ``y_pred [N]`` against continuous targets ``y_true [N]``.

        A report of ``task="regression"`` (no classes): ``mae``, ``corr`` (Pearson), ``acc2`` and ``f1_2``
        (MulT's ``eval_mosei_senti`` with ``exclude_zero=True``: samples with ``y == 0`` left out, then
        ``1[ŷ > 0]`` against ``1[y > 0]``; ``f1_2`` the support-weighted F1 of those two classes, 0 where
        undefined as sklearn's), ``n`` and ``n_nonzero`` per partition, and the ranges of the four over the
        groups with at least ``s_min`` samples (``mae_gap`` ...). ``counts`` holds per-cell sufficient
        statistics (:data:`REGRESSION_STATS`), from which every value is derived, so a bootstrap replicate
        costs one weighted ``bincount`` per statistic.
        """
        return cls._from_regression_cells(_encode_cells(groups, attribute, stratum), y_true, y_pred, groups,
                                          attribute, stratum, s_min=s_min)

    @classmethod
    def _from_regression_cells(cls, cells, y_true, y_pred, groups: pd.DataFrame, attribute: str,
                               stratum: str | None, *, s_min: int) -> GroupReport:
        _check_options(s_min, "sum_abs_dev", "rms")
        y_true = _continuous(y_true, "y_true")
        y_pred = _continuous(y_pred, "y_pred")
        if len(y_true) != len(y_pred) or len(groups) != len(y_true):
            raise DataError(f"length mismatch: y_true {len(y_true)}, y_pred {len(y_pred)}, groups {len(groups)} rows")
        g_idx, group_values, s_idx, stratum_values = cells
        n_s = len(stratum_values)
        cell = g_idx * (n_s + 1) + s_idx
        size = (len(group_values) + 1) * (n_s + 1)
        stats = regression_stats(y_true, y_pred)
        counts = np.stack([np.bincount(cell, weights=stats[:, k], minlength=size) for k in range(stats.shape[1])], -1)
        return cls._from_regression_stats(counts.reshape(len(group_values) + 1, n_s + 1, -1), attribute, stratum,
                                          group_values, stratum_values, s_min=s_min)

    @classmethod
    def _from_regression_stats(cls, stats: np.ndarray, attribute: str, stratum: str | None,
                               groups: tuple[str, ...], strata: tuple[str, ...], *, s_min: int) -> GroupReport:
        expected = (len(groups) + 1, len(strata) + 1, len(REGRESSION_STATS))
        if stats.shape != expected:
            raise DataError(f"regression statistics must have shape {expected} (groups+1, strata+1, "
                            f"{', '.join(REGRESSION_STATS)}); got {stats.shape}")
        columns = _build_regression_columns(stats, attribute, stratum, groups, strata, s_min)
        return cls((), attribute, stratum, groups, strata, s_min, "sum_abs_dev", "rms", stats, columns, "regression")

    @classmethod
    def _from_cells(cls, cells: tuple[np.ndarray, tuple[str, ...], np.ndarray, tuple[str, ...]], y_true, y_pred,
                    classes: Sequence[str], groups: pd.DataFrame, attribute: str, stratum: str | None, *, s_min: int,
                    gap_op: str, class_agg: str, task: str) -> GroupReport:
        """:meth:`compute` (``task="single"``) or :meth:`compute_multilabel` (``"multi"``) from the rows' cells as
        :func:`_encode_cells` gives them for ``groups`` — which a caller evaluating the same rows again (an
        epoch's :class:`~fairray.metrics.Predictions`) computes once."""
        labels = _labels if task == "single" else _binary_labels
        classes, y_true, y_pred = _check_inputs(classes, y_true, y_pred, groups, labels, s_min, gap_op, class_agg)
        n_classes = len(classes)
        g_idx, group_values, s_idx, stratum_values = cells
        n_g, n_s = len(group_values), len(stratum_values)
        if task == "single":
            flat_idx = ((g_idx * (n_s + 1) + s_idx) * n_classes + y_true) * n_classes + y_pred
            counts = np.bincount(flat_idx, minlength=(n_g + 1) * (n_s + 1) * n_classes * n_classes)
            counts = counts.reshape(n_g + 1, n_s + 1, n_classes, n_classes)
        else:
            cell = (g_idx * (n_s + 1) + s_idx)[:, None] * n_classes + np.arange(n_classes)
            flat_idx = (cell * 2 + y_true) * 2 + y_pred
            counts = np.bincount(flat_idx.reshape(-1), minlength=(n_g + 1) * (n_s + 1) * n_classes * 4)
            counts = counts.reshape(n_g + 1, n_s + 1, n_classes, 2, 2)
        return cls.from_counts(
            counts, classes, attribute, stratum, group_values, stratum_values,
            s_min=s_min, gap_op=gap_op, class_agg=class_agg, task=task,
        )  # fmt: skip

    @classmethod
    def from_counts(
        cls,
        counts: np.ndarray,
        classes: Sequence[str],
        attribute: str,
        stratum: str | None,
        groups: Sequence[str],
        strata: Sequence[str],
        *,
        s_min: int = 1,
        gap_op: str = "sum_abs_dev",
        class_agg: str = "rms",
        task: str | None = None,
    ) -> GroupReport:
        """Build the report from cell counts (see ``counts``).

        ``task`` is ``"single"`` for confusion counts ``[G+1, S+1, C, C]`` and ``"multi"`` for
        per-class binary counts ``[G+1, S+1, C, 2, 2]``; ``None`` reads it from the number of
        dimensions (4 or 5).
        """
        _check_options(s_min, gap_op, class_agg)
        if task == "regression":
            return cls._from_regression_stats(np.asarray(counts, dtype=np.float64), attribute, stratum,
                                              tuple(groups), tuple(strata), s_min=s_min)
        counts = np.asarray(counts, dtype=np.int64)
        if task is None:
            task = "multi" if counts.ndim == 5 else "single"
        if task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
        n_classes = len(classes)
        tail, names = ((n_classes, n_classes), "C, C") if task == "single" else ((n_classes, 2, 2), "C, 2, 2")
        expected = (len(groups) + 1, len(strata) + 1, *tail)
        if counts.shape != expected:
            raise DataError(
                f"{task}-label counts must have shape {expected} (groups+1, strata+1, {names}); got {counts.shape}"
            )
        if task == "multi" and n_classes:
            per_class = counts.sum((-2, -1))
            if not (per_class == per_class[..., :1]).all():
                raise DataError("multi-label counts: every class's 2x2 table of a cell must sum to the cell's samples")
        columns, keys = _build_columns(
            counts, attribute, stratum, tuple(groups), tuple(strata), s_min, gap_op, class_agg, task
        )  # fmt: skip
        return cls(
            tuple(classes), attribute, stratum, tuple(groups), tuple(strata),
            s_min, gap_op, class_agg, counts, columns, task, keys,
        )  # fmt: skip

    @cached_property
    def _index(self) -> dict[str, float]:
        """``{key without split: value}``, built once from the columns."""
        c = self.columns
        keys = self.row_keys
        if keys is None:
            keys = map(_suffix, *(map(_none_if_missing, c[name]) for name in TABLE_COLUMNS[1:6]))
        return dict(zip(keys, map(float, c["value"]), strict=True))

    @property
    def n_excluded(self) -> int:
        """Samples with a missing attribute value."""
        if self.task == "regression":
            return int(round(float(self.counts[-1][..., 0].sum())))
        return int(_sample_counts(self.counts[-1], self.task).sum())

    def flat(self, split: str) -> dict[str, float]:
        """Every metric as ``{'{split}/{metric}...': value}`` (supports as float, NaN kept)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        return {f"{split}/{k}": v for k, v in self._index.items()}

    def get(self, key: str | MetricKey) -> float:
        """One value by key; the split part is not checked (a report does not know its split)."""
        if isinstance(key, str):
            key = MetricKey.parse(key, strata=() if self.stratum is None else (self.stratum,))
        suffix = key.format().split("/", 1)[1]
        try:
            return self._index[suffix]
        except KeyError:
            if key.metric in METRICS and key.metric not in self.metrics:
                other = {"acc": "hamming_acc", "hamming_acc": "acc"}.get(key.metric)
                hint = f" (it has {other!r})" if other in self.metrics else ""
                raise KeyError(
                    f"{key.format()!r}: a {self.task}-label report has no {key.metric!r}{hint}; "
                    f"its metrics are {', '.join(self.metrics)}"
                ) from None
            raise KeyError(
                f"{key.format()!r} is not in this report: metrics {', '.join(self.metrics)}; attribute "
                f"{self.attribute!r} with groups {list(self.groups)}; stratum {self.stratum!r} with values "
                f"{list(self.strata)}"
            ) from None

    @property
    def metrics(self) -> tuple[str, ...]:
        """Names of the metrics this report holds (they depend on ``task``)."""
        return task_metrics(self.task)

    def supports(self) -> pd.DataFrame:
        """Support of every per-group rate cell (§2.3, §2.6.5), read from ``counts``.

        One row per known group x stratum value (or group alone without strata) x class, in the
        order of ``strata``, ``groups`` and ``classes``: columns ``stratum_value`` (None without
        strata), ``group``, ``class``, ``positives`` (``P_gc``, TPR's support), ``negatives``
        (``Q_gc``, FPR's) and ``n`` (``n_g``, PPR's). Samples with a missing attribute or stratum
        are in no row.
        """
        if self.task == "regression":
            raise DataError("a regression report has no per-class supports (its groups' n is in the table)")
        n_g, n_s = len(self.groups), len(self.strata)
        binary = _one_vs_rest(self.counts) if self.task == "single" else self.counts
        if n_s:
            cells = binary[:n_g, :n_s].transpose(1, 0, 2, 3, 4)  # [S, G, C, 2, 2]
            strata: tuple[str | None, ...] = self.strata
        else:
            cells, strata = binary[:n_g].sum(1)[None], (None,)  # no strata: the group's every sample
        r = _rates(cells)
        index = pd.MultiIndex.from_product([strata, self.groups, self.classes],
                                           names=["stratum_value", "group", "class"])
        frame = pd.DataFrame({"positives": r["pos"].reshape(-1), "negatives": r["neg"].reshape(-1),
                              "n": np.broadcast_to(r["n"][..., None], r["pos"].shape).reshape(-1)}, index=index)
        return frame.reset_index().astype({"positives": int, "negatives": int, "n": int})

    def thin_cells(self) -> pd.DataFrame:
        """The rows of :meth:`supports` whose TPR is undefined: ``positives < s_min`` (§2.3), left out of gaps."""
        frame = self.supports()
        return frame[frame["positives"] < self.s_min].reset_index(drop=True)

    def table(self) -> pd.DataFrame:
        """The long per-group table, one row per key (a copy).

        Columns: ``scope`` (overall, group, stratum, cell, gap), ``metric``, ``attr``, ``group``,
        ``stratum``, ``stratum_value`` (a stratum value, or ``worst``/``mean``), ``value``,
        ``support`` (samples behind the value; for gaps those with a known attribute),
        ``n_classes`` (classes entering a class-wise gap) and ``n_strata`` (strata behind worst/mean).
        """
        return self.frame.copy()

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (NaN as None) holding the task, the options, the counts and the table."""
        rows = self.frame.astype(object).where(self.frame.notna(), None).to_dict(orient="records")
        return {
            "task": self.task,
            "classes": list(self.classes),
            "attribute": self.attribute,
            "stratum": self.stratum,
            "groups": list(self.groups),
            "strata": list(self.strata),
            "s_min": self.s_min,
            "gap_op": self.gap_op,
            "class_agg": self.class_agg,
            "counts": self.counts.tolist(),
            "rows": rows,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GroupReport:
        """Inverse of :meth:`to_json`; the table is read back, not recomputed.

        JSON written before multi-label reports existed has no ``task`` and reads as single-label.
        """
        task = data.get("task", "single")
        if task not in TASKS:
            raise DataError(f"GroupReport JSON has task {task!r}; expected one of {', '.join(TASKS)}")
        try:
            rows = data["rows"]
            columns = {c: [_json_value(r.get(c), c) for r in rows] for c in TABLE_COLUMNS}
            counts = np.asarray(data["counts"], dtype=np.float64 if task == "regression" else np.int64)
            return cls(
                tuple(data["classes"]), data["attribute"], data["stratum"], tuple(data["groups"]),
                tuple(data["strata"]), int(data["s_min"]), data["gap_op"], data["class_agg"],
                counts, columns, task,
            )  # fmt: skip
        except KeyError as err:
            raise DataError(f"GroupReport JSON lacks the field {err}") from None


# --- decisions and targets (§1.2, §2.1) ------------------------------------------------------------


def decide(prob: Any, task: str, *, fallback_argmax: bool = False) -> np.ndarray:
    """§2.1 decisions from class probabilities ``prob [..., C]`` (class axis last).

    - ``task="single"``: ``argmax_c p_c`` (first class on ties), int64 ``[...]``.
    - ``task="multi"``: ``1[p_c > 1/|C|]``, strict, on the given (softmax) probabilities — the
      threshold of the targets (:func:`multi_hot`); int64 0/1 ``[..., C]``. The threshold is taken
      in the input's float type, so a uniform float32 softmax row (``p_c`` = float32 ``1/6``) is all
      negative, as it is in float64. ``fallback_argmax`` (METHODS §2.1's ``pred_fallback_argmax``, default
      off; not a spec key yet) makes the argmax class positive in rows with no positive, so every sample predicts at
      least one class; it changes nothing for single-label decisions.

    >>> decide([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2]], "single").tolist()
    [0, 0]
    >>> decide([[0.5, 0.3, 0.2], [1 / 3, 1 / 3, 1 / 3]], "multi").tolist()
    [[1, 0, 0], [0, 0, 0]]
    >>> decide([[1 / 3, 1 / 3, 1 / 3]], "multi", fallback_argmax=True).tolist()
    [[1, 0, 0]]
    """
    if task not in CLASSIFICATION_TASKS:  # a regression's decision is its output itself
        raise ConfigError(f"decide: task must be one of {', '.join(CLASSIFICATION_TASKS)}; got {task!r}")
    p = _class_scores(prob, "prob")
    if task == "single":
        return p.argmax(-1).astype(np.int64)
    positive = _above_uniform(p)
    if fallback_argmax:
        none = ~positive.any(-1, keepdims=True)
        positive |= none & (np.arange(p.shape[-1]) == p.argmax(-1)[..., None])
    return positive.astype(np.int64)


def multi_hot(soft: Any) -> np.ndarray:
    """§1.2 multi-hot targets ``y_c = 1[t_c > 1/|C|]`` (strict) of soft labels ``soft [..., C]``; int64 0/1.

    The ES/IDI convention: with |C| = 6 two votes out of ten make a class positive, and a share of
    exactly ``1/|C|`` does not (compared in the input's float type, as :func:`decide`).

    >>> multi_hot([[0.6, 0.2, 0.2], [0.5, 0.5, 0.0]]).tolist()
    [[1, 0, 0], [1, 1, 0]]
    """
    return _above_uniform(_class_scores(soft, "soft")).astype(np.int64)


def _class_scores(values: Any, name: str) -> np.ndarray:
    """``values`` as a float array with at least two classes on its last axis, all finite."""
    arr = np.asarray(values)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{name} must be numeric class scores; got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if arr.ndim < 1 or arr.shape[-1] < 2:
        raise DataError(f"{name} must have at least two classes on its last axis; got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError(f"{name} holds non-finite values (NaN or inf)")
    return arr


def _above_uniform(p: np.ndarray) -> np.ndarray:
    """``p > 1/|C|`` with the threshold computed in ``p``'s float type."""
    one = p.dtype.type(1)
    return p > one / p.dtype.type(p.shape[-1])


def evaluate_frame(
    df: pd.DataFrame,
    *,
    group: str,
    stratum: str | None,
    classes: Sequence[str] | None = None,
    s_min: int = 1,
    gap_op: str = "sum_abs_dev",
    class_agg: str = "rms",
) -> GroupReport:
    """Evaluate a predictions table: ``y_true``, ``y_pred`` (class names) and the group/stratum columns —
    or, multi-label (what ``fairray predict`` writes for ``targets: multi``), 0/1 columns ``true_<class>`` and
    ``pred_<class>``.

    The class list is ``classes`` if given, else the ``p_<class>`` probability columns in column
    order, else the sorted union of ``y_true`` and ``y_pred`` (multi-label: the ``true_<class>`` columns).
    """
    if "y_true" not in df.columns and any(str(c).startswith("true_") for c in df.columns):
        return _evaluate_multilabel(df, group=group, stratum=stratum, classes=classes, s_min=s_min, gap_op=gap_op,
                                    class_agg=class_agg)
    needed = ["y_true", "y_pred", group] + ([] if stratum is None else [stratum])
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"predictions table lacks column(s) {missing}; found columns {list(df.columns)}")
    y_true, y_pred = df["y_true"].astype(str), df["y_pred"].astype(str)
    if df["y_true"].isna().any() or df["y_pred"].isna().any():
        raise DataError("predictions table has empty y_true/y_pred cells")
    if classes is None:
        prob_columns = [str(c)[2:] for c in df.columns if str(c).startswith("p_")]
        classes = prob_columns or sorted(set(y_true) | set(y_pred))
    classes = [str(c) for c in classes]
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted((set(y_true) | set(y_pred)) - set(index))
    if unknown:
        raise DataError(f"labels {unknown} in y_true/y_pred are not among the classes {classes}")
    return GroupReport.compute(
        y_true.map(index).to_numpy(), y_pred.map(index).to_numpy(), classes, df, group, stratum,
        s_min=s_min, gap_op=gap_op, class_agg=class_agg,
    )  # fmt: skip


def _evaluate_multilabel(df: pd.DataFrame, *, group: str, stratum: str | None, classes: Sequence[str] | None,
                         s_min: int, gap_op: str, class_agg: str) -> GroupReport:
    if classes is None:
        classes = [str(c)[len("true_"):] for c in df.columns if str(c).startswith("true_")]
    classes = [str(c) for c in classes]
    needed = [f"{kind}_{c}" for kind in ("true", "pred") for c in classes] + [group]
    needed += [] if stratum is None else [stratum]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"multi-label predictions table lacks column(s) {missing}; found columns {list(df.columns)}")
    arrays = {}
    for kind in ("true", "pred"):
        block = df[[f"{kind}_{c}" for c in classes]].apply(pd.to_numeric, errors="coerce")  # CSVs read as text
        if block.isna().any().any() or not block.isin([0, 1]).all().all():
            raise DataError(f"multi-label predictions table: {kind}_<class> columns must hold 0 or 1 in every row")
        arrays[kind] = block.to_numpy(dtype=np.int64)
    return GroupReport.compute_multilabel(arrays["true"], arrays["pred"], classes, df, group, stratum,
                                          s_min=s_min, gap_op=gap_op, class_agg=class_agg)


def _check_inputs(classes, y_true, y_pred, groups: pd.DataFrame, labels, s_min: int, gap_op: str, class_agg: str
                  ) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Options, class list and label arrays of :meth:`GroupReport.compute` / ``compute_multilabel``."""
    _check_options(s_min, gap_op, class_agg)
    classes = tuple(str(c) for c in classes)
    if len(classes) < 2:
        raise DataError(f"need at least two classes; got {list(classes)}")
    y_true = labels(y_true, "y_true", len(classes))
    y_pred = labels(y_pred, "y_pred", len(classes))
    if len(y_true) != len(y_pred) or len(groups) != len(y_true):
        raise DataError(f"length mismatch: y_true {len(y_true)}, y_pred {len(y_pred)}, groups {len(groups)} rows")
    return classes, y_true, y_pred


def format_thin_cells(report: GroupReport, split: str = "dev", limit: int = 10) -> str | None:
    """One line naming the cells of ``report`` whose TPR is undefined (:meth:`GroupReport.thin_cells`), or None.

    ``stratum/group/class (positives)``, the first ``limit`` of them and a count of the rest:

    >>> r = GroupReport.compute([0, 0, 1, 0, 0], [0, 0, 1, 0, 0], ["anger", "fear"],
    ...                         pd.DataFrame({"gender": list("FFFMM"), "language": ["de"] * 5}), s_min=2)
    >>> format_thin_cells(r)
    'dev cells below s_min=2 (their TPR is undefined and left out of gaps): de/F/fear (1), de/M/fear (0)'
    """
    if not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"format_thin_cells: limit must be an integer >= 1; got {limit!r}")
    thin = report.thin_cells()
    if thin.empty:
        return None
    names = ["/".join(str(v) for v in (s, g, c) if v is not None) + f" ({p})"
             for s, g, c, p in zip(thin["stratum_value"], thin["group"], thin["class"], thin["positives"], strict=True)]
    more = f", ... and {len(names) - limit} more" if len(names) > limit else ""
    return (f"{split} cells below s_min={report.s_min} (their TPR is undefined and left out of gaps): "
            f"{', '.join(names[:limit])}{more}")


def format_report(report: GroupReport, split: str = "test", fmt: str = "table") -> str:
    """Render a report as a plain-text table (``fmt='table'``) or the flat dict as JSON (``'json'``)."""
    if fmt == "json":
        flat = {k: (None if np.isnan(v) else v) for k, v in report.flat(split).items()}
        return json.dumps(flat, indent=2, allow_nan=False)
    if fmt != "table":
        raise ConfigError(f"format_report: fmt must be 'table' or 'json'; got {fmt!r}")
    frame = report.frame
    task = "" if report.task == "single" else f" ({report.task}-label)"
    head = (
        f"{split}: {len(report.classes)} classes{task}, attribute {report.attribute!r} "
        f"(groups {', '.join(report.groups) or '-'}; {report.n_excluded} excluded), stratum {report.stratum!r}, "
        f"s_min={report.s_min}, gap_op={report.gap_op}, class_agg={report.class_agg}"
    )
    part = frame[frame["scope"] != "gap"]
    labels = [
        k.partition("/")[2] or "overall"
        for k, scope in zip(report._index, frame["scope"], strict=True)
        if scope != "gap"
    ]
    utility = _render(
        part.assign(row=labels), "row", "metric", ["n", *task_metrics(report.task, "utility"), "n_undefined_f1", "n_nonzero"]
    )
    gaps = frame[frame["scope"] == "gap"]
    columns = gaps["stratum_value"].fillna("pooled")
    order = ["pooled", *report.strata, *STRATUM_AGGREGATES]
    row_order = [*task_metrics(report.task, "gap"), *task_metrics(report.task, "count")]
    gap_text = _render(gaps.assign(column=columns), "metric", "column", order, row_order=row_order)
    return f"{head}\n\nutility and support\n{utility}\n\ngaps between {report.attribute} groups\n{gap_text}\n"


# --- computation -----------------------------------------------------------------------------


def _check_options(s_min: int, gap_op: str, class_agg: str) -> None:
    if not isinstance(s_min, (int, np.integer)) or isinstance(s_min, bool) or s_min < 1:
        raise ConfigError(f"s_min must be an integer >= 1; got {s_min!r}")
    if gap_op not in GAP_OPS:
        raise ConfigError(f"gap_op must be one of {', '.join(GAP_OPS)}; got {gap_op!r}")
    if class_agg not in CLASS_AGGS:
        raise ConfigError(f"class_agg must be one of {', '.join(CLASS_AGGS)}; got {class_agg!r}")


def _labels(values: Any, name: str, n_classes: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise DataError(
            f"{name} must be a 1-D array of integer class indices; got dtype {arr.dtype}, shape {arr.shape}"
        )
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        bad = sorted(set(arr[(arr < 0) | (arr >= n_classes)].tolist()))
        raise DataError(f"{name} holds class indices outside 0..{n_classes - 1}: {bad}")
    return arr.astype(np.int64)


def _binary_labels(values: Any, name: str, n_classes: int) -> np.ndarray:
    """A ``[N, C]`` multi-hot array as int64; bool, integer or float input holding only 0 and 1."""
    arr = np.asarray(values)
    if arr.ndim != 2 or arr.shape[1] != n_classes:
        raise DataError(f"{name} must be a multi-hot array of shape [N, {n_classes}]; got shape {arr.shape}")
    if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
        raise DataError(f"{name} must hold 0/1 values; got dtype {arr.dtype}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        bad = sorted(set(arr[~np.isin(arr, (0, 1))].tolist()))[:5]
        raise DataError(f"{name} must hold only 0 and 1 (multi-hot); found {bad}")
    return arr.astype(np.int64)


def _encode_cells(
    groups: pd.DataFrame, attribute: str, stratum: str | None
) -> tuple[np.ndarray, tuple[str, ...], np.ndarray, tuple[str, ...]]:
    """Attribute codes and values, then stratum codes and values (all code 0 and no value without strata)."""
    g_idx, group_values = _encode(groups, attribute, "attribute")
    if stratum is None:
        return g_idx, group_values, np.zeros(len(groups), dtype=np.int64), ()
    s_idx, stratum_values = _encode(groups, stratum, "stratum")
    return g_idx, group_values, s_idx, stratum_values


def _encode(frame: pd.DataFrame, column: str, what: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer codes of ``frame[column]`` (missing values get code ``len(values)``) and the sorted values."""
    if column not in frame.columns:
        raise DataError(f"{what} column {column!r} not found; columns are {list(frame.columns)}")
    if not is_safe_name(column) or column in STRATUM_AGGREGATES:
        raise DataError(f"{what} column name {column!r} cannot appear in a metric key")
    raw = frame[column].to_numpy(dtype=object)
    text = np.char.strip(np.where(pd.isna(raw), "", raw).astype(str))
    unique, inverse = np.unique(text, return_inverse=True)
    known = ~np.isin(unique, list(MISSING_VALUES))
    values = tuple(unique[known].tolist())
    bad = [v for v in values if not is_safe_name(v) or (what == "stratum" and v in STRATUM_AGGREGATES)]
    if bad:
        raise DataError(
            f"{what} column {column!r} has values {bad} that cannot appear in a metric key "
            f"(letters, digits, '_', '-', '.', space; not {STRATUM_AGGREGATES}); recode them"
        )
    remap = np.full(len(unique), len(values), dtype=np.int64)
    remap[known] = np.arange(len(values))
    codes = remap[inverse.reshape(-1)]
    return codes, values


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with NaN where ``den == 0`` (and where ``den`` is not positive). The division only ever sees
    positive denominators, so it raises no floating-point warning and needs no ``np.errstate`` (whose context
    manager cost more than the division on a report's small arrays)."""
    positive = den > 0
    return np.where(positive, num / np.where(positive, den, 1), np.nan)


def _masked_mean(values: np.ndarray, mask: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean of ``values`` over ``mask`` along ``axis``; NaN where the mask is empty."""
    return _div(np.where(mask, values, 0.0).sum(axis), mask.sum(axis))


def _one_vs_rest(cm: np.ndarray) -> np.ndarray:
    """Per-class binary counts ``[..., C, 2, 2]`` (true, predicted) of confusion matrices ``[..., C, C]``.

    Class ``c`` against the rest: TP = ``cm[c, c]``, FN = the rest of row ``c``, FP = the rest of
    column ``c``, TN = everything else. These are exactly the counts a multi-label report keeps,
    so both tasks share :func:`_rates`, :func:`_utilities` and :func:`_gaps`.
    """
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    pos, pred = cm.sum(-1), cm.sum(-2)
    n = pos.sum(-1, keepdims=True)
    fn, fp = pos - tp, pred - tp
    tn = n - pos - fp
    return np.stack([np.stack([tn, fp], -1), np.stack([fn, tp], -1)], -2)


def _sample_counts(counts: np.ndarray, task: str) -> np.ndarray:
    """Samples per entry of ``counts`` without its class axes (one class's 2x2 table sums to them)."""
    if task == "single":
        return counts.sum((-2, -1))
    return counts[..., :1, :, :].sum((-3, -2, -1))


def _rates(binary: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class counts of a stack of per-class binary tables ``[..., C, 2, 2]`` (true, predicted)."""
    tn, fp, fn, tp = binary[..., 0, 0], binary[..., 0, 1], binary[..., 1, 0], binary[..., 1, 1]
    n = _sample_counts(binary, "multi")
    return {"tp": tp, "tn": tn, "fp": fp, "fn": fn, "pos": tp + fn, "neg": fp + tn, "pred": tp + fp, "n": n}


def _utilities(binary: np.ndarray, s_min: int, task: str = "single") -> dict[str, np.ndarray]:
    """§2.2 utilities of each stack entry of per-class binary tables ``[..., C, 2, 2]`` (NaN on empty subsets).

    ``acc`` (single-label; the one-vs-rest TPs of a sample set sum to its correct samples) or
    ``hamming_acc`` (multi-label) by ``task``; the others are the same formulas for both.
    ``weighted_f1`` weighs by positives (their sum is ``n`` for single-label) and is NaN without any.
    """
    r = _rates(binary)
    tp, pos, n = r["tp"], r["pos"], r["n"]
    f1_den = 2 * tp + r["fp"] + r["fn"]
    f1 = np.nan_to_num(_div(2 * tp, f1_den))  # zero_division=0
    empty = n == 0
    out = {
        "weighted_f1": _div((pos * f1).sum(-1), pos.sum(-1)),
        "macro_f1": np.where(empty, np.nan, f1.mean(-1)),
        "uar": _masked_mean(_div(tp, pos), pos > 0),
        "fpr": _masked_mean(_div(r["fp"], r["neg"]), r["neg"] >= s_min),
        "n": n.astype(float),
        "n_undefined_f1": (f1_den == 0).sum(-1).astype(float),
    }
    if task == "single":
        out["acc"] = _div(tp.sum(-1), n)
    else:
        out["hamming_acc"] = _div((tp + r["tn"]).sum(-1), n * tp.shape[-1])
    return out


def _classwise_gap(
    num: np.ndarray, den: np.ndarray, defined: np.ndarray, gap_op: str, class_agg: str
) -> tuple[np.ndarray, np.ndarray]:
    """§2.4 gap of rate ``num/den`` over groups (axis -2) per class, aggregated over classes.

    Inputs are ``[..., B, G, C]`` (several rates stacked in front when given); returns the gap ``[..., B]`` and
    the number of classes kept ``[..., B]``. The overall rate of a class pools exactly the groups defined for it.
    """
    rate = np.where(defined, _div(num, den), np.nan)
    if gap_op == "sum_abs_dev":
        pooled = _div(np.where(defined, num, 0).sum(-2), np.where(defined, den, 0).sum(-2))
        gap = np.where(defined, np.abs(rate - pooled[..., None, :]), 0.0).sum(-2)
    elif gap_op == "range":
        gap = np.where(defined, rate, -np.inf).max(-2, initial=-np.inf) - np.where(defined, rate, np.inf).min(
            -2, initial=np.inf
        )
    else:  # mad
        centre = _masked_mean(rate, defined, axis=-2)
        gap = _masked_mean(np.abs(rate - centre[..., None, :]), defined, axis=-2)
    keep = defined.sum(-2) >= 2
    if class_agg == "rms":
        agg = np.sqrt(_masked_mean(np.where(keep, gap, 0.0) ** 2, keep))
    elif class_agg == "mean":
        agg = _masked_mean(gap, keep)
    else:
        agg = np.where(keep.any(-1), np.where(keep, gap, -np.inf).max(-1), np.nan)
    return agg, keep.sum(-1)


def _range(values: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """``max - min`` of ``values [B, G]`` over defined, finite groups; NaN with fewer than two."""
    ok = defined & np.isfinite(values)
    spread = np.where(ok, values, -np.inf).max(-1, initial=-np.inf) - np.where(ok, values, np.inf).min(
        -1, initial=np.inf
    )
    return np.where(ok.sum(-1) >= 2, spread, np.nan)


def _gaps(
    gcm: np.ndarray, s_min: int, gap_op: str, class_agg: str, task: str = "single",
    util: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """All gaps of ``task`` for a stack of per-group per-class binary tables ``[B, G, C, 2, 2]``.

    Returns ``{gap: [B]}``, ``{gap: classes kept [B]}`` (NaN for the scalar gaps) and the number
    of groups with at least ``s_min`` samples ``[B]``; a smaller group takes part in no gap.
    ``acc_gap`` and ``avg_gap`` are single-label only. ``util``: :func:`_utilities` of ``gcm`` when the
    caller has them already (a report's group and cell scopes are these tables).
    """
    r = _rates(gcm)
    n_g = np.broadcast_to(r["n"][..., None], r["tp"].shape)
    present = r["n"] >= s_min
    rates = {
        "tpr_gap": (r["tp"], r["pos"], r["pos"] >= s_min),
        "fpr_gap": (r["fp"], r["neg"], r["neg"] >= s_min),
        "dp_gap": (r["pred"], n_g, n_g >= s_min),
    }
    n_classes = {name: np.full(len(gcm), np.nan) for name in _GAPS[task]}
    classwise = [n for n in _GAPS[task] if (METRICS[n].base or n) in rates]  # class-wise gaps and their variants
    by_op: dict[str, list[str]] = {}  # a variant (tpr_gap_range ...) fixes its operator, the others take gap_op
    for name in classwise:
        by_op.setdefault(METRICS[name].gap_op or gap_op, []).append(name)
    found = {}
    for op, names in by_op.items():  # the rates of one operator stacked: one pass of array operations for all
        num, den, defined = (np.stack([rates[METRICS[n].base or n][k] for n in names]) for k in range(3))
        agg, kept = _classwise_gap(num, den, defined, op, class_agg)
        for k, name in enumerate(names):
            found[name], n_classes[name] = agg[k], kept[k]
    gaps = {name: found[name] for name in classwise}
    util = _utilities(gcm, s_min, task) if util is None else util
    fpr_defined = r["neg"] >= s_min
    common = np.all(fpr_defined | ~present[..., None], axis=1, keepdims=True)  # classes defined for all groups
    mean_fpr = _masked_mean(_div(r["fp"], r["neg"]), common & fpr_defined)
    gaps["uar_gap"] = _range(util["uar"], present)
    gaps["mfpr_gap"] = _range(mean_fpr, present)
    gaps["weighted_f1_gap"] = _range(util["weighted_f1"], present)
    if task == "single":
        gaps["acc_gap"] = _range(util["acc"], present)
        gaps["avg_gap"] = (gaps["uar_gap"] + gaps["mfpr_gap"] + gaps["weighted_f1_gap"] + gaps["acc_gap"]) / 4
    return gaps, n_classes, present.sum(-1)


REGRESSION_STATS = ("n", "abs_err", "y", "p", "yy", "pp", "yp", "tp", "fp", "fn", "tn")
"""Per-sample terms a regression report sums per (group, stratum) cell: the count, ``|ŷ - y|``, the moments of
Pearson's r, and the binary confusion of ``1[ŷ > 0]`` vs ``1[y > 0]`` over ``y != 0`` (MulT's exclude_zero)."""


def regression_stats(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """The :data:`REGRESSION_STATS` of each sample, float64 ``[N, 11]`` (their sums are a cell's statistics)."""
    y, p = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    nonzero = y != 0
    truth, pred = y > 0, p > 0
    return np.stack([np.ones_like(y), np.abs(p - y), y, p, y * y, p * p, y * p,
                     nonzero & truth & pred, nonzero & ~truth & pred, nonzero & truth & ~pred,
                     nonzero & ~truth & ~pred], -1).astype(np.float64)


def _regression_utilities(stats: np.ndarray) -> dict[str, np.ndarray]:
    """``mae``, ``corr``, ``acc2``, ``f1_2``, ``n``, ``n_nonzero`` of each stack entry of statistics ``[..., 11]``."""
    n, abs_err, sy, sp, syy, spp, syp, tp, fp, fn, tn = np.moveaxis(stats, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        var_y, var_p = n * syy - sy * sy, n * spp - sp * sp
        # a constant series has variance 0 up to rounding: below this relative size r is undefined (NaN)
        tiny = 1e-12 * np.maximum(n * syy, 1e-300)
        tiny_p = 1e-12 * np.maximum(n * spp, 1e-300)
        ok = (n >= 2) & (var_y > tiny) & (var_p > tiny_p)
        corr = np.where(ok, (n * syp - sy * sp) / np.sqrt(np.where(ok, var_y * var_p, 1.0)), np.nan)
    m = tp + fp + fn + tn
    f1_pos = np.nan_to_num(_div(2 * tp, 2 * tp + fp + fn))
    f1_neg = np.nan_to_num(_div(2 * tn, 2 * tn + fn + fp))
    return {"mae": _div(abs_err, n), "corr": np.clip(corr, -1.0, 1.0), "acc2": _div(tp + tn, m),
            "f1_2": _div((tp + fn) * f1_pos + (tn + fp) * f1_neg, m), "n": n.astype(float),
            "n_nonzero": m.astype(float)}


def _build_regression_columns(stats: np.ndarray, attr: str, stratum: str | None, groups: tuple[str, ...],
                              strata: tuple[str, ...], s_min: int) -> dict[str, list]:
    """The long table of a regression report from its cell statistics ``[G+1, S+1, 11]``, laid out as
    :func:`_build_columns` lays out a class-label one (gaps: ranges over the groups with ``n >= s_min``)."""
    n_g, n_s = len(groups), len(strata)
    table: list[tuple] = []

    def add(scope, metric, a, g, s, sv, value, support, n_str=np.nan):
        table.append((scope, metric, a, g, s, sv, value, support, np.nan, n_str))

    cells = [("overall", None, None, stats.sum((0, 1)))]
    cells += [("group", g, None, stats[i].sum(0)) for i, g in enumerate(groups)]
    cells += [("stratum", None, s, stats[:, j].sum(0)) for j, s in enumerate(strata)]
    cells += [("cell", g, s, stats[i, j]) for i, g in enumerate(groups) for j, s in enumerate(strata)]
    util = _regression_utilities(np.stack([c[3] for c in cells]))
    partition = _PARTITION_METRICS["regression"]
    values = {m: util[m].tolist() for m in partition}
    n_rows = util["n"].tolist()
    for k, (scope, g, s, _) in enumerate(cells):
        for metric in partition:
            add(scope, metric, None if g is None else attr, g, None if s is None else stratum, s,
                values[metric][k], n_rows[k])  # fmt: skip

    known = stats[:n_g]  # [G, S+1, K]
    per = np.concatenate([known.sum(1)[None], known[:, :n_s].transpose(1, 0, 2)])  # [1+S, G, K]
    u = _regression_utilities(per)
    present = u["n"] >= s_min
    gaps = {name: _range(u[name[: -len("_gap")]], present) for name in _GAPS["regression"]}
    samples = stats[..., 0]
    support = np.concatenate([[samples[:n_g].sum()], samples[:n_g, :n_s].sum(0)]).astype(float)
    excluded = np.concatenate([[samples[n_g].sum()], samples[n_g, :n_s]]).astype(float)
    scopes = [(None, None)] + [(stratum, s) for s in strata]
    for b, (s, sv) in enumerate(scopes):
        for metric in _GAPS["regression"]:
            add("gap", metric, attr, None, s, sv, gaps[metric][b], support[b])
        add("gap", "n_excluded", attr, None, s, sv, excluded[b], support[b] + excluded[b])
        add("gap", "n_groups_eff", attr, None, s, sv, float(present[b].sum()), support[b])
    if n_s:
        for metric in _GAPS["regression"]:
            per_stratum = gaps[metric][1:]
            ok = np.isfinite(per_stratum)
            worst = per_stratum[ok].max() if ok.any() else np.nan
            mean = per_stratum[ok].mean() if ok.any() else np.nan
            for agg, value in (("worst", worst), ("mean", mean)):
                add("gap", metric, attr, None, stratum, agg, value, support[1:][ok].sum(), float(ok.sum()))
    rows: dict[str, list] = {col: list(column) for col, column in zip(TABLE_COLUMNS, zip(*table, strict=True), strict=True)}
    for col in _NUMERIC_COLUMNS:
        rows[col] = [float(v) for v in rows[col]]
    return rows


def _continuous(values: Any, name: str) -> np.ndarray:
    """A 1-D array of finite reals as float64."""
    arr = np.asarray(values)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.number) and arr.dtype != bool or arr.size == 0):
        raise DataError(f"{name} must be a 1-D array of real numbers; got dtype {arr.dtype}, shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise DataError(f"{name} holds non-finite values (NaN or inf)")
    return arr


def _build_columns(
    counts: np.ndarray,
    attr: str,
    stratum: str | None,
    groups: tuple[str, ...],
    strata: tuple[str, ...],
    s_min: int,
    gap_op: str,
    class_agg: str,
    task: str = "single",
) -> tuple[dict[str, list], tuple[str, ...]]:
    """The long table of every metric of ``task`` as ``{column: list}``, from the cell counts (see
    ``GroupReport.counts``), and its keys without the split, row by row. Numeric columns hold floats.

    The rows and their text columns depend on the layout only (attribute, stratum, groups, strata, task):
    :func:`_layout` builds them once, so an epoch's report only computes and places its numbers."""
    n_g, n_s = len(groups), len(strata)
    text, keys = _layout(attr, stratum, groups, strata, task)
    samples = _sample_counts(counts, task)  # [G+1, S+1]
    counts = _one_vs_rest(counts) if task == "single" else counts  # [G+1, S+1, C, 2, 2] from here on
    partition, gap_metrics = _PARTITION_METRICS[task], _GAPS[task]

    # Partition scopes: overall, each group, each stratum, each cell; one stacked utility call.
    # (integer sums: the same in any order; whole axes at once rather than one scope at a time)
    cells = np.concatenate([counts.sum((0, 1))[None], counts[:n_g].sum(1), counts[:, :n_s].sum(0),
                            counts[:n_g, :n_s].reshape(n_g * n_s, *counts.shape[2:])])
    util = _utilities(cells, s_min, task)
    value = [np.stack([util[m] for m in partition], 1).reshape(-1)]  # cell by cell, metric by metric
    support = [np.repeat(util["n"], len(partition))]
    n_cls = [np.full(len(cells) * len(partition), np.nan)]
    n_str = [n_cls[0]]

    # Gap scopes: pooled over the known groups, then inside each stratum (each: the gaps, n_excluded, n_groups_eff).
    known = counts[:n_g]
    gcm = np.concatenate([known.sum(1)[None], known[:, :n_s].transpose(1, 0, 2, 3, 4)])
    # gcm's tables are the group scopes (pooled over strata) and the cells: their utilities are computed above
    scope = np.concatenate([1 + np.arange(n_g)[None], 1 + n_g + n_s + np.arange(n_g)[None] * n_s
                            + np.arange(n_s)[:, None]])  # [1+S, G]: each gcm entry's row among the cells
    gaps, n_classes, n_groups = _gaps(gcm, s_min, gap_op, class_agg, task,
                                      util={k: v[scope] for k, v in util.items()})
    sup = np.concatenate([[samples[:n_g].sum()], samples[:n_g, :n_s].sum(0)]).astype(float)
    excluded = np.concatenate([[samples[n_g].sum()], samples[n_g, :n_s]]).astype(float)
    n_m, n_b = len(gap_metrics), len(sup)
    value.append(np.concatenate([np.stack([gaps[m] for m in gap_metrics], 1), excluded[:, None],
                                 n_groups.astype(float)[:, None]], 1).reshape(-1))
    support.append(np.concatenate([np.repeat(sup[:, None], n_m, 1), (sup + excluded)[:, None], sup[:, None]],
                                  1).reshape(-1))
    n_cls.append(np.concatenate([np.stack([np.asarray(n_classes[m], float) for m in gap_metrics], 1),
                                 np.full((n_b, 2), np.nan)], 1).reshape(-1))
    n_str.append(np.full(n_b * (n_m + 2), np.nan))
    if n_s:  # worst and mean over the strata whose gap is defined, every gap metric at once
        per_stratum = np.stack([gaps[m][1:] for m in gap_metrics])  # [M, S]
        ok = np.isfinite(per_stratum)
        n_ok = ok.sum(1)
        worst = np.where(n_ok > 0, np.where(ok, per_stratum, -np.inf).max(1), np.nan)
        mean = _div(np.where(ok, per_stratum, 0.0).sum(1), n_ok)
        behind = np.where(ok, sup[1:], 0.0).sum(1)
        value.append(np.stack([worst, mean], 1).reshape(-1))  # metric by metric: worst, mean
        support.append(np.repeat(behind, 2))
        n_cls.append(np.full(2 * n_m, np.nan))
        n_str.append(np.repeat(n_ok.astype(float), 2))
    rows: dict[str, list] = {col: list(column) for col, column in text.items()}
    for col, parts in (("value", value), ("support", support), ("n_classes", n_cls), ("n_strata", n_str)):
        rows[col] = np.concatenate(parts).astype(float).tolist()  # Python floats: the table's cells
    return rows, keys


@lru_cache(maxsize=256)
def _layout(attr: str, stratum: str | None, groups: tuple[str, ...], strata: tuple[str, ...], task: str
            ) -> tuple[dict[str, tuple], tuple[str, ...]]:
    """The text columns of a report's table (``scope`` ... ``stratum_value``) and each row's key without its
    split, in the row order of :func:`_build_columns`; the same for every report of one layout."""
    rows: list[tuple] = []
    cells = [("overall", None, None)] + [("group", g, None) for g in groups] + [("stratum", None, s) for s in strata]
    cells += [("cell", g, s) for g in groups for s in strata]
    for scope, g, s in cells:
        for metric in _PARTITION_METRICS[task]:
            rows.append((scope, metric, None if g is None else attr, g, None if s is None else stratum, s))
    for s, sv in [(None, None)] + [(stratum, s) for s in strata]:
        for metric in (*_GAPS[task], "n_excluded", "n_groups_eff"):
            rows.append(("gap", metric, attr, None, s, sv))
    if strata:
        for metric in _GAPS[task]:
            for agg in ("worst", "mean"):
                rows.append(("gap", metric, attr, None, stratum, agg))
    text = {col: tuple(column) for col, column in zip(TABLE_COLUMNS[:6], zip(*rows, strict=True), strict=True)}
    return text, tuple(_suffix(*row[1:]) for row in rows)


def _none_if_missing(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and value != value) else value


def _json_value(value: Any, column: str) -> Any:
    """A table cell read back from JSON: NaN was written as None in the numeric columns."""
    if column in _NUMERIC_COLUMNS:
        return math.nan if value is None else float(value)
    return value


@lru_cache(maxsize=65536)
def _suffix(metric: str, attr: str | None, group: str | None, stratum: str | None, value: str | None) -> str:
    """Key without its split, e.g. ``acc/gender:F`` (cached: the same keys come back every epoch)."""
    return MetricKey("x", metric, attr, group, stratum, value).format()[2:]


def _render(frame: pd.DataFrame, index: str, columns: str, column_order: list[str], row_order=None) -> str:
    """Pivot ``value`` to a text grid; counts print as integers, rates with four decimals."""
    text = [_cell(m, v) for m, v in zip(frame["metric"], frame["value"], strict=True)]
    grid = frame.assign(text=text).pivot(index=index, columns=columns, values="text")
    grid = grid.reindex(columns=[c for c in column_order if c in grid.columns])
    if row_order is not None:
        grid = grid.reindex([r for r in row_order if r in grid.index])
    else:
        grid = grid.reindex(list(dict.fromkeys(frame[index])))
    grid.index.name, grid.columns.name = None, None
    return grid.fillna("").to_string()


def _cell(metric: str, value: float) -> str:
    if np.isnan(value):
        return "nan"
    return f"{value:.0f}" if METRICS[metric].kind == "count" else f"{value:.4f}"
