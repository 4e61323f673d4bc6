"""The reproduction report of a declared ablation (``fairray report SPEC --ablation NAME``).

Every number comes from the trials' logged prediction artifacts (``predictions/{split}.npz``, written by the
training loop from the same evaluation that produced the logged metrics) and is recomputed by
:class:`~fairray.metrics.GroupReport`:

- a *cell* is one ablation point (its parameters without ``train.seed``); its value is the mean over its
  seeds, as IDI reports the mean over folds;
- intervals are speaker-level bootstrap percentiles of that mean: all trials share ONE speaker resample
  (they are scored on the same split), so the interval of a mean over seeds, of the mean over four methods
  ("Overall") and of a difference to ERM all come from the same replicates;
- ``Random`` is no training run: uniform random scores on the same split, decided like the models'
  outputs (argmax, or softmax > 1/|C| for multi-label), one draw per seed;
- ``Overall`` averages RW, DS, GDRO and GADRO within a supervision type, and ``Gain`` is computed from
  it against ERM, as in IDI: utility ``(U - U_ERM) / U_ERM``, gaps ``(G_ERM - G) / G_ERM`` (positive =
  fairer);
- a difference to ERM whose interval contains 0 is marked ``~`` (within noise).

:data:`IDI_TABLE1` holds the published IDI Table 1 (METHODS §4.5) so that the report can say whether each
method moves F1 and the TPR gap in the paper's direction; the numbers themselves are not comparable (other
corpora, features and model).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fairray.errors import DataError
from fairray.frontier.query import Sweep, TrialRecord, load_predictions
from fairray.metrics import SPLITS, Interval, Predictions, decide, interval, replicate_matrix, within_noise

#: Published IDI Table 1 (CREMA-D, 1:20 imbalance, 5 folds): (method, supervision) -> (F1, ACC, TPRgap, DPgap).
IDI_TABLE1: dict[tuple[str, str], tuple[float, float, float, float]] = {
    ("erm", "-"): (0.651, 0.824, 0.278, 0.103),
    ("random", "-"): (0.360, 0.509, 0.060, 0.015),
    ("lff", "-"): (0.655, 0.825, 0.268, 0.099),
    ("disent", "-"): (0.653, 0.825, 0.261, 0.094),
    ("pgdro", "pseudo"): (0.643, 0.817, 0.318, 0.121),
    ("ds", "attribute"): (0.598, 0.804, 0.094, 0.033),
    ("ds", "pseudo"): (0.580, 0.811, 0.137, 0.045),
    ("ds", "kmeans"): (0.561, 0.755, 0.201, 0.100),
    ("rw", "attribute"): (0.646, 0.823, 0.171, 0.061),
    ("rw", "pseudo"): (0.647, 0.826, 0.197, 0.071),
    ("rw", "kmeans"): (0.642, 0.817, 0.237, 0.091),
    ("gdro", "attribute"): (0.627, 0.796, 0.199, 0.086),
    ("gdro", "pseudo"): (0.632, 0.807, 0.229, 0.088),
    ("gdro", "kmeans"): (0.639, 0.803, 0.228, 0.104),
    ("gadro", "attribute"): (0.621, 0.788, 0.185, 0.084),
    ("gadro", "pseudo"): (0.631, 0.807, 0.229, 0.088),
    ("gadro", "kmeans"): (0.638, 0.804, 0.223, 0.098),
}
#: Methods averaged in IDI's "Overall" rows.
OVERALL_METHODS = ("rw", "ds", "gdro", "gadro")
SUPERVISION = {"attribute": "● true", "pseudo": "◐ pseudo", "pseudo_hf": "◐ pseudo (HF)", "kmeans": "○ cluster",
               "-": "–"}
COLUMNS = ("F1", "ACC", "TPR gap", "DP gap")
_ORDER = ("erm", "random", "lff", "disent", "pgdro", "ds", "rw", "gdro", "gadro")
_SOURCE_ORDER = ("-", "attribute", "pseudo", "pseudo_hf", "kmeans")


@dataclass(frozen=True)
class Cell:
    """One ablation point: its method, training-group source (``-`` when the method uses none), the
    other varying parameters, and its trials (one per seed)."""

    method: str
    source: str
    extra: tuple[tuple[str, str], ...]
    trials: tuple[TrialRecord, ...]

    @property
    def label(self) -> str:
        return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.extra)


@dataclass(frozen=True)
class Row:
    """One table row: ``kind`` is cell | random | overall | gain. ``values`` maps each of
    :data:`COLUMNS` to an interval (for gain rows: the relative gain in %, no interval); ``vs_erm`` holds
    the bootstrap interval of (row - ERM) per column for cell and overall rows."""

    kind: str
    method: str
    source: str
    label: str
    n_seeds: int
    values: dict[str, Interval]
    vs_erm: dict[str, Interval]


def key_split(split: str) -> str:
    """The split part of a metric key for predictions of ``split``: an extra test set (``test_ood_text`` ...) is
    scored like ``test`` (a GroupReport does not know its split; keys need one of ``SPLITS``)."""
    return split if split in SPLITS else "test"


def metric_keys(split: str, attribute: str, task: str) -> dict[str, str]:
    acc = "hamming_acc" if task == "multi" else "acc"
    split = key_split(split)
    return {"F1": f"{split}/macro_f1", "ACC": f"{split}/{acc}", "TPR gap": f"{split}/tpr_gap/{attribute}",
            "DP gap": f"{split}/dp_gap/{attribute}"}


def group_cells(sweep: Sweep) -> list[Cell]:
    """The sweep's trials grouped by ablation point (all parameters but ``train.seed``)."""
    from fairray.methods import METHODS

    cells: dict[tuple, list[TrialRecord]] = {}
    for trial in sweep.trials:
        point = tuple(sorted((k, v) for k, v in trial.params.items() if k != "train.seed"))
        cells.setdefault(point, []).append(trial)
    out = []
    for point, trials in cells.items():
        params = dict(point)
        method = params.pop("method.name", None) or sweep.base_params.get("method.name")
        if method is None:
            raise DataError("the ablation's trials do not record method.name; declare it in every cell")
        source = params.pop("dataset.groups.name", None) or sweep.base_params.get("dataset.groups.name", "attribute")
        if METHODS.get(method).requires == "nothing":
            source = "-"
        out.append(Cell(method, source, tuple(sorted(params.items())), tuple(trials)))

    def order(c: Cell):
        m = _ORDER.index(c.method) if c.method in _ORDER else len(_ORDER)
        s = _SOURCE_ORDER.index(c.source) if c.source in _SOURCE_ORDER else len(_SOURCE_ORDER)
        return m, c.method, s, c.source, tuple((k, _numeric(v)) for k, v in c.extra)

    return sorted(out, key=order)


