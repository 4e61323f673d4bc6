"""Speaker-level bootstrap confidence intervals for every utility and gap (METHODS §2.6 item 6).

Clips of one speaker are not independent (voice, recording set-up and acting style are shared), so
resampling clips understates the uncertainty of every per-group number. Here a replicate draws
*speakers* with replacement and takes all clips of each drawn speaker; the metric of the replicate
is read from one :meth:`Predictions.report` on those rows, and every requested key is read from that
same report.

Resampling design: stratified by speaker *profile*. A speaker's profile is the set of
(attribute group, stratum value) cells its clips fall in (missing values count as their own cell) —
normally exactly one cell, e.g. (F, en). Each replicate draws, inside every profile, as many
speakers as the profile has, with replacement. Reasons:

- the test sets are built that way: :func:`fairray.data.speaker_split` assigns a fixed number of
  whole speakers of every stratum x attribute cell to dev and test, so the number of speakers per
  cell is part of the design, not a random outcome, and the bootstrap should hold it fixed;
- every group and stratum is present in every replicate, so a gap is defined in a replicate exactly
  when it is defined on the full sample. Resampling over all speakers leaves a cell of 1–3 speakers
  (common in fairray's dev sets, §2.6 item 5) empty in a large share of replicates; its gap becomes
  NaN there or silently changes meaning (fewer groups), which biases the interval.

The price: a cell with a single speaker contributes no between-speaker variance (its one speaker is
always drawn), so intervals involving it are too narrow — no resampling scheme can estimate the
speaker spread of a cell from one speaker. Clips inside a drawn speaker are taken as they are (the
one-stage cluster bootstrap), which is slightly conservative.

Intervals are percentile intervals around the full-sample estimate. Replicates where a metric is
NaN are dropped and counted (``n_boot_valid``); when more than half are NaN the interval is
``(nan, nan)``. Gaps are absolute differences or maxima over classes / strata, so they are biased
upwards and their replicates more so: when a true gap is small relative to its noise the percentile
interval of a gap can lie above its own estimate (read such an interval as "the gap is not
resolved"). In a difference between two models (:func:`paired_difference`) much of that bias cancels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from fairray.errors import DataError
from fairray.metrics._keys import SPLITS, MetricKey
from fairray.metrics._report import GroupReport
from fairray.metrics.predictions import Predictions

_DUMMY_SPLIT = "dev"


@dataclass(frozen=True)
class Interval:
    """A bootstrap interval: the full-sample ``estimate``, the percentile bounds ``lo``/``hi`` and the
    number of replicates in which the metric was defined (``n_boot_valid``)."""

    estimate: float
    lo: float
    hi: float
    n_boot_valid: int

    @property
    def defined(self) -> bool:
        """False when the interval is ``(nan, nan)`` (more than half of the replicates were NaN)."""
        return bool(np.isfinite(self.lo) and np.isfinite(self.hi))

    @property
    def width(self) -> float:
        return self.hi - self.lo

    def contains(self, value: float) -> bool:
        return bool(self.lo <= value <= self.hi)


def speaker_bootstrap(
    pred: Predictions,
    keys: Sequence[str | MetricKey],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str | MetricKey, Interval]:
    """Percentile intervals of ``keys`` over ``n_boot`` speaker resamples of ``pred`` (see module doc).

    ``keys`` are metric keys with or without their split (``test/tpr_gap/gender`` or
    ``tpr_gap/gender``); the split is ignored, as in :meth:`GroupReport.get`, and the result is keyed
    by the keys as given. A key the report does not hold raises ``KeyError`` before any resampling.
    One report is computed per replicate and all keys are read from it.
    """
    _check_options(n_boot, level)
    reader = _Reader(pred.report(), keys)
    values = np.empty((n_boot, len(reader)))
    for b, rows in enumerate(speaker_replicates(pred, n_boot=n_boot, seed=seed)):
        values[b] = reader.read(pred.report(rows))
    return {
        key: _interval(est, values[:, j], level) for j, (key, est) in enumerate(zip(keys, reader.full, strict=True))
    }


def paired_difference(
    a: Predictions,
    b: Predictions,
    key: str | MetricKey,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Interval of ``value(a) - value(b)`` for one metric key, with the *same* speaker resample applied
    to both in every replicate (the two models' errors on a speaker are correlated; a paired
    difference cancels that shared speaker effect).

    ``a`` and ``b`` must hold the same clips in the same order (equal ``uid`` and ``speaker``
    arrays); the resample is stratified by the profiles of both.
    """
    _check_options(n_boot, level)
    _check_paired(a, b)
    reader_a, reader_b = _Reader(a.report(), [key]), _Reader(b.report(), [key])
    diffs = np.empty(n_boot)
    for i, rows in enumerate(speaker_replicates(a, b, n_boot=n_boot, seed=seed)):
        diffs[i] = reader_a.read(a.report(rows))[0] - reader_b.read(b.report(rows))[0]
    return _interval(reader_a.full[0] - reader_b.full[0], diffs, level)


