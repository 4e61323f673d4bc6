"""The CBERL per-class report (METHODS 3.12, 4.5): minority-class F1, weighted F1 and the gender gaps of MELD's
main cast, per ablation cell, against ERM, focal-only ERM and full CBERL (``fairray report SPEC --ablation NAME --layout
cberl``; ``auto`` picks it when a cell is ``cberl``).

Columns (every one a mean over the cell's seeds with a speaker-bootstrap interval):

- ``F1 <class>`` for each minority class (default fear and disgust, CBERL's headline classes): the one-vs-rest
  F1 ``2 TP / (2 TP + FP + FN)`` of that class on all test rows, 0 when its denominator is 0 — the same
  per-class F1 that :class:`~fairray.metrics.GroupReport`'s ``macro_f1`` averages, read from the report's own
  confusion counts (:func:`class_f1`), so ``macro_f1`` is the mean of the per-class values;
- ``minority WA-F1`` and ``minority WA-acc``: the support-weighted mean F1 and the recall (weighted-average
  accuracy) of the minority classes together, the form of the seed's claim ("fear and disgust reach 25.0 %
  weighted-average accuracy and 22.2 % weighted-average F1");
- ``W-F1``, ``macro-F1`` and ``ACC`` (GroupReport keys ``weighted_f1``, ``macro_f1``, ``acc``; ``hamming_acc``
  for a multi-label sweep);
- ``ΔW-F1`` and ``TPR gap`` of the attribute (``weighted_f1_gap``, ``tpr_gap``): on MELD only the six main
  characters have a gender, everyone else is ``U`` and outside every gap.

Every number comes from the trials' logged prediction artifacts (``predictions/{split}.npz``) through
:meth:`Predictions.report`, as in the IDI report (:mod:`fairray.report.ablation`); the bootstrap is the same:
ONE shared speaker resample (:func:`~fairray.metrics.speaker_replicates`, the resample
:func:`~fairray.metrics.replicate_matrix` draws, same seed, same rows) for every trial, each replicate's values
read from that replicate's GroupReport, percentile intervals by :func:`~fairray.metrics.interval`. So the
interval of a seed mean and of a difference between two cells (paired: the same speakers drawn for both) come
from the same replicates. A difference whose interval holds 0 is marked ``~`` (within noise).

With three speakers per gender in MELD's test split, a replicate draws three of three with replacement: the gap
intervals carry the between-speaker spread of three speakers only (read them as rough).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fairray.errors import DataError
from fairray.frontier.query import Sweep, load_predictions
from fairray.metrics import GroupReport, Interval, Predictions, interval, speaker_replicates, within_noise
from fairray.report.ablation import Cell, _fmt, group_cells, key_split

#: CBERL's minority classes on MELD (METHODS 4.5).
MINORITY = ("fear", "disgust")
#: The seed's claim on those classes together: weighted-average accuracy and F1 (METHODS 4.5).
SEED_CLAIM = {"minority WA-acc": 0.250, "minority WA-F1": 0.222}
#: label -> GroupReport metric (``{split}/{metric}`` or, for a gap, ``{split}/{metric}/{attribute}``).
#: ``ACC`` is exact-match accuracy, Hamming accuracy for a multi-label sweep.
REPORT_COLUMNS: dict[str, tuple[str, bool]] = {
    "W-F1": ("weighted_f1", False), "macro-F1": ("macro_f1", False), "ACC": ("acc", False),
    "ΔW-F1": ("weighted_f1_gap", True), "TPR gap": ("tpr_gap", True),
}
#: Cell labels of the ablation switches of ``search_spaces/cberl.yaml``.
_SWITCHES = {("method.augment_ratio", 0.0): "w/o augmentation (r=0)", ("method.masking_rate", 0.0): "w/o masking (ρ=0)",
             ("method.djvae", "false"): "w/o DJVAE", ("method.gamma", 0.0): "w/o focal (γ=0)"}


@dataclass(frozen=True)
class PerClassTable:
    """The report: per cell its label, seeds, each column's interval and its differences to the baselines."""

    columns: tuple[str, ...]
    labels: tuple[str, ...]
    n_seeds: tuple[int, ...]
    values: tuple[dict[str, Interval], ...]
    #: baseline label -> per cell the interval of (cell - baseline) per column ({} for the baseline itself).
    versus: dict[str, tuple[dict[str, Interval], ...]]
    minority: tuple[str, ...]