def _numeric(value: str) -> tuple:
    """Sort key of a logged parameter value: numbers by value (K=2 before K=16), then text."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def random_predictions(template: Predictions, seed: int) -> Predictions:
    """IDI's Random baseline on ``template``'s split: uniform random scores, decided like a model's."""
    rng = np.random.default_rng([seed, 20240])
    scores = rng.random((len(template), len(template.classes)))
    prob = scores / scores.sum(axis=1, keepdims=True)
    return Predictions(uid=template.uid, speaker=template.speaker, groups=template.groups, y_true=template.y_true,
                       y_pred=decide(prob, template.task), prob=prob, classes=template.classes,
                       attribute=template.attribute, stratum=template.stratum, task=template.task,
                       s_min=template.s_min, gap_op=template.gap_op, class_agg=template.class_agg)


def ablation_rows(sweep: Sweep, cells: Sequence[Cell], preds: Sequence[Sequence[Predictions]], *,
                  split: str = "test", n_boot: int = 200, level: float = 0.95, seed: int = 0,
                  idi: bool = True) -> list[Row]:
    """The report's rows: one per cell (+ Random, Overall and Gain rows with ``idi``), each a mean over
    seeds with bootstrap intervals, and its difference to ERM with an interval."""
    flat = [p for cell_preds in preds for p in cell_preds]
    if not flat:
        raise DataError("the ablation has no finished trial to report")
    task = flat[0].task
    keys = metric_keys(split, sweep.attribute, task)
    # kind, method, source, label, members: one list of trial indices per cell (a row averages its cells'
    # seed means, so each method weighs the same in Overall whatever its number of finished seeds)
    groups: list[tuple[str, str, str, str, list[list[int]]]] = []
    start = 0
    for cell, cell_preds in zip(cells, preds, strict=True):
        groups.append(("cell", cell.method, cell.source, cell.label, [list(range(start, start + len(cell_preds)))]))
        start += len(cell_preds)
    if idi:
        n_seeds = max(len(p) for p in preds)
        randoms = [random_predictions(flat[0], s) for s in range(n_seeds)]
        groups.insert(1 if groups and groups[0][1] == "erm" else 0,
                      ("random", "random", "-", "", [list(range(len(flat), len(flat) + len(randoms)))]))
        flat = [*flat, *randoms]
        for source in _SOURCE_ORDER[1:]:
            members = {m: cells_[0] for kind, m, s, _, cells_ in groups if kind == "cell" and s == source}
            counts = [sum(kind == "cell" and m == method and s == source for kind, m, s, _, _ in groups)
                      for method in OVERALL_METHODS]
            if counts == [1] * len(OVERALL_METHODS):  # exactly one cell per method, else Overall is ambiguous
                groups.append(("overall", "overall", source, "", [members[m] for m in OVERALL_METHODS]))
    full, reps = replicate_matrix(flat, list(keys.values()), n_boot=n_boot, seed=seed)

    def mean(cells_: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        return (np.mean([full[c].mean(axis=0) for c in cells_], axis=0),
                np.mean([reps[c].mean(axis=0) for c in cells_], axis=0))

    erm = next((m for kind, method, s, _, m in groups if kind == "cell" and method == "erm" and s == "-"), None)
    rows = []
    for kind, method, source, label, members in groups:
        mean_full, mean_reps = mean(members)
        values = {c: interval(mean_full[j], mean_reps[:, j], level) for j, c in enumerate(COLUMNS)}
        vs_erm = {}
        if erm is not None and members != erm:
            erm_full, erm_reps = mean(erm)
            vs_erm = {c: interval(mean_full[j] - erm_full[j], mean_reps[:, j] - erm_reps[:, j], level)
                      for j, c in enumerate(COLUMNS)}
        rows.append(Row(kind, method, source, label, sum(len(c) for c in members), values, vs_erm))
    if idi and erm is not None:
        base = mean(erm)[0]
        for row in [r for r in rows if r.kind == "overall"]:
            gain = {}
            for j, c in enumerate(COLUMNS):
                v, b = row.values[c].estimate, base[j]
                g = (v - b) / b if j < 2 else (b - v) / b
                gain[c] = Interval(100 * g if b else math.nan, math.nan, math.nan, 0)
            rows.append(Row("gain", "gain", row.source, "", row.n_seeds, gain, {}))
    return rows


def idi_rows(sweep: Sweep, *, split: str = "test", n_boot: int = 200, level: float = 0.95, seed: int = 0
             ) -> tuple[list[Row], list[Cell]]:
    """Load the ablation's cells and predictions and compute the IDI Table 1 rows."""
    cells = group_cells(sweep)
    preds = [load_predictions(sweep, c.trials, split) for c in cells]
    return ablation_rows(sweep, cells, preds, split=split, n_boot=n_boot, level=level, seed=seed), cells


def _fmt(iv: Interval, digits: int = 3) -> str:
    if not math.isfinite(iv.estimate):
        return "nan"
    if not iv.defined:
        return f"{iv.estimate:.{digits}f}"
    return f"{iv.estimate:.{digits}f} [{iv.lo:.{digits}f}, {iv.hi:.{digits}f}]"


def _name(row: Row) -> str:
    name = {"erm": "ERM", "random": "Random", "lff": "LfF", "disent": "DisEnt", "pgdro": "PGDRO", "ds": "DS",
            "rw": "RW", "gdro": "GDRO", "gadro": "GADRO", "overall": "Overall", "gain": "Gain"}.get(row.method,
                                                                                                    row.method)
    return f"{name} ({row.label})" if row.label else name


def _direction(row: Row, erm_paper: tuple[float, ...] | None) -> str:
    """Ours vs the paper: the sign of the change to ERM in F1 and TPR gap (``~`` = within noise)."""
    key = (row.method, row.source if row.source != "pseudo_hf" else "pseudo")
    paper = IDI_TABLE1.get(key)
    if row.kind != "cell" or paper is None or erm_paper is None or not row.vs_erm:
        return ""
    out = []
    for j, c in ((0, "F1"), (2, "TPR gap")):
        d = row.vs_erm[c]
        ours = "~" if (d.defined and within_noise(d)) else ("+" if d.estimate > 0 else "−")
        theirs = "+" if paper[j] > erm_paper[j] else "−" if paper[j] < erm_paper[j] else "0"
        out.append(f"{c} {ours}/{theirs}")
    return "; ".join(out)


def render_markdown(rows: Sequence[Row], *, title: str, notes: Sequence[str] = ()) -> str:
    """The IDI Table 1 layout: Method, Sup., F1, ACC, TPR gap, DP gap (mean over seeds [95% CI]), the
    difference to ERM, and the direction of the change compared with the paper."""
    erm_paper = IDI_TABLE1[("erm", "-")]
    lines = [f"# {title}", "", *notes, "",
             "| Method | Sup. | seeds | F1 | ACC | TPR gap | DP gap | ΔF1 vs ERM | ΔTPR gap vs ERM | "
             "direction ours/paper |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        sup = SUPERVISION.get(row.source, row.source)
        if row.kind == "gain":
            cells = [f"{row.values[c].estimate:+.2f} %" for c in COLUMNS]
            lines.append(f"| Gain | {sup} | | {' | '.join(cells)} | | | |")
            continue
        deltas = [_fmt(row.vs_erm[c]) if row.vs_erm else "" for c in ("F1", "TPR gap")]
        lines.append(f"| {_name(row)} | {sup} | {row.n_seeds} | "
                     f"{' | '.join(_fmt(row.values[c]) for c in COLUMNS)} | {deltas[0]} | {deltas[1]} | "
                     f"{_direction(row, erm_paper)} |")
    return "\n".join(lines) + "\n"


_COLORS = {"-": "#555555", "attribute": "#1b6ca8", "pseudo": "#d1495b", "pseudo_hf": "#a03a8b", "kmeans": "#2e8b57"}


def render_svg(rows: Sequence[Row], *, title: str, width: int = 760, height: int = 520) -> str:
    """F1 (y) against TPR gap (x) of every row with both intervals as whiskers — lower right is better."""
    pts = [r for r in rows if r.kind in ("cell", "random", "overall") and math.isfinite(r.values["F1"].estimate)
           and math.isfinite(r.values["TPR gap"].estimate)]
    if not pts:
        raise DataError("nothing to plot: no row has both F1 and TPR gap")
    m = {"l": 70, "r": 170, "t": 40, "b": 50}

    def bounds(col):
        vals = [v for r in pts for v in (r.values[col].estimate, r.values[col].lo, r.values[col].hi)
                if math.isfinite(v)]
        lo, hi = min(vals), max(vals)
        pad = (hi - lo) * 0.06 or 0.05
        return lo - pad, hi + pad

    (x0, x1), (y0, y1) = bounds("TPR gap"), bounds("F1")

    def sx(v):
        return m["l"] + (v - x0) / (x1 - x0) * (width - m["l"] - m["r"])

    def sy(v):
        return height - m["b"] - (v - y0) / (y1 - y0) * (height - m["t"] - m["b"])

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{html.escape(title)}</text>',
           f'<rect x="{m["l"]}" y="{m["t"]}" width="{width - m["l"] - m["r"]}" '
           f'height="{height - m["t"] - m["b"]}" fill="none" stroke="#999"/>']
    for i in range(6):
        xv, yv = x0 + (x1 - x0) * i / 5, y0 + (y1 - y0) * i / 5
        out.append(f'<text x="{sx(xv):.1f}" y="{height - m["b"] + 16}" text-anchor="middle">{xv:.3f}</text>')
        out.append(f'<text x="{m["l"] - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.3f}</text>')
    out.append(f'<text x="{(m["l"] + width - m["r"]) / 2}" y="{height - 12}" text-anchor="middle">'
               'TPR gap (lower = fairer) →</text>')
    out.append(f'<text x="16" y="{(m["t"] + height - m["b"]) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {(m["t"] + height - m["b"]) / 2})">macro-F1 →</text>')
    for r in pts:
        color = _COLORS.get(r.source, "#000")
        x, y = r.values["TPR gap"], r.values["F1"]
        cx, cy = sx(x.estimate), sy(y.estimate)
        if x.defined:
            out.append(f'<line x1="{sx(x.lo):.1f}" y1="{cy:.1f}" x2="{sx(x.hi):.1f}" y2="{cy:.1f}" '
                       f'stroke="{color}" stroke-opacity="0.5"/>')
        if y.defined:
            out.append(f'<line x1="{cx:.1f}" y1="{sy(y.lo):.1f}" x2="{cx:.1f}" y2="{sy(y.hi):.1f}" '
                       f'stroke="{color}" stroke-opacity="0.5"/>')
        shape = (f'<rect x="{cx - 4:.1f}" y="{cy - 4:.1f}" width="8" height="8" fill="{color}"/>'
                 if r.kind == "overall" else f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{color}"/>')
        out.append(shape)
        out.append(f'<text x="{cx + 6:.1f}" y="{cy - 5:.1f}" fill="{color}">{html.escape(_name(r))}</text>')
    present = [(source, color) for source, color in _COLORS.items() if any(r.source == source for r in pts)]
    for i, (source, color) in enumerate(present):
        y = m["t"] + 14 + 16 * i
        out.append(f'<circle cx="{width - m["r"] + 16}" cy="{y - 4}" r="4" fill="{color}"/>')
        out.append(f'<text x="{width - m["r"] + 26}" y="{y}">{html.escape(SUPERVISION.get(source, source))}</text>')
    out.append(f'<text x="{width - m["r"] + 10}" y="{height - m["b"]}">■ Overall, ● cell; bars: 95% CI</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
