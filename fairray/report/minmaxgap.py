"""The MinMaxGAP comparison (METHODS §4.4) as a report: per language and pooled, W-F1, ACC and the gender gaps
of §2.5 (ΔTPR, ΔFPR, ΔW-F1, ΔACC and their mean AVG), each a mean over seeds with a speaker-bootstrap interval.

The cells are the ablation's points (``fairray report SPEC --ablation NAME``): typically ERM, MinMaxGAP with a
fixed λ and with the adaptive λ for p in {1, 2}. Every number is recomputed from the trials' logged prediction
artifacts with the same shared speaker resample as the IDI report (:mod:`fairray.report.ablation`), so a
difference to ERM has its own interval; one whose interval holds 0 is marked ``~`` (within noise).

The paper's direction (METHODS §4.5): ERM-MinMaxGAP raises pooled W-F1 and ACC over its reference and lowers the
overall gender-gap AVG (by 0.1 points unimodal, 1.4 multimodal, on MELD-ST with Qwen2-Audio). The ``direction``
column says, for each cell against ERM, whether ours moves W-F1 and AVG the same way (``+``/``−``/``~`` ours, then
the paper's sign): the numbers themselves are not comparable (other data, features and model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fairray.errors import DataError
from fairray.frontier.query import Sweep, load_predictions
from fairray.metrics import Interval, Predictions, interval, replicate_matrix, within_noise
from fairray.report.ablation import Cell, _fmt, group_cells, key_split

#: §2.5's columns: label -> (metric, is a gap). Gaps are of the attribute; utilities of the subset.
COLUMNS: dict[str, tuple[str, bool]] = {
    "W-F1": ("weighted_f1", False), "ACC": ("acc", False), "ΔTPR": ("uar_gap", True), "ΔFPR": ("mfpr_gap", True),
    "ΔW-F1": ("weighted_f1_gap", True), "ΔACC": ("acc_gap", True), "AVG": ("avg_gap", True),
}
#: The paper's sign of the change against its reference: W-F1 up, AVG down (METHODS §4.5).
PAPER_DIRECTION = {"W-F1": "+", "AVG": "−"}


@dataclass(frozen=True)
class ScopeTable:
    """One subset (``pooled`` or a language): per cell, each column's interval and its difference to ERM."""

    scope: str
    #: The fewest test speakers of one attribute group in this subset: below 2 the speaker bootstrap cannot
    #: vary the subset, so its values carry no interval.
    min_speakers: int
    labels: tuple[str, ...]
    n_seeds: tuple[int, ...]
    values: tuple[dict[str, Interval], ...]
    vs_erm: tuple[dict[str, Interval], ...]


def metric_key(split: str, column: str, attribute: str, stratum: str | None, value: str | None) -> str:
    """The flat key of one §2.5 column on the pooled split (``value=None``) or one stratum value."""
    metric, gap = COLUMNS[column]
    split = key_split(split)
    scope = "" if value is None else f"/{stratum}:{value}"
    return f"{split}/{metric}/{attribute}{scope}" if gap else f"{split}/{metric}{scope}"


def cell_label(cell: Cell) -> str:
    if cell.method == "erm":
        return "ERM"
    extra = dict(cell.extra)
    if cell.method == "minmaxgap":
        adaptive = extra.pop("method.adaptive", None)
        p = extra.pop("method.p", None)
        name = "MinMaxGAP, fixed λ" if str(adaptive).lower() == "false" else "MinMaxGAP, adaptive λ"
        rest = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in sorted(extra.items()))
        return ", ".join(x for x in (name, None if p is None else f"p={p}", rest or None) if x)
    return f"{cell.method} ({cell.label})" if cell.label else cell.method


