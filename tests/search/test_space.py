"""The YAML → Optuna translation: conditional (define-by-run) spaces and the dataset variants they imply."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import optuna
import pytest

from fairray.config import load_spec
from fairray.errors import ConfigError
from fairray.search import ConditionalSpace, is_conditional, make_sampler, to_distributions

SPECS = Path(__file__).resolve().parents[2] / "search_spaces"

BASE = """\
name: cond
method: {name: erm, loss: cb_ce}
train: {epochs: 2}
search:
  space:
    method.name: {type: categorical, choices: [erm, gdro, gadro, rw]}
    dataset.groups.name: {type: categorical, choices: [attribute, kmeans], when: {method.name: [gdro, gadro, rw]}}
    dataset.groups.params.K: {type: categorical, choices: [2, 16], when: {dataset.groups.name: kmeans}}
    method.eta_q: {type: loguniform, low: 0.001, high: 1.0, when: {method.name: [gdro, gadro]}}
    method.C: {type: categorical, choices: [0, 4], when: {method.name: gadro}}
    train.lr: {type: loguniform, low: 0.0003, high: 0.003}
  objectives:
    - {metric: dev/macro_f1, direction: max}
    - {metric: dev/tpr_gap/gender, direction: min}
"""


def _space(tmp_path: Path, text: str = BASE):
    path = tmp_path / "cond.yaml"
    path.write_text(textwrap.dedent(text))
    return load_spec(path).spec.search.space


def _check(params: dict) -> None:
    """Every sampled configuration obeys the conditions of BASE."""
    method = params["method.name"]
    assert ("dataset.groups.name" in params) == (method in ("gdro", "gadro", "rw"))
    assert ("dataset.groups.params.K" in params) == (params.get("dataset.groups.name") == "kmeans")
    assert ("method.eta_q" in params) == (method in ("gdro", "gadro"))
    assert ("method.C" in params) == (method == "gadro")
    assert "train.lr" in params


@pytest.mark.parametrize("sampler", ["tpe", "random", "nsga2", "gp"])
def test_sampled_trials_follow_the_conditions(tmp_path, sampler):
    space = _space(tmp_path)
    assert is_conditional(space)
    define = ConditionalSpace(space)
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=make_sampler(sampler, 0, 2, conditional=True))
    seen = set()
    for i in range(24):
        trial = study.ask()
        define(trial)
        _check(trial.params)
        seen.add(trial.params["method.name"])
        study.tell(trial, [0.5 + 0.01 * i, 0.2 - 0.005 * i])
    assert seen == {"erm", "gdro", "gadro", "rw"}  # every branch is reached


def test_conditional_space_pickles_for_resume(tmp_path):
    define = ConditionalSpace(_space(tmp_path))
    again = pickle.loads(pickle.dumps(define))
    assert [d[0] for d in again.dims] == [d[0] for d in define.dims]


def test_dataset_assignments_enumerate_reachable_variants_only(tmp_path):
    define = ConditionalSpace(_space(tmp_path))
    variants = define.assignments(lambda p: p.startswith("dataset."))
    assert variants == [
        {},  # erm: groups not sampled, the spec's own dataset
        {"dataset.groups.name": "attribute"},
        {"dataset.groups.name": "kmeans", "dataset.groups.params.K": 2},
        {"dataset.groups.name": "kmeans", "dataset.groups.params.K": 16},
    ]


def test_unconditional_spaces_keep_the_plain_distributions(tmp_path):
    text = BASE.split("search:")[0] + textwrap.dedent("""\
        search:
          space:
            train.lr: {type: loguniform, low: 0.0003, high: 0.003}
          objectives: [{metric: dev/macro_f1, direction: max}]
        """)
    space = _space(tmp_path, text)
    assert not is_conditional(space)
    assert set(to_distributions(space)) == {"train.lr"}


def test_a_condition_deciding_data_must_be_categorical(tmp_path):
    space = _space(tmp_path)
    define = ConditionalSpace(space)
    define.dims.insert(0, ("train.lr", to_distributions(space)["train.lr"], {}))
    define.dims.append(("dataset.split_seed", optuna.distributions.IntDistribution(0, 3), {"train.lr": (1.0,)}))
    with pytest.raises(ConfigError, match="train.lr: must be categorical"):
        define.assignments(lambda p: p.startswith("dataset."))


def test_shipped_idi_space_reaches_every_method_and_group_source():
    spec = load_spec(SPECS / "idi.yaml").spec
    define = ConditionalSpace(spec.search.space)
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=make_sampler("random", 0, 2, conditional=True))
    methods, sources = set(), set()
    for _ in range(120):
        trial = study.ask()
        define(trial)
        methods.add(trial.params["method.name"])
        sources.add(trial.params.get("dataset.groups.name"))
        study.tell(trial, [0.5, 0.1])
    assert methods == set(spec.search.space["method.name"].choices)
    assert sources == {None, "attribute", "pseudo", "kmeans"}
