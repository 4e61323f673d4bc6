"""The regression report (MOSI / MOSEI sentiment, ``dataset.targets: regression``): per ablation cell the seed
means of MAE, Pearson r, MulT's acc2 / f1_2 and the attribute's MAE and acc2 gaps, with speaker-bootstrap
intervals, and each cell's difference to ERM (``fairray report SPEC --ablation NAME --layout regression``;
``auto`` picks it when the sweep's ``dataset.targets`` is ``regression``).

Every number comes from the trials' logged ``predictions/{split}.npz`` through :meth:`Predictions.report`, under
ONE shared speaker resample (:func:`~fairray.metrics.replicate_matrix`), as in the IDI and CBERL reports; a
difference whose interval holds 0 is marked ``~``. ``--split test_ood_<modality>`` reports GEAR's OOD sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fairray.errors import DataError
from fairray.frontier.query import Sweep, load_predictions
from fairray.metrics import Interval, interval, replicate_matrix
from fairray.report.ablation import Cell, _fmt, group_cells, key_split
from fairray.report.cberl import _delta

#: label -> (GroupReport metric, whether it is a gap of the attribute). MAE and the gaps: lower is better.
COLUMNS: dict[str, tuple[str, bool]] = {
    "MAE": ("mae", False), "Corr": ("corr", False), "Acc2": ("acc2", False), "F1-2": ("f1_2", False),
    "ΔMAE": ("mae_gap", True), "ΔAcc2": ("acc2_gap", True),
}


@dataclass(frozen=True)
class RegressionTable:
    labels: tuple[str, ...]
    n_seeds: tuple[int, ...]
    values: tuple[dict[str, Interval], ...]
    #: per cell the interval of (cell - ERM) per column ({} for ERM itself, and for every cell without ERM).
    vs_erm: tuple[dict[str, Interval], ...]


def cell_name(cell: Cell) -> str:
    return cell.method.upper() + (f" ({cell.label})" if cell.label else "")


def regression_report(sweep: Sweep, *, split: str = "test", n_boot: int = 200, level: float = 0.95,
                      seed: int = 0) -> tuple[RegressionTable, list[Cell]]:
    """Load the ablation's cells (ERM first) and their predictions on ``split`` and compute the table."""
    cells = sorted(group_cells(sweep), key=lambda c: (c.method != "erm", cell_name(c)))
    preds = [load_predictions(sweep, c.trials, split) for c in cells]
    flat = [p for cell_preds in preds for p in cell_preds]
    if not flat:
        raise DataError("the ablation has no finished trial to report")
    if flat[0].task != "regression":
        raise DataError(f"the regression layout reads regression predictions; these are {flat[0].task}-label "
                        "(use --layout idi, cberl or minmaxgap)")
    ks = key_split(split)
    keys = [f"{ks}/{m}/{sweep.attribute}" if gap else f"{ks}/{m}" for m, gap in COLUMNS.values()]
    full, reps = replicate_matrix(flat, keys, n_boot=n_boot, seed=seed)
    members, start = [], 0
    for cell_preds in preds:
        members.append(list(range(start, start + len(cell_preds))))
        start += len(cell_preds)
    names = list(COLUMNS)

    def mean(rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return full[rows].mean(axis=0), reps[rows].mean(axis=0)

    values, vs_erm = [], []
    erm = members[0] if cells[0].method == "erm" else None
    for rows in members:
        est, rep = mean(rows)
        values.append({c: interval(est[j], rep[:, j], level) for j, c in enumerate(names)})
        if erm is None or rows == erm:
            vs_erm.append({})
            continue
        b_est, b_rep = mean(erm)
        vs_erm.append({c: interval(est[j] - b_est[j], rep[:, j] - b_rep[:, j], level) for j, c in enumerate(names)})
    table = RegressionTable(tuple(cell_name(c) for c in cells), tuple(len(r) for r in members), tuple(values),
                            tuple(vs_erm))
    return table, cells


def render_regression_markdown(table: RegressionTable, *, title: str, notes: Sequence[str] = ()) -> str:
    """The values (mean over seeds [CI]), then the differences to ERM (``~``: the interval holds 0)."""
    cols = list(COLUMNS)
    lines = [f"# {title}", "", *notes, "", f"| cell | seeds | {' | '.join(cols)} |", "|---|---|" + "---|" * len(cols)]
    for label, n, values in zip(table.labels, table.n_seeds, table.values, strict=True):
        lines.append(f"| {label} | {n} | {' | '.join(_fmt(values[c]) for c in cols)} |")
    if any(table.vs_erm):
        lines += ["", "## Against ERM: difference of the seed means [95% CI], (~) within noise", "",
                  f"| cell | {' | '.join(cols)} |", "|---|" + "---|" * len(cols)]
        for label, delta in zip(table.labels, table.vs_erm, strict=True):
            if delta:
                lines.append(f"| {label} | {' | '.join(_delta(delta[c]) for c in cols)} |")
    return "\n".join(lines) + "\n"