def minmaxgap_tables(sweep: Sweep, cells: Sequence[Cell], preds: Sequence[Sequence[Predictions]], *,
                     split: str = "test", n_boot: int = 200, level: float = 0.95, seed: int = 0) -> list[ScopeTable]:
    """The pooled table, then one per stratum value (language), each with a row per cell."""
    flat = [p for cell_preds in preds for p in cell_preds]
    if not flat:
        raise DataError("the ablation has no finished trial to report")
    if flat[0].task != "single":
        raise DataError("the MinMaxGAP report is single-label (METHODS §2.5); this sweep is multi-label: use "
                        "`fairray report --layout idi`")
    full_report = flat[0].report()
    stratum, strata = full_report.stratum, full_report.strata
    scopes: list[str | None] = [None, *strata]
    keys = [metric_key(split, c, sweep.attribute, stratum, v) for v in scopes for c in COLUMNS]
    full, reps = replicate_matrix(flat, keys, n_boot=n_boot, seed=seed)
    members, start = [], 0
    for cell_preds in preds:
        members.append(list(range(start, start + len(cell_preds))))
        start += len(cell_preds)
    erm = next((i for i, c in enumerate(cells) if c.method == "erm"), None)

    def mean(rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return full[rows].mean(axis=0), reps[rows].mean(axis=0)

    tables = []
    speakers = _speakers_per_group(flat[0], sweep.attribute, stratum)
    for s, value in enumerate(scopes):
        fewest = min((n for (_, v), n in speakers.items() if value is None or v == value), default=0)
        if value is None:
            fewest = min((sum(n for (g2, _), n in speakers.items() if g2 == g) for g, _ in speakers), default=0)
        bare = fewest < 2
        cols = slice(s * len(COLUMNS), (s + 1) * len(COLUMNS))
        values, deltas = [], []
        for i, rows in enumerate(members):
            est, rep = mean(rows)
            values.append({c: _interval(est[cols][j], rep[:, cols][:, j], level, bare) for j, c in enumerate(COLUMNS)})
            if erm is None or i == erm:
                deltas.append({})
                continue
            b_est, b_rep = mean(members[erm])
            deltas.append({c: _interval(est[cols][j] - b_est[cols][j], rep[:, cols][:, j] - b_rep[:, cols][:, j],
                                        level, bare) for j, c in enumerate(COLUMNS)})
        tables.append(ScopeTable("pooled" if value is None else f"{stratum}={value}", fewest,
                                 tuple(cell_label(c) for c in cells), tuple(len(r) for r in members),
                                 tuple(values), tuple(deltas)))
    return tables


def _interval(estimate: float, values: np.ndarray, level: float, bare: bool) -> Interval:
    return Interval(float(estimate), math.nan, math.nan, 0) if bare else interval(estimate, values, level)


def _speakers_per_group(pred: Predictions, attribute: str, stratum: str | None) -> dict[tuple[str, str], int]:
    """Distinct speakers per (attribute group, stratum value) of a prediction set (known groups only)."""
    frame = pred.groups.assign(_speaker=pred.speaker)
    frame = frame[frame[attribute].notna() & (frame[attribute].astype(str) != "U")]
    keys = [attribute] + ([stratum] if stratum else [])
    counts = frame.groupby(keys, observed=True)["_speaker"].nunique()
    return {(str(k[0]) if isinstance(k, tuple) else str(k), str(k[1]) if isinstance(k, tuple) and len(k) > 1
             else ""): int(n) for k, n in counts.items()}


def minmaxgap_report(sweep: Sweep, *, split: str = "test", n_boot: int = 200, level: float = 0.95, seed: int = 0
                     ) -> tuple[list[ScopeTable], list[Cell]]:
    """Load the ablation's cells (ERM first) and predictions and compute the per-scope tables."""
    cells = sorted(group_cells(sweep), key=lambda c: (c.method != "erm", "adaptive" in cell_label(c), cell_label(c)))
    preds = [load_predictions(sweep, c.trials, split) for c in cells]
    return minmaxgap_tables(sweep, cells, preds, split=split, n_boot=n_boot, level=level, seed=seed), cells


def _direction(delta: dict[str, Interval]) -> str:
    out = []
    for column, theirs in PAPER_DIRECTION.items():
        d = delta.get(column)
        if d is None or not math.isfinite(d.estimate):
            return ""
        sign = "+" if d.estimate > 0 else "−"
        ours = f"{sign}?" if not d.defined else "~" if within_noise(d) else sign
        out.append(f"{column} {ours}/{theirs}")
    return "; ".join(out)


def render_minmaxgap_markdown(tables: Sequence[ScopeTable], *, title: str, notes: Sequence[str] = ()) -> str:
    """One markdown table per scope: the cells' §2.5 columns (mean over seeds [CI]), ΔW-F1 and ΔAVG against ERM
    and the direction of both compared with the paper."""
    lines = [f"# {title}", "", *notes, ""]
    head = " | ".join(COLUMNS)
    for table in tables:
        lines += [f"## {table.scope}", ""]
        if table.min_speakers < 2:
            lines += [f"{table.min_speakers} test speaker(s) in a gender here: the speaker bootstrap cannot vary "
                      "this subset, so no interval is shown and no change is tested for noise (`?`).", ""]
        lines += [
                  f"| Cell | seeds | {head} | ΔW-F1 vs ERM | ΔAVG vs ERM | direction ours/paper |",
                  "|---|---|" + "---|" * len(COLUMNS) + "---|---|---|"]
        for label, n, values, delta in zip(table.labels, table.n_seeds, table.values, table.vs_erm, strict=True):
            d = [_fmt(delta[c]) if delta else "" for c in ("W-F1", "AVG")]
            lines.append(f"| {label} | {n} | {' | '.join(_fmt(values[c]) for c in COLUMNS)} | {d[0]} | {d[1]} | "
                         f"{_direction(delta) if delta else ''} |")
        lines.append("")
    return "\n".join(lines)
