"""Switching a plugin by a dotted path (an ablation cell or a sampled ``method.name``) keeps the parameters the new
plugin shares with the old one and drops the others, whatever order the point lists them in."""

from __future__ import annotations

from pathlib import Path

import pytest

from fairray.config import load_spec, resolve_trial, set_path
from fairray.errors import ConfigError

SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "minmaxgap.yaml"


def test_switching_the_method_keeps_shared_parameters_and_drops_the_others():
    raw = load_spec(SPEC).raw
    trial = resolve_trial(raw, {"method.name": "erm"})
    assert trial.spec.method.name == "erm"
    assert trial.raw["method"] == {"name": "erm", "loss": "ce"}  # minmaxgap's loss: ce carries over
    assert trial.spec.method.params.loss == "ce"


@pytest.mark.parametrize("order", ["name first", "name last"])
def test_the_name_is_applied_before_its_parameters(order):
    raw = {"method": {"name": "erm"}}
    params = {"method.name": "minmaxgap", "method.p": 1}
    if order == "name last":
        params = dict(reversed(list(params.items())))
    trial = resolve_trial({**load_spec(SPEC).raw, **raw}, params)
    assert trial.spec.method.name == "minmaxgap" and trial.spec.method.params.p == 1


def test_setting_the_same_name_keeps_every_parameter():
    raw = {"method": {"name": "minmaxgap", "p": 1, "eta": 3.0}}
    set_path(raw, "method.name", "minmaxgap")
    assert raw["method"] == {"name": "minmaxgap", "p": 1, "eta": 3.0}


def test_the_papers_ablation_loads_and_its_erm_cell_has_erm_defaults():
    loaded = load_spec(SPEC)
    assert "paper" in loaded.spec.ablations
    with pytest.raises(ConfigError, match="unknown key"):  # a parameter ERM does not have is still refused
        resolve_trial(loaded.raw, {"method.name": "erm", "method.lambda_max": 3.0})
