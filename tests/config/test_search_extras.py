"""search.constraints and search.early_stopping: parsed once and checked at load time; bad input is one line,
exit 2, before anything runs."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import yaml

from fairray.cli import main
from fairray.config import Constraint, load_spec
from fairray.errors import ConfigError

BASE = {
    "name": "tiny",
    "method": {"name": "erm"},
    "train": {"epochs": 6},
    "search": {
        "space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        "objectives": [{"metric": "dev/weighted_f1", "direction": "max"},
                       {"metric": "dev/tpr_gap/gender/worst:language", "direction": "min"}],
    },
}


def _spec(tmp_path: Path, **search) -> Path:
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw["search"].update(search)
    raw["storage"] = {"path": str(tmp_path / "runs")}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_constraints_are_parsed_once_into_typed_values(tmp_path):
    spec = load_spec(_spec(tmp_path, constraints=["dev/weighted_f1 >= 0.40", "dev/weighted_f1_gap/gender<=0.1"])).spec
    assert spec.search.constraints == (Constraint("dev/weighted_f1", ">=", 0.4),
                                       Constraint("dev/weighted_f1_gap/gender", "<=", 0.1))
    low, gap = spec.search.constraints
    assert low.violation(0.35) == pytest.approx(0.05) and low.violation(0.5) == pytest.approx(-0.1)
    assert gap.violation(0.3) == pytest.approx(0.2) and low.violation(math.nan) == math.inf
    assert str(low) == "dev/weighted_f1 >= 0.4"


def test_early_stopping_defaults_to_the_search_objectives(tmp_path):
    spec = load_spec(_spec(tmp_path, early_stopping={"type": "moasha", "grace": 2, "reduction": 3})).spec
    stopping = spec.search.early_stopping
    assert (stopping.grace, stopping.reduction) == (2, 3.0)
    assert spec.search.stopping_objectives == spec.search.objectives
    from fairray.sweep.scheduler import from_spec

    scheduler = from_spec(spec)
    assert scheduler.rungs == (2,) and scheduler.metrics == tuple(o.metric for o in spec.search.objectives)


@pytest.mark.parametrize(("search", "message"), [
    ({"constraints": ["test/weighted_f1 >= 0.4"]},
     "search.constraints[0]: constraints must use dev metrics, got 'test/weighted_f1'"),
    ({"constraints": ["dev/weighted_f1 > 0.4"]}, "search.constraints[0]: expected 'METRIC >= NUMBER'"),
    ({"constraints": ["dev/f1_gap/gender <= 0.1"]}, "search.constraints[0]: unknown metric 'dev/f1_gap/gender'"),
    ({"constraints": "dev/weighted_f1 >= 0.4"}, "search.constraints: expected a list"),
    ({"early_stopping": {"type": "moasha", "grace": 6}},
     "search.early_stopping.grace: the first rung (6 epochs) must come before the last epoch (train.epochs 6)"),
    ({"early_stopping": {"type": "hyperband"}}, "search.early_stopping.type: expected one of 'moasha'"),
    ({"early_stopping": {"type": "moasha", "reduction": 1}}, "search.early_stopping.reduction: must be > 1"),
    ({"early_stopping": {"type": "moasha", "grace": 2,
                         "objectives": [{"metric": "dev/weighted_f1/language:en", "direction": "max"}]}},
     "search.early_stopping.objectives[0].metric: 'dev/weighted_f1/language:en' is not reported every epoch"),
])  # fmt: skip
def test_bad_search_settings_are_one_line_exit_2_before_anything_runs(tmp_path, capsys, search, message):
    path = _spec(tmp_path, **search)
    with pytest.raises(ConfigError, match="^" + str(path).replace(".", r"\.")):
        load_spec(path)
    code = main(["sweep", str(path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()  # refused before Ray, MLflow or any folder was started


def test_a_per_epoch_headline_metric_may_drive_early_stopping(tmp_path):
    spec = load_spec(_spec(tmp_path, early_stopping={
        "type": "moasha", "grace": 2, "objectives": [{"metric": "dev/macro_f1", "direction": "max"},
                                                     {"metric": "dev/dp_gap/gender", "direction": "min"}]})).spec
    assert [o.metric for o in spec.search.stopping_objectives] == ["dev/macro_f1", "dev/dp_gap/gender"]


def test_the_text_form_is_documented_in_the_error():
    with pytest.raises(ValueError, match=textwrap.shorten("'dev/weighted_f1 >= 0.40'", 40)):
        Constraint.parse("weighted_f1 at least 0.4")


def _with(tmp_path: Path, **sections) -> Path:
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw.update(sections)
    raw["storage"] = {"path": str(tmp_path / "runs")}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize(("sections", "message"), [
    ({"budget": {"repeats": 3}, "ablations": {"grid": {"cells": [{"train.lr": [0.001]}], "seeds": [0, 1]}}},
     "budget.repeats: 3 repeats each configuration under 3 seeds, and ablations.grid.seeds [0, 1] lists seeds"),
    ({"budget": {"repeats": 2}, "search": {**BASE["search"], "space": {
        "train.seed": {"type": "categorical", "choices": [0, 1]}}}},
     "budget.repeats: 2 sets train.seed for each repeat, and search.space samples train.seed too"),
    ({"budget": {"repeats": 0}}, "budget.repeats: must be >= 1, got 0"),
])  # fmt: skip
def test_bad_repeats_are_one_line_exit_2(tmp_path, capsys, sections, message):
    code = main(["sweep", str(_with(tmp_path, **sections)), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_repeats_seed_an_ablation_that_lists_none(tmp_path):
    from fairray.config import ablation_points

    path = _with(tmp_path, budget={"repeats": 3}, train={"epochs": 6, "seed": 5},
                 ablations={"grid": {"cells": [{"train.lr": [0.001, 0.01]}]}})
    points = ablation_points(load_spec(path).spec, "grid")
    assert sorted((p["train.lr"], p["train.seed"]) for p in points) == [
        (lr, s) for lr in (0.001, 0.01) for s in (5, 6, 7)]