def class_counts(report: GroupReport, name: str) -> tuple[int, int, int]:
    """(TP, FP, FN) of class ``name`` over all rows of ``report`` (every group and stratum, missing ones
    included), read from its confusion counts."""
    if name not in report.classes:
        raise DataError(f"class {name!r} is not among the predictions' classes {list(report.classes)}; name the "
                        "minority classes this sweep has")
    c = report.classes.index(name)
    counts = report.counts.sum(axis=(0, 1))
    if report.task == "single":
        tp = int(counts[c, c])
        return tp, int(counts[:, c].sum()) - tp, int(counts[c].sum()) - tp
    table = counts[c]
    return int(table[1, 1]), int(table[0, 1]), int(table[1, 0])


def class_f1(report: GroupReport, name: str) -> float:
    """One-vs-rest F1 of class ``name``: ``2 TP / (2 TP + FP + FN)``, 0 when undefined (as ``macro_f1``)."""
    tp, fp, fn = class_counts(report, name)
    den = 2 * tp + fp + fn
    return 2 * tp / den if den else 0.0


def _values(report: GroupReport, minority: Sequence[str], keys: Sequence[str]) -> np.ndarray:
    """One row of the report's columns: per-class F1, minority WA-F1 and WA-acc, then the GroupReport keys."""
    counts = [class_counts(report, c) for c in minority]
    f1 = [2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0 for tp, fp, fn in counts]
    pos = np.array([tp + fn for tp, _, fn in counts], dtype=float)
    tps = np.array([tp for tp, _, _ in counts], dtype=float)
    wa_f1 = float((pos * f1).sum() / pos.sum()) if pos.sum() else math.nan
    wa_acc = float(tps.sum() / pos.sum()) if pos.sum() else math.nan
    out = [*f1, wa_f1, wa_acc]
    for key in keys:
        try:
            out.append(report.get(key))
        except KeyError:  # a gap undefined in a replicate (a group without the class): NaN, dropped by interval
            out.append(math.nan)
    return np.asarray(out, dtype=float)


def columns_of(minority: Sequence[str]) -> tuple[str, ...]:
    return (*(f"F1 {c}" for c in minority), "minority WA-F1", "minority WA-acc", *REPORT_COLUMNS)


def cell_label(cell: Cell, base_params: dict[str, str] | None = None) -> str:
    """``CBERL``, ``w/o masking (ρ=0)`` ..., ``ERM (ce)``, ``focal-only ERM``, else method (k=v, ...)."""
    base = base_params or {}
    extra = dict(cell.extra)
    if cell.method == "erm":
        loss = extra.pop("method.loss", None) or base.get("method.loss", "cb_ce")
        extra.pop("model.depth", None)
        name = "focal-only ERM" if loss == "focal" else f"ERM ({loss})"
    elif cell.method == "cberl":
        names = []
        for key, value in list(extra.items()):
            for (k, v), label in _SWITCHES.items():
                if key == k and (_same(value, v)):
                    names.append(label)
                    extra.pop(key)
        name = ", ".join(names) if names else "CBERL"
    else:
        name = cell.method
    rest = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in sorted(extra.items()))
    return f"{name} ({rest})" if rest else name


def _same(value: str, target: float | str) -> bool:
    if isinstance(target, str):
        return str(value).lower() == target
    try:
        return float(value) == target
    except (TypeError, ValueError):
        return False


def baselines(labels: Sequence[str]) -> list[str]:
    """The cells the report compares against: ERM with plain CE (else the first ERM cell), then focal-only, then
    full CBERL when the grid has ablation cells (``w/o ...``: each switch's effect is its difference to it)."""
    erm = [lb for lb in labels if lb.startswith("ERM (")]
    first = ["ERM (ce)"] if "ERM (ce)" in erm else erm[:1]
    focal = ["focal-only ERM"] if "focal-only ERM" in labels else []
    ablated = [lb for lb in labels if lb != "CBERL" and lb != "focal-only ERM" and not lb.startswith("ERM (")]
    return [*first, *focal, *(["CBERL"] if "CBERL" in labels and ablated else [])]