def within_noise(interval: Interval) -> bool:
    """True when the interval of a difference contains 0 (the difference is within bootstrap noise).

    An undefined interval (``nan``) contains nothing and gives False; check ``interval.defined``.
    """
    return interval.contains(0.0)


def replicate_matrix(
    preds: Sequence[Predictions],
    keys: Sequence[str | MetricKey],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``keys`` for several prediction sets on one split (same uids: seeds, methods ...) under
    ONE shared speaker resample: full-sample values ``[P, K]`` and replicate values ``[P, n_boot, K]``.

    Intervals of any function of them — a mean over seeds, a mean over methods, a difference between
    two cells — come from applying the function per replicate and :func:`interval`.
    """
    _check_options(n_boot, 0.5)
    readers = [_Reader(p.report(), keys) for p in preds]
    full = np.stack([r.full for r in readers])
    values = np.empty((len(preds), n_boot, len(keys)))
    for b, rows in enumerate(speaker_replicates(*preds, n_boot=n_boot, seed=seed)):
        for i, (p, reader) in enumerate(zip(preds, readers, strict=True)):
            values[i, b] = reader.read(p.report(rows))
    return full, values


def interval(estimate: float, values: np.ndarray, level: float = 0.95) -> Interval:
    """Percentile interval of replicate ``values`` around ``estimate``; NaN replicates are dropped and
    counted, and more than half of them NaN gives ``(nan, nan)``."""
    _check_options(1, level)
    return _interval(estimate, np.asarray(values, dtype=float), level)


def speaker_replicates(*preds: Predictions, n_boot: int = 1000, seed: int = 0) -> Iterator[np.ndarray]:
    """Row indices of ``n_boot`` speaker-bootstrap replicates (stratified by speaker profile).

    Each replicate is an int array of row indices: all rows of each drawn speaker, a speaker drawn
    ``k`` times appearing ``k`` times. Several ``preds`` (same uids and speakers, e.g. two models on
    one split) share one resample; profiles are then formed from the cells of all of them.
    Deterministic for a given ``seed``; the draws are made up front, the rows built lazily.
    """
    if not preds:
        raise ValueError("speaker_replicates needs at least one Predictions")
    for other in preds[1:]:
        _check_paired(preds[0], other)
    first = preds[0]
    if len(first) == 0:
        raise DataError("speaker bootstrap: the predictions hold no rows")
    speakers, spk = np.unique(first.speaker, return_inverse=True)
    spk = spk.reshape(-1)
    n_spk = len(speakers)
    # one combined cell id per row over all preds, then each speaker's profile = its set of cells
    # (the rank of (cells so far, this one's cell) in lexicographic order: the order of a mixed-radix code, which
    # would overflow int64 past ~18 prediction sets of 11 cells, kept compact: at most one id per row)
    cell = np.zeros(len(first), np.int64)
    for p in preds:
        cell = np.unique(np.stack([cell, p.cell_ids()], axis=1), axis=0, return_inverse=True)[1].reshape(-1)
    pairs = np.unique(np.stack([spk, cell], axis=1), axis=0)
    profile_of: dict[tuple[int, ...], list[int]] = {}
    bounds = np.flatnonzero(np.diff(pairs[:, 0])) + 1
    for s, cells in zip(pairs[np.r_[0, bounds], 0].tolist(), np.split(pairs[:, 1], bounds), strict=True):
        profile_of.setdefault(tuple(cells.tolist()), []).append(s)

    rng = np.random.default_rng(seed)
    drawn = np.empty((n_boot, n_spk), np.int64)
    col = 0
    for profile in sorted(profile_of):
        members = np.asarray(profile_of[profile])
        drawn[:, col : col + len(members)] = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
        col += len(members)

    order = np.argsort(spk, kind="stable")  # rows grouped by speaker
    length = np.bincount(spk, minlength=n_spk)
    start = np.concatenate([[0], np.cumsum(length)[:-1]])
    for chosen in drawn:
        lengths = length[chosen]
        ends = np.cumsum(lengths)
        idx = np.repeat(start[chosen] - (ends - lengths), lengths) + np.arange(ends[-1])
        yield order[idx]


# --- helpers -----------------------------------------------------------------------------------


class _Reader:
    """Reads ``keys`` from replicate reports.

    Fast path: a replicate with the same groups, strata and table layout as the full report holds
    each key in the same row of ``frame``, so values are one fancy index; anything else falls back
    to :meth:`GroupReport.get` (a key missing from a replicate reads NaN).
    """

    def __init__(self, full: GroupReport, keys: Sequence[str | MetricKey]) -> None:
        strata = () if full.stratum is None else (full.stratum,)
        self.keys = [_with_split(k, strata) for k in keys]
        self.full = np.array([full.get(k) for k in self.keys], dtype=float)  # KeyError names a bad key now
        order = {k: i for i, k in enumerate(full.flat(_DUMMY_SPLIT))}
        self.rows = np.array([order[k.format()] for k in self.keys], dtype=np.int64)
        self.layout = (full.groups, full.strata, list(full.columns["metric"]))
        self.checked = False

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, report: GroupReport) -> np.ndarray:
        groups, strata, metrics = self.layout
        if (
            report.groups == groups
            and report.strata == strata
            and report.columns["metric"] == metrics
        ):
            fast = np.asarray(report.columns["value"], dtype=float)[self.rows]
            if self.checked:
                return fast
            slow = self._slow(report)
            if np.array_equal(fast, slow, equal_nan=True):
                self.checked = True  # the layout assumption holds for this report type
                return fast
            return slow
        return self._slow(report)

    def _slow(self, report: GroupReport) -> np.ndarray:
        out = np.empty(len(self.keys))
        for j, key in enumerate(self.keys):
            try:
                out[j] = report.get(key)
            except KeyError:
                out[j] = np.nan
        return out


def _with_split(key: str | MetricKey, strata: tuple[str, ...]) -> MetricKey:
    """``key`` as a :class:`MetricKey` under a placeholder split (the split is not part of a report)."""
    if isinstance(key, MetricKey):
        return key if key.split == _DUMMY_SPLIT else MetricKey(_DUMMY_SPLIT, *_fields(key))
    if not isinstance(key, str):
        raise TypeError(f"metric keys must be strings or MetricKey; got {key!r}")
    text = key if key.split("/", 1)[0] in SPLITS else f"{_DUMMY_SPLIT}/{key}"
    parsed = MetricKey.parse(text, strata=strata)
    return MetricKey(_DUMMY_SPLIT, *_fields(parsed))


def _fields(key: MetricKey) -> tuple:
    return key.metric, key.attr, key.group, key.stratum, key.stratum_value


def _interval(estimate: float, values: np.ndarray, level: float) -> Interval:
    ok = np.isfinite(values)
    n_valid = int(ok.sum())
    if 2 * n_valid < len(values):
        return Interval(float(estimate), np.nan, np.nan, n_valid)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values[ok], [alpha, 1.0 - alpha])
    return Interval(float(estimate), float(lo), float(hi), n_valid)


def _check_options(n_boot: int, level: float) -> None:
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1; got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1; got {level!r}")


def _check_paired(a: Predictions, b: Predictions) -> None:
    if len(a) != len(b) or not np.array_equal(a.uid, b.uid):
        where = "" if len(a) != len(b) else f"; first difference at row {int(np.flatnonzero(a.uid != b.uid)[0])}"
        raise DataError(
            f"paired bootstrap needs the same clips in the same order: uids differ ({len(a)} vs {len(b)} rows{where})"
        )
    if not np.array_equal(a.speaker, b.speaker):
        row = int(np.flatnonzero(a.speaker != b.speaker)[0])
        raise DataError(f"paired bootstrap: same uids but different speakers (row {row}, uid {a.uid[row]!r})")
