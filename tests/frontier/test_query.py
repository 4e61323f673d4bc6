"""Fronts of a sweep (no MLflow: hand-built trial records): DTO per trial, the gap budget, and `fairray frontier`."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from fairray import cli
from fairray.errors import ConfigError
from fairray.frontier import query
from fairray.frontier.pareto import Direction
from fairray.frontier.query import Sweep, TrialRecord, fronts, gap_budget

UTIL, GAP = "dev/weighted_f1", "dev/tpr_gap/gender/worst:language"

# (weighted_f1, worst-language tpr gap) overall, and per language en
POINTS = {
    "t1": (0.70, 0.30, 0.66, 0.25),
    "t2": (0.60, 0.05, 0.62, 0.10),
    "t3": (0.55, 0.08, 0.50, 0.02),   # dominated by t2 overall
    "t4": (math.nan, 0.01, 0.40, 0.01),  # invalid overall
}  # fmt: skip


def _sweep(points=POINTS) -> Sweep:
    trials = tuple(
        TrialRecord(f"run-{tid}", tid, {"train.lr": "0.001"},
                    {UTIL: u, GAP: g, "dev/weighted_f1/language:en": u_en, "dev/tpr_gap/gender/language:en": g_en})
        for tid, (u, g, u_en, g_en) in points.items()
    )  # fmt: skip
    return Sweep("tiny", "parent", ((UTIL, Direction.MAX), (GAP, Direction.MIN)), trials, 1, "sqlite:///x", "gender")


def test_each_front_carries_the_dto_of_its_trials() -> None:
    front = fronts(_sweep())[0]
    assert front.on_front.tolist() == [True, True, False, False]
    # sqrt((1 - U)^2 + Gap^2) by hand
    want = [math.hypot(0.30, 0.30), math.hypot(0.40, 0.05), math.hypot(0.45, 0.08)]
    np.testing.assert_allclose(front.dto[:3], want)
    assert math.isnan(front.dto[3])
    en = fronts(_sweep(), by=["language"])[0]
    assert en.restriction == {"language": "en"}
    np.testing.assert_allclose(
        en.dto, [math.hypot(0.34, 0.25), math.hypot(0.38, 0.10), math.hypot(0.50, 0.02), math.hypot(0.60, 0.01)]
    )


def test_no_dto_when_an_objective_leaves_the_unit_interval() -> None:
    sweep = _sweep()
    sweep.trials[0].metrics[UTIL] = 1.5  # not a fraction: no utopia point to measure from
    front = fronts(sweep)[0]
    assert front.dto is None
    assert "no DTO: an objective lies outside [0, 1]" in cli._format_fronts(sweep, [front], "table", True)


@pytest.mark.parametrize(
    ("tau", "values", "best"),
    [
        (0.1, [-1.0, 0.60, 0.55], "t2"),
        (0.3, [0.70, 0.60, 0.55], "t1"),  # on the budget counts
        (0.06, [-1.0, 0.60, -1.0], "t2"),
        (0.01, [-1.0, -1.0, -1.0], None),  # t4 meets it but is invalid
    ],
)
def test_gap_budget_by_hand(tau: float, values: list[float], best: str | None) -> None:
    front = fronts(_sweep())[0]
    budget = gap_budget(front, tau)
    assert (budget.utility, budget.gap, budget.tau) == (UTIL, GAP, tau)
    np.testing.assert_allclose(budget.values[:3], values)
    assert math.isnan(budget.values[3])
    assert (None if budget.best is None else front.trials[budget.best].trial_id) == best


def test_gap_budget_needs_one_utility_and_one_gap() -> None:
    sweep = _sweep()
    both_utilities = fronts(sweep, objectives=[(UTIL, Direction.MAX), ("dev/weighted_f1/language:en", Direction.MAX)])
    with pytest.raises(ConfigError, match="one utility and one gap objective"):
        gap_budget(both_utilities[0], 0.1)
    with pytest.raises(ConfigError, match="tau must be a finite number >= 0"):
        gap_budget(fronts(sweep)[0], -1.0)


def test_table_json_and_csv_show_dto_and_util_at_tau() -> None:
    sweep = _sweep()
    result = fronts(sweep)
    budgets = {f.title: gap_budget(f, 0.1) for f in result}
    table = cli._format_fronts(sweep, result, "table", show_all=True, budgets=budgets)
    lines = table.splitlines()
    header = next(line for line in lines if "pareto" in line and "trial" in line)
    assert "dto" in header and "util@tau=0.1" in header
    t1 = next(line for line in lines if " t1 " in line).split()
    assert t1[:6] == ["*", "t1", "0.7000", "0.3000", f"{math.hypot(0.3, 0.3):.4f}", "-1.0000"]
    assert f"  best with {GAP} <= 0.1: trial t2 ({UTIL} 0.6000, gap 0.0500)" in lines
    # without --tau: the DTO column, no budget
    plain = cli._format_fronts(sweep, result, "table", show_all=False)
    assert "dto" in plain and "util@tau" not in plain and "best with" not in plain

    data = json.loads(cli._format_fronts(sweep, result, "json", show_all=True, budgets=budgets))[0]
    assert data["tau"] == 0.1 and data["best_at_tau"] == "t2"
    by_id = {t["trial_id"]: t for t in data["trials"]}
    assert by_id["t2"]["dto"] == pytest.approx(math.hypot(0.4, 0.05)) and by_id["t2"]["util_at_tau"] == 0.6
    assert by_id["t1"]["util_at_tau"] == -1.0
    assert by_id["t4"]["dto"] is None and by_id["t4"]["util_at_tau"] is None  # NaN is null, never a number
    assert "tau" not in json.loads(cli._format_fronts(sweep, result, "json", show_all=True))[0]

    rows = list(csv.DictReader(io.StringIO(cli._format_fronts(sweep, result, "csv", show_all=True, budgets=budgets))))
    assert len(rows) == 2 * 4  # one row per trial and objective, as before
    t2 = [r for r in rows if r["trial_id"] == "t2"]
    assert {r["dto"] for r in t2} == {str(math.hypot(0.4, 0.05))} and {r["util_at_tau"] for r in t2} == {"0.6"}
    assert rows[0]["train.lr"] == "0.001"


def test_frontier_command_takes_tau(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    monkeypatch.setattr(cli, "_resolve_sweep_target", lambda target, uri: ("tiny", "sqlite:///x"))
    monkeypatch.setattr(query, "load_sweep", lambda *args: _sweep())
    assert cli.main(["frontier", "tiny", "--tau", "0.06", "--by", "language"]) == 0
    out = capsys.readouterr().out
    assert "front [language=en]" in out and "util@tau=0.06" in out
    assert "best with dev/tpr_gap/gender/language:en <= 0.06: trial t3 (dev/weighted_f1/language:en 0.5000" in out
    assert cli.main(["frontier", "tiny", "--tau", "0.06", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["best_at_tau"] == "t2"
    page = tmp_path / "fronts.html"
    assert cli.main(["frontier", "tiny", "--plot", str(page)]) == 0
    assert f"dto: {math.hypot(0.4, 0.05):.4g}" in page.read_text()  # shown on hover


@pytest.mark.parametrize("tau", ["-0.1", "1.5", "abc"])
def test_frontier_refuses_a_bad_tau(capsys: pytest.CaptureFixture[str], tau: str) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["frontier", "tiny", "--tau", tau])
    assert info.value.code == 2 and "expected a gap in [0, 1]" in capsys.readouterr().err


def test_frontier_tau_without_a_gap_objective_is_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setattr(cli, "_resolve_sweep_target", lambda target, uri: ("tiny", "sqlite:///x"))
    monkeypatch.setattr(query, "load_sweep", lambda *args: _sweep())
    code = cli.main(["frontier", "tiny", "--tau", "0.1", "--objectives", f"{UTIL}:max,dev/weighted_f1/language:en:max"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--tau needs a front of one utility and one gap objective" in err