def per_class_table(sweep: Sweep, labels: Sequence[str], preds: Sequence[Sequence[Predictions]], *,
                    minority: Sequence[str] = MINORITY, split: str = "test", n_boot: int = 200,
                    level: float = 0.95, seed: int = 0) -> PerClassTable:
    """Per cell (``labels[i]`` with seeds ``preds[i]``) the columns' seed means with intervals, and each cell's
    difference to every baseline (:func:`baselines`), from one shared speaker resample."""
    flat = [p for cell_preds in preds for p in cell_preds]
    if not flat:
        raise DataError("the ablation has no finished trial to report")
    minority = tuple(minority)
    missing = [c for c in minority if c not in flat[0].classes]
    if missing:
        raise DataError(f"minority class(es) {missing} not among the predictions' classes {list(flat[0].classes)}")
    ks = key_split(split)
    metrics = [("hamming_acc" if m == "acc" and flat[0].task == "multi" else m, gap) for m, gap in REPORT_COLUMNS.values()]
    keys = [f"{ks}/{m}/{sweep.attribute}" if gap else f"{ks}/{m}" for m, gap in metrics]
    for key in keys:
        flat[0].report().get(key)  # a key the report cannot hold fails now, before any resampling
    columns = columns_of(minority)
    full = np.stack([_values(p.report(), minority, keys) for p in flat])
    reps = np.empty((len(flat), n_boot, len(columns)))
    for b, rows in enumerate(speaker_replicates(*flat, n_boot=n_boot, seed=seed)):
        for i, p in enumerate(flat):
            reps[i, b] = _values(p.report(rows), minority, keys)
    members, start = [], 0
    for cell_preds in preds:
        members.append(list(range(start, start + len(cell_preds))))
        start += len(cell_preds)

    def mean(rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return full[rows].mean(axis=0), reps[rows].mean(axis=0)

    values = []
    for rows in members:
        est, rep = mean(rows)
        values.append({c: interval(est[j], rep[:, j], level) for j, c in enumerate(columns)})
    versus = {}
    for base in baselines(labels):
        b_est, b_rep = mean(members[list(labels).index(base)])
        deltas = []
        for label, rows in zip(labels, members, strict=True):
            if label == base:
                deltas.append({})
                continue
            est, rep = mean(rows)
            deltas.append({c: interval(est[j] - b_est[j], rep[:, j] - b_rep[:, j], level) for j, c in enumerate(columns)})
        versus[base] = tuple(deltas)
    return PerClassTable(columns, tuple(labels), tuple(len(r) for r in members), tuple(values), versus, minority)


def _order(label: str) -> tuple[int, str]:
    if label == "CBERL":
        return 0, label
    if label.startswith("ERM ("):
        return 2, label
    if label == "focal-only ERM":
        return 3, label
    return 1, label


def cberl_report(sweep: Sweep, *, minority: Sequence[str] = MINORITY, split: str = "test", n_boot: int = 200,
                 level: float = 0.95, seed: int = 0) -> tuple[PerClassTable, list[Cell]]:
    """Load the ablation's cells (CBERL, its ablations, then the ERM baselines) and predictions and compute
    the per-class table."""
    cells = group_cells(sweep)
    labelled = sorted(((cell_label(c, sweep.base_params), c) for c in cells), key=lambda lc: _order(lc[0]))
    labels = [lb for lb, _ in labelled]
    if len(set(labels)) != len(labels):
        dup = sorted({lb for lb in labels if labels.count(lb) > 1})
        raise DataError(f"cells {dup} read the same; the cberl layout needs one cell per ablation switch")
    cells = [c for _, c in labelled]
    preds = [load_predictions(sweep, c.trials, split) for c in cells]
    return per_class_table(sweep, labels, preds, minority=minority, split=split, n_boot=n_boot, level=level,
                           seed=seed), cells


def _delta(iv: Interval) -> str:
    if not math.isfinite(iv.estimate):
        return "nan"
    text = f"{iv.estimate:+.3f}"
    if not iv.defined:
        return f"{text} (?)"
    if within_noise(iv):
        return f"{text} (~)"
    return f"{text} [{iv.lo:+.3f}, {iv.hi:+.3f}]"


def render_cberl_markdown(table: PerClassTable, *, title: str, notes: Sequence[str] = ()) -> str:
    """The values table (mean over seeds [CI]), then one table of differences per baseline (``~`` = the
    interval holds 0) and the seed's claim on the minority classes set against the full CBERL cell."""
    cols = table.columns
    lines = [f"# {title}", "", *notes, "",
             f"| cell | seeds | {' | '.join(cols)} |", "|---|---|" + "---|" * len(cols)]
    for label, n, values in zip(table.labels, table.n_seeds, table.values, strict=True):
        lines.append(f"| {label} | {n} | {' | '.join(_fmt(values[c]) for c in cols)} |")
    for base, deltas in table.versus.items():
        lines += ["", f"## Against {base}: difference of the seed means [95% CI], (~) within noise", "",
                  f"| cell | {' | '.join(cols)} |", "|---|" + "---|" * len(cols)]
        for label, delta in zip(table.labels, deltas, strict=True):
            if delta:
                lines.append(f"| {label} | {' | '.join(_delta(delta[c]) for c in cols)} |")
    if "CBERL" in table.labels:
        full = table.values[table.labels.index("CBERL")]
        claim = "; ".join(f"{c}: seed {v:.3f}, here {_fmt(full[c])}" for c, v in SEED_CLAIM.items())
        lines += ["", f"Seed's claim on {' and '.join(table.minority)} together (METHODS 4.5) against full CBERL: "
                  f"{claim}."]
    return "\n".join(lines) + "\n"
