"""Sweep specs: load-time validation, one-line errors naming file / key path / value, overrides, trials."""

from __future__ import annotations

import dataclasses
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from fairray.config import build_spec, load_spec, resolve_trial, to_plain
from fairray.errors import ConfigError
from fairray.frontier.pareto import Direction
from fairray.methods import MinMaxGapParams

SPECS = Path(__file__).resolve().parents[2] / "search_spaces"
SHIPPED = ("minmaxgap.yaml", "erm.yaml", "idi.yaml", "idi_cremad.yaml")

# A small valid spec; each test appends or swaps one section to make it invalid.
BASE = """\
name: tiny
method: {name: minmaxgap, lambda0: 0.5, lambda_max: 10.0}
model: {name: mlp}
train: {epochs: 3, lr: 0.001}
"""


def write(tmp_path: Path, text: str, name: str = "tiny_spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def with_section(section_yaml: str, base: str = BASE) -> str:
    """``base`` with the top-level sections named in ``section_yaml`` replaced (or added)."""
    raw = yaml.safe_load(base)
    raw.update(yaml.safe_load(textwrap.dedent(section_yaml)))
    return yaml.safe_dump(raw, sort_keys=False)


def config_error(path: Path, overrides: tuple[str, ...] = ()) -> str:
    """Load ``path`` expecting a ConfigError; return its message (always exactly one line)."""
    with pytest.raises(ConfigError) as info:
        load_spec(path, overrides)
    message = str(info.value)
    assert "\n" not in message, f"error message spans several lines: {message!r}"
    return message


def assert_names(message: str, source: str, key: str, *values: str) -> None:
    """``message`` reads ``{source}: {key}: ...`` and names every one of ``values`` after the key."""
    prefix = f"{source}: {key}: "
    assert message.startswith(prefix), f"expected the prefix {prefix!r} in {message!r}"
    detail = message[len(prefix) :]
    for value in values:
        assert re.search(rf"(?<![\w.]){re.escape(value)}(?![\w])", detail), f"{value!r} not named in {message!r}"


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings → ``{dotted.path: leaf}``; lists and scalars are leaves."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


# ---------------------------------------------------------------- the shipped specs
def test_shipped_minmaxgap_spec_loads_with_its_values() -> None:
    spec = load_spec(SPECS / "minmaxgap.yaml").spec
    assert spec.name == "minmaxgap" and spec.experiment == "minmaxgap"
    assert spec.method.name == "minmaxgap"
    assert isinstance(spec.method.params, MinMaxGapParams)
    assert (spec.method.params.lambda_max, spec.method.params.p, spec.method.params.adaptive) == (10.0, 2.0, True)
    assert spec.model.name == "mlp" and spec.model.params.hidden == 128
    assert set(spec.search.space) == {
        "method.lambda_max",
        "method.eps",
        "method.eta",
        "method.p",
        "train.lr",
        "model.hidden",
    }
    assert spec.search.space["method.p"].choices == (1, 2)
    assert [(o.metric, o.direction) for o in spec.search.objectives] == [
        ("dev/weighted_f1", Direction.MAX),
        ("dev/tpr_gap/gender/worst:language", Direction.MIN),
    ]
    assert spec.resources.resolved_backend == "function"


def test_shipped_erm_spec_loads_and_takes_its_experiment_from_name() -> None:
    spec = load_spec(SPECS / "erm.yaml").spec
    assert spec.method.name == "erm" and spec.method.params.loss == "ce"
    assert not hasattr(spec.method.params, "lambda_max")
    assert spec.tracking.experiment is None and spec.experiment == "erm"
    assert spec.search.space["method.loss"].choices == ("ce", "cb_ce", "focal")
    assert spec.budget.max_failures == 2  # not in the file: the default


def test_loaded_spec_is_frozen() -> None:
    spec = load_spec(SPECS / "minmaxgap.yaml").spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.train.epochs = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.method.params.lambda_max = 1.0
    with pytest.raises(TypeError):
        spec.search.space["train.epochs"] = spec.search.space["train.lr"]  # type: ignore[index]
    assert isinstance(spec.dataset.languages, tuple)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_yaml_key_is_consumed(name: str) -> None:
    """Loading rejects unknown keys; in addition every YAML leaf reappears, with its value, in the spec."""
    path = SPECS / name
    in_file = flatten(yaml.safe_load(path.read_text()))
    in_spec = flatten(to_plain(load_spec(path).spec))
    missing = sorted(set(in_file) - set(in_spec))
    assert not missing, f"YAML keys of {name} absent from the loaded spec: {missing}"
    changed = {k: (v, in_spec[k]) for k, v in in_file.items() if in_spec[k] != v}
    assert not changed, f"YAML values of {name} changed on load: {changed}"


@pytest.mark.parametrize("name", SHIPPED)
def test_to_plain_round_trips_through_build_spec(name: str) -> None:
    spec = load_spec(SPECS / name).spec
    assert build_spec(to_plain(spec), "plain") == spec


# ---------------------------------------------------------------- structure: unknown / missing keys
def test_minimal_base_spec_is_valid(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, BASE)).spec
    assert (spec.name, spec.method.name, spec.train.epochs) == ("tiny", "minmaxgap", 3)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "trian: {epochs: 5}\n")
    message = config_error(path)
    assert_names(message, str(path), "trian", "unknown")
    assert "train" in message  # the valid keys are listed


def test_unknown_nested_key(tmp_path: Path) -> None:
    path = write(tmp_path, with_section("train: {epochz: 10}"))
    message = config_error(path)
    assert_names(message, str(path), "train.epochz", "10")
    assert "unknown key" in message and "epochs" in message


def test_unknown_method_param(tmp_path: Path) -> None:
    path = write(tmp_path, with_section("method: {name: minmaxgap, lamda_max: 4}"))
    message = config_error(path)
    assert_names(message, str(path), "method.lamda_max", "4", "lambda_max")


def test_erm_rejects_a_minmaxgap_param(tmp_path: Path) -> None:
    path = write(tmp_path, with_section("method: {name: erm, lambda_max: 4}"))
    assert_names(config_error(path), str(path), "method.lambda_max", "4")


def test_unknown_method_name_lists_registered_methods(tmp_path: Path) -> None:
    path = write(tmp_path, with_section("method: {name: minmaxgapp}"))
    message = config_error(path)
    assert_names(message, str(path), "method.name", "'minmaxgapp'", "erm", "minmaxgap")


def test_unknown_model_name_lists_registered_models(tmp_path: Path) -> None:
    path = write(tmp_path, with_section("model: {name: cnn}"))
    assert_names(config_error(path), str(path), "model.name", "'cnn'", "mlp")


def test_method_may_be_given_by_name_alone(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, with_section("method: erm"))).spec
    assert spec.method.name == "erm" and spec.method.params.loss == "cb_ce"  # METHODS 3.1's default base loss


def test_missing_method(tmp_path: Path) -> None:
    path = write(tmp_path, "name: tiny\ntrain: {epochs: 3}\n")
    message = config_error(path)
    assert_names(message, str(path), "method", "missing")


def test_method_without_name(tmp_path: Path) -> None:
    path = write(tmp_path, "name: tiny\nmethod: {lambda_max: 3}\n")
    assert_names(config_error(path), str(path), "method.name", "missing")


def test_missing_name(tmp_path: Path) -> None:
    path = write(tmp_path, "method: {name: erm}\n")
    assert_names(config_error(path), str(path), "name", "missing")


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: tiny\nmethod: [erm\ntrain: {}\n")
    message = config_error(path)
    assert message.startswith(str(path)) and re.search(r"line \d+", message) and "invalid YAML" in message


def test_empty_file_is_not_a_spec(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    message = config_error(path)
    assert message.startswith(f"{path}: ") and "mapping" in message and "None" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    message = config_error(path)
    assert message.startswith(f"{path}: ") and "no such file" in message


# ---------------------------------------------------------------- wrong types
@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("train: {epochs: ten}", "train.epochs", "'ten'"),
        ("train: {lr: [1]}", "train.lr", "[1]"),
        ("method: {name: minmaxgap, adaptive: 'yes'}", "method.adaptive", "'yes'"),
        ("train: {epochs: true}", "train.epochs", "True"),  # bool is not an int
        ("train: {epochs: 5.0}", "train.epochs", "5.0"),
        ("train: {lr: .nan}", "train.lr", "nan"),
        ("train: {lr: .inf}", "train.lr", "inf"),
        ("train: {lr: -.inf}", "train.lr", "-inf"),
        ("name: ''", "name", "''"),
        ("name: 5", "name", "5"),
        ("dataset: {emotions: anger}", "dataset.emotions", "'anger'"),
        ("dataset: {emotions: [anger, 5]}", "dataset.emotions[1]", "5"),
        ("train: {sampler: balanced}", "train.sampler", "'balanced'"),
        ("train: 5", "train", "5"),
        ("method: [1]", "method", "[1]"),
    ],
)
def test_wrong_type(tmp_path: Path, section: str, key: str, value: str) -> None:
    path = write(tmp_path, with_section(section))
    assert_names(config_error(path), str(path), key, value)


def test_bool_for_int_is_rejected_with_reason(tmp_path: Path) -> None:
    path = write(tmp_path, with_section("train: {epochs: true}"))
    assert "integer" in config_error(path)


# ---------------------------------------------------------------- bad ranges
@pytest.mark.parametrize(
    ("section", "key", "value", "bound"),
    [
        ("train: {epochs: 0}", "train.epochs", "0", ">= 1"),
        ("method: {name: minmaxgap, eta: -1}", "method.eta", "-1.0", ">= 0"),
        ("dataset: {dev_fraction: 0.7}", "dataset.dev_fraction", "0.7", "< 0.5"),
        ("dataset: {test_fraction: 0}", "dataset.test_fraction", "0", "> 0"),
        ("train: {batch_size: 1}", "train.batch_size", "1", ">= 2"),
        ("method: {name: erm, beta: 1}", "method.beta", "1.0", "< 1"),
        ("model: {name: mlp, dropout: 1.5}", "model.dropout", "1.5", "< 1"),
    ],
)
def test_out_of_range(tmp_path: Path, section: str, key: str, value: str, bound: str) -> None:
    path = write(tmp_path, with_section(section))
    message = config_error(path)
    assert_names(message, str(path), key, value)
    assert bound in message


def test_lambda0_above_lambda_max(tmp_path: Path) -> None:
    path = write(tmp_path, with_section("method: {name: minmaxgap, lambda0: 12, lambda_max: 3}"))
    message = config_error(path)
    assert_names(message, str(path), "method", "lambda0", "lambda_max", "12.0", "3.0")


def test_lambda0_equal_to_lambda_max_is_allowed(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, with_section("method: {name: minmaxgap, lambda0: 3, lambda_max: 3}"))).spec
    assert spec.method.params.lambda0 == spec.method.params.lambda_max == 3.0


# ---------------------------------------------------------------- search space
def space(entries: str) -> str:
    return with_section(f"search: {{space: {{{entries}}}}}")


def test_valid_space_loads(tmp_path: Path) -> None:
    spec = load_spec(
        write(
            tmp_path,
            space(
                "method.lambda_max: {type: loguniform, low: 0.5, high: 20}, model.hidden: {type: int, low: 8, high: 64}"
            ),
        )
    ).spec
    assert spec.search.space["model.hidden"].type == "int"
    assert spec.search.space["method.lambda_max"].high == 20.0


@pytest.mark.parametrize(
    ("entry", "key", "values"),
    [
        # a path that does not exist in the config
        ("method.nope: {type: uniform, low: 0, high: 1}", "search.space.method.nope", ("method.nope", "unknown")),
        # a path whose sampled values are invalid there
        ("train.epochs: {type: uniform, low: 0.5, high: 2.0}", "search.space.train.epochs", ("0.5", "integer")),
        ("method.p: {type: categorical, choices: [1, two]}", "search.space.method.p", ("'two'", "method.p")),
        ("method.lambda0: {type: uniform, low: 0, high: 20}", "search.space.method.lambda0", ("20.0", "lambda_max")),
        # malformed dimensions
        ("method.eps: {type: uniform, low: 0.1, high: 0.1}", "search.space.method.eps", ("low=0.1", "high=0.1")),
        ("method.eps: {type: uniform, low: 0.2, high: 0.1}", "search.space.method.eps", ("low=0.2", "high=0.1")),
        ("method.eta: {type: loguniform, low: 0, high: 1}", "search.space.method.eta.low", ("0.0",)),
        ("method.eta: {type: loguniform, low: -1, high: 1}", "search.space.method.eta.low", ("-1.0",)),
        ("model.hidden: {type: int, low: 8.5, high: 64}", "search.space.model.hidden.low", ("8.5",)),
        ("model.hidden: {type: int, low: 8, high: 64.5}", "search.space.model.hidden.high", ("64.5",)),
        ("model.hidden: {type: int, low: 0, high: 64, log: true}", "search.space.model.hidden.low", ("0.0",)),
        ("method.p: {type: categorical, choices: []}", "search.space.method.p.choices", ("non-empty",)),
        ("method.p: {type: categorical}", "search.space.method.p.choices", ("non-empty",)),
        ("method.p: {type: categorical, choices: [1], low: 1}", "search.space.method.p", ("choices",)),
        (
            "method.eps: {type: uniform, low: 0, high: 1, choices: [1]}",
            "search.space.method.eps.choices",
            ("'uniform'",),
        ),
        ("method.eps: {type: uniform, high: 1}", "search.space.method.eps.low", ("'uniform'",)),
        ("method.eps: {type: uniform, low: 0}", "search.space.method.eps.high", ("'uniform'",)),
        ("method.eps: {type: uniform, low: 0, high: 1, step: 0}", "search.space.method.eps.step", ("0.0",)),
        ("method.eta: {type: loguniform, low: 1, high: 2, step: 0.5}", "search.space.method.eta.step", ("0.5",)),
        ("method.eps: {type: normal, low: 0, high: 1}", "search.space.method.eps.type", ("'normal'",)),
        ("method.eps: {type: uniform, lo: 0, high: 1}", "search.space.method.eps.lo", ("0",)),
    ],
)
def test_bad_search_space(tmp_path: Path, entry: str, key: str, values: tuple[str, ...]) -> None:
    path = write(tmp_path, space(entry))
    assert_names(config_error(path), str(path), key, *values)


def test_space_reports_the_first_invalid_sample_with_its_reason(tmp_path: Path) -> None:
    path = write(tmp_path, space("train.epochs: {type: uniform, low: 0.5, high: 2.0}"))
    message = config_error(path)
    assert "(train.epochs: expected an integer, got 0.5)" in message


def test_space_on_a_method_of_a_string_plugin(tmp_path: Path) -> None:
    """``method: minmaxgap`` (a bare name) still takes ``method.*`` dimensions."""
    text = with_section("method: minmaxgap\nsearch: {space: {method.eta: {type: uniform, low: 0.5, high: 3}}}")
    spec = load_spec(write(tmp_path, text)).spec
    assert spec.method.name == "minmaxgap" and "method.eta" in spec.search.space


@pytest.mark.parametrize(
    "entry",
    [
        "model.hidden: {type: int, low: 8, high: 64, step: 0.5}",
        "model.hidden: {type: int, low: 8, high: 64, step: -2}",
        "model.hidden: {type: int, low: 8, high: 64, step: 2, log: true}",
        "method.eps: {type: uniform, low: 0, high: 1, log: true}",
        "method.eps: {type: uniform, low: 0.1, high: 1, log: true, step: 0.1}",
    ],
    ids=["int-step-fraction", "int-step-negative", "int-log-with-step", "uniform-log-low-0", "uniform-log-step"],
)
def test_space_that_optuna_cannot_take_is_rejected_at_load(tmp_path: Path, entry: str) -> None:
    path = write(tmp_path, space(entry))
    message = config_error(path)
    assert message.startswith(f"{path}: search.space.")


# ---------------------------------------------------------------- objectives
def objectives(*items: str) -> str:
    return with_section(f"search: {{objectives: [{', '.join(items)}]}}")


def test_valid_objectives(tmp_path: Path) -> None:
    spec = load_spec(
        write(
            tmp_path,
            objectives(
                "{metric: dev/macro_f1, direction: max}", "{metric: dev/avg_gap/gender/mean:language, direction: min}"
            ),
        )
    ).spec
    assert [o.direction for o in spec.search.objectives] == [Direction.MAX, Direction.MIN]


@pytest.mark.parametrize(
    ("item", "key", "values"),
    [
        (
            "{metric: dev/f1_weighted, direction: max}",
            "search.objectives[0].metric",
            ("'dev/f1_weighted'", "weighted_f1"),
        ),
        ("{metric: test/weighted_f1, direction: max}", "search.objectives[0].metric", ("'test/weighted_f1'", "dev")),
        ("{metric: valid/weighted_f1, direction: max}", "search.objectives[0].metric", ("'valid'",)),
        ("{metric: weighted_f1, direction: max}", "search.objectives[0].metric", ("'weighted_f1'", "malformed")),
        ("{metric: dev/tpr_gap, direction: min}", "search.objectives[0].metric", ("'dev/tpr_gap'",)),
        (
            "{metric: dev/tpr_gap/age/worst:language, direction: min}",
            "search.objectives[0].metric",
            ("'age'", "'gender'", "'dev/tpr_gap/age/worst:language'"),
        ),
        ("{metric: dev/weighted_f1, direction: up}", "search.objectives[0].direction", ("'up'", "'max'", "'min'")),
        ("{direction: max}", "search.objectives[0].metric", ("missing",)),
    ],
)
def test_bad_objective(tmp_path: Path, item: str, key: str, values: tuple[str, ...]) -> None:
    path = write(tmp_path, objectives(item))
    assert_names(config_error(path), str(path), key, *values)


def test_duplicate_objective_names_the_second(tmp_path: Path) -> None:
    item = "{metric: dev/weighted_f1, direction: max}"
    path = write(tmp_path, objectives(item, "{metric: dev/acc, direction: max}", item))
    assert_names(config_error(path), str(path), "search.objectives[2].metric", "'dev/weighted_f1'", "twice")


def test_objective_attribute_follows_the_dataset_attribute(tmp_path: Path) -> None:
    text = objectives("{metric: dev/tpr_gap/language/worst:corpus, direction: min}")
    spec = load_spec(write(tmp_path, with_section("dataset: {attribute: language, stratum: corpus}", text))).spec
    assert spec.search.objectives[0].metric == "dev/tpr_gap/language/worst:corpus"


def test_objective_stratum_must_be_the_dataset_stratum(tmp_path: Path) -> None:
    path = write(tmp_path, objectives("{metric: dev/tpr_gap/gender/worst:corpus, direction: min}"))
    assert_names(config_error(path), str(path), "search.objectives[0].metric", "'corpus'")


@pytest.mark.parametrize("spelling", ["maximize", "MAX"])
def test_objective_direction_spellings_match_direction_parse(tmp_path: Path, spelling: str) -> None:
    assert Direction.parse(spelling) is Direction.MAX
    spec = load_spec(write(tmp_path, objectives(f"{{metric: dev/weighted_f1, direction: {spelling}}}"))).spec
    assert spec.search.objectives[0].direction is Direction.MAX


# ---------------------------------------------------------------- --set overrides
def test_override_applies(tmp_path: Path) -> None:
    loaded = load_spec(write(tmp_path, BASE), ["train.epochs=5", "method.lambda_max=4"])
    assert loaded.spec.train.epochs == 5 and loaded.raw["train"]["epochs"] == 5
    assert loaded.spec.method.params.lambda_max == 4.0


def test_override_of_a_shipped_spec(tmp_path: Path) -> None:
    spec = load_spec(SPECS / "minmaxgap.yaml", ["train.epochs=5"]).spec
    assert spec.train.epochs == 5


def test_override_creates_missing_sections(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, BASE), ["budget.num_samples=3", "tracking.uri=http://mlflow:5000"]).spec
    assert spec.budget.num_samples == 3 and spec.tracking.uri == "http://mlflow:5000"


def test_override_of_a_string_plugin(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, with_section("method: minmaxgap")), ["method.eta=0.5"]).spec
    assert spec.method.name == "minmaxgap" and spec.method.params.eta == 0.5


@pytest.mark.parametrize(
    ("text", "attr", "expected", "expected_type"),
    [
        ("train.lr=0.002", ("train", "lr"), 0.002, float),
        ("method.p=1", ("method", "p"), 1.0, float),  # YAML int 1, widened for a float field
        ("method.adaptive=false", ("method", "adaptive"), False, bool),
        ("train.sampler=uniform", ("train", "sampler"), "uniform", str),
        ("tracking.uri=null", ("tracking", "uri"), None, type(None)),
    ],
)
def test_override_value_is_parsed_as_yaml(
    tmp_path: Path, text: str, attr: tuple[str, str], expected: Any, expected_type: type
) -> None:
    spec = load_spec(write(tmp_path, BASE), [text]).spec
    section = getattr(spec, attr[0])
    value = getattr(section.params if attr[0] == "method" else section, attr[1])
    assert value == expected and type(value) is expected_type


def test_override_int_stays_int_in_raw(tmp_path: Path) -> None:
    loaded = load_spec(write(tmp_path, BASE), ["method.p=1"])
    assert loaded.raw["method"]["p"] == 1 and type(loaded.raw["method"]["p"]) is int


def test_override_scientific_notation_is_a_float(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, BASE), ["train.lr=1e-3"]).spec
    assert spec.train.lr == 0.001


def test_scientific_notation_in_a_file_is_a_float(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, with_section("train: {lr: 1e-3}"))).spec
    assert spec.train.lr == 0.001


def test_unknown_override_key_names_the_set(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    message = config_error(path, ("train.epochz=5",))
    assert_names(message, f"{path} (with --set train.epochz=5)", "train.epochz", "5", "epochs")


def test_invalid_override_value_names_the_set(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    message = config_error(path, ("train.epochs=ten",))
    assert_names(message, f"{path} (with --set train.epochs=ten)", "train.epochs", "'ten'")


def test_override_error_names_the_offending_set_among_several(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    message = config_error(path, ("train.epochs=4", "method.eta=-2", "train.lr=0.01"))
    # overrides are validated together (order-independent); the message lists them and names the key
    assert_names(message, f"{path} (with --set train.epochs=4 method.eta=-2 train.lr=0.01)", "method.eta", "-2.0")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("noequals", ("'noequals'", "KEY=VALUE")),
        ("=5", ("'='", "invalid key")),
        ("train..epochs=5", ("'train..epochs'",)),
        ("train.lr=[1", ("'train.lr=[1'", "YAML")),
    ],
)
def test_malformed_override(tmp_path: Path, text: str, words: tuple[str, ...]) -> None:
    message = config_error(write(tmp_path, BASE), (text,))
    assert message.startswith("--set ")
    for word in words:
        assert word.strip("'") in message, f"{word!r} not in {message!r}"


def test_override_through_a_scalar_names_file_and_set(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    message = config_error(path, ("name.x=1",))
    assert message.startswith(f"{path} (with --set name.x=1): ")


def test_overrides_are_validated_as_a_whole(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    assert load_spec(path, ["method.lambda_max=20", "method.lambda0=15"]).spec.method.params.lambda0 == 15.0
    assert load_spec(path, ["method.lambda0=15", "method.lambda_max=20"]).spec.method.params.lambda0 == 15.0


@pytest.mark.parametrize("how", ["search-space", "set", "trial"])
def test_model_params_apply_to_the_default_model(tmp_path: Path, how: str) -> None:
    base = "name: tiny\nmethod: {name: erm}\n"
    assert load_spec(write(tmp_path, base)).spec.model.name == "mlp"  # the default model
    if how == "search-space":
        loaded = load_spec(write(tmp_path, base + "search: {space: {model.hidden: {type: int, low: 8, high: 64}}}\n"))
    elif how == "set":
        loaded = load_spec(write(tmp_path, base), ["model.hidden=64"])
    else:
        loaded = resolve_trial(load_spec(write(tmp_path, base)).raw, {"model.hidden": 64})
    assert loaded.spec.model.name == "mlp"


def test_overrides_do_not_touch_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    load_spec(path, ["train.epochs=7"])
    assert load_spec(path).spec.train.epochs == 3


def test_duplicate_yaml_key_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "name: tiny\nmethod: {name: erm}\ntrain: {epochs: 5, epochs: 10}\n")
    assert "epochs" in config_error(path)


# ---------------------------------------------------------------- trials
def test_resolve_trial_applies_sampled_values() -> None:
    loaded = load_spec(SPECS / "minmaxgap.yaml")
    trial = resolve_trial(loaded.raw, {"method.lambda_max": 3.0, "model.hidden": 48, "method.p": 1})
    assert trial.spec.method.params.lambda_max == 3.0
    assert trial.spec.model.params.hidden == 48 and trial.spec.method.params.p == 1.0
    assert trial.raw["method"]["lambda_max"] == 3.0
    assert loaded.raw["method"]["lambda_max"] == 10.0  # the sweep's raw spec is not modified


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_resolve_trial_rejects_non_finite_samples(value: float) -> None:
    raw = load_spec(SPECS / "minmaxgap.yaml").raw
    with pytest.raises(ConfigError) as info:
        resolve_trial(raw, {"method.lambda_max": value}, source="trial_7")
    assert_names(str(info.value), "trial_7", "method.lambda_max", repr(value))


def test_resolve_trial_validates_the_result() -> None:
    raw = load_spec(SPECS / "minmaxgap.yaml").raw
    with pytest.raises(ConfigError) as info:
        resolve_trial(raw, {"train.epochs": 2.5}, source="trial_3")
    assert_names(str(info.value), "trial_3", "train.epochs", "2.5")


# ---------------------------------------------------------------- conditional spaces and ablations
COND = """\
name: cond
method: {name: erm, loss: cb_ce}
train: {epochs: 2}
"""


def _cond(tmp_path: Path, section: str) -> Path:
    return write(tmp_path, COND + textwrap.dedent(section))


@pytest.mark.parametrize(
    ("space_yaml", "key", "message"),
    [
        # a condition on a dimension that is not listed earlier
        ("method.eta_q: {type: loguniform, low: 0.001, high: 1, when: {method.name: gdro}}\n"
         "method.name: {type: categorical, choices: [erm, gdro]}",
         "search.space.method.eta_q.when.method.name", "listed before"),
        # a condition value outside the parent's choices
        ("method.name: {type: categorical, choices: [erm, gdro]}\n"
         "method.eta_q: {type: loguniform, low: 0.001, high: 1, when: {method.name: [gdro, dro]}}",
         "search.space.method.eta_q.when.method.name", "['dro'] are not among the choices"),
        # a condition on a non-categorical dimension
        ("train.lr: {type: loguniform, low: 0.0003, high: 0.003}\n"
         "method.name: {type: categorical, choices: [erm, gdro], when: {train.lr: 0.001}}",
         "search.space.method.name.when.train.lr", "categorical dimension"),
        # a dataset dimension must be categorical (its values are prepared before the trials)
        ("dataset.dev_fraction: {type: uniform, low: 0.1, high: 0.3}",
         "search.space.dataset.dev_fraction.type", "must be categorical"),
        # a method parameter sampled for a method that does not have it: the hint names `when`
        ("method.name: {type: categorical, choices: [erm, gdro]}\n"
         "method.eta_q: {type: loguniform, low: 0.001, high: 1}",
         "search.space.method.eta_q", "add e.g. `when:"),
    ],
)
def test_conditional_space_errors_name_the_key(tmp_path, space_yaml, key, message):
    text = "search:\n  space:\n" + textwrap.indent(space_yaml, "    ") + "\n"
    with pytest.raises(ConfigError) as err:
        load_spec(_cond(tmp_path, text))
    assert f": {key}:" in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_conditional_dimension_is_checked_under_its_conditions(tmp_path):
    text = """\
    search:
      space:
        method.name: {type: categorical, choices: [erm, gdro, gadro]}
        method.C: {type: categorical, choices: [0, 4], when: {method.name: [gadro]}}
    """
    spec = load_spec(_cond(tmp_path, text)).spec
    from fairray.config import conditions

    assert conditions(spec.search.space["method.C"]) == {"method.name": ("gadro",)}
    # the same dimension conditioned on a method without C is refused, naming the combination
    bad = text.replace("[gadro]", "[gdro, gadro]")
    with pytest.raises(ConfigError, match=r"value 0 with \{'method.name': 'gdro'\} is not valid"):
        load_spec(_cond(tmp_path, bad))


def test_ablation_points_expand_cells_dedupe_and_repeat_seeds(tmp_path):
    from fairray.config import ablation_points

    text = """\
    ablations:
      grid:
        seeds: [0, 1]
        cells:
          - {method.name: [erm, gdro]}
          - {method.name: [gdro, gadro], dataset.groups.name: [attribute, kmeans]}
          - {method.name: [erm]}
    """
    spec = load_spec(_cond(tmp_path, text)).spec
    points = ablation_points(spec, "grid")
    cells = [{k: v for k, v in p.items() if k != "train.seed"} for p in points[:6]]
    assert cells == [
        {"method.name": "erm"}, {"method.name": "gdro"},
        {"method.name": "gdro", "dataset.groups.name": "attribute"},
        {"method.name": "gdro", "dataset.groups.name": "kmeans"},
        {"method.name": "gadro", "dataset.groups.name": "attribute"},
        {"method.name": "gadro", "dataset.groups.name": "kmeans"},
    ]
    assert len(points) == 12 and [p["train.seed"] for p in points] == [0] * 6 + [1] * 6
    with pytest.raises(ConfigError, match="no such ablation .* declared: \\['grid'\\]"):
        ablation_points(spec, "nope")


@pytest.mark.parametrize(
    ("ablation_yaml", "message"),
    [
        ("{cells: [{method.name: [erm, nope]}]}", "ablations.a: point {'method.name': 'nope', 'train.seed': 0}"),
        ("{cells: [{method.name: []}]}", "ablations.a.cells[0].method.name: needs a non-empty list"),
        ("{cells: []}", "ablations.a.cells: an ablation needs at least one cell"),
        ("{cells: [{train.seed: [1]}]}", "seeds are set by `seeds:`"),
        ("{cells: [{method.name: [erm]}], seeds: []}", "ablations.a.seeds: an ablation needs at least one seed"),
    ],
)
def test_invalid_ablations_fail_at_load_time(tmp_path, ablation_yaml, message):
    with pytest.raises(ConfigError) as err:
        load_spec(_cond(tmp_path, f"ablations:\n  a: {ablation_yaml}\n"))
    assert message in str(err.value), str(err.value)


def test_group_source_is_checked_at_load_time(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset.groups: .*unknown group source 'kmean'"):
        load_spec(_cond(tmp_path, "dataset: {groups: {name: kmean}}\n"))
    # a source that needs audio cannot run on the built-in features
    with pytest.raises(ConfigError, match=r"dataset.groups.name: group source 'pseudo_hf' reads "
                                          r"\['gender_prob \(hf_voice_gender\)'\]"):
        load_spec(_cond(tmp_path, "dataset: {groups: {name: pseudo_hf}}\n"))
    with pytest.raises(ConfigError, match=r"'kmeans' reads \['speaker_emb \(ecapa\)'\] computed from audio"):
        load_spec(_cond(tmp_path, "dataset: {groups: {name: kmeans, params: {embedder: ecapa}}}\n"))
    with pytest.raises(ConfigError, match=r"dataset.groups: group source 'kmeans': embedder must be one of"):
        load_spec(_cond(tmp_path, "dataset: {groups: {name: kmeans, params: {embedder: xvector}}}\n"))
    assert load_spec(_cond(tmp_path, "dataset: {groups: {name: kmeans, params: {K: 4}}}\n")).spec


def test_layer_weighted_model_must_match_the_ssl_layout(tmp_path):
    corpora = ("dataset: {name: corpora, corpora: [{adapter: emodb, root: /nowhere}], "
               "extractor: {name: hf_ssl, params: {model_path: /m, layers: [3, 6, 9], weighted_sum: %s}}}\n")
    text = COND + "model: {name: layer_weighted, n_layers: %d}\n" + corpora
    path = write(tmp_path, text % (3, "true"))
    assert load_spec(path).spec.model.params.n_layers == 3
    with pytest.raises(ConfigError, match=r"model: model layer_weighted needs the per-layer vectors side by side.*"
                                          r"set dataset.extractor.params.weighted_sum: true"):
        load_spec(write(tmp_path, text % (3, "false")))
    with pytest.raises(ConfigError, match=r"model.n_layers: 4 does not match the 3 layers input 'features' stacks"):
        load_spec(write(tmp_path, text % (4, "true")))


def test_a_model_that_cannot_read_the_datasets_inputs_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_spec(write(tmp_path, COND + "model: {name: wav_cnn}\n"))
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(tmp_path))
    assert re.search(r"model: model wav_cnn accepts waveform inputs, but the dataset provides features: vector\[\?\]; "
                     r"models for these inputs: .*mlp", message), message


def test_objectives_must_exist_for_the_target_type():
    with pytest.raises(ConfigError, match=r"search.objectives\[0\].metric: 'acc' is not computed for multi-label"):
        load_spec(SPECS / "idi_cremad.yaml", ["search.objectives=[{metric: dev/acc, direction: max}]"])
    spec = load_spec(SPECS / "idi_cremad.yaml", ["search.objectives=[{metric: dev/hamming_acc, direction: max}]"])
    assert spec.spec.search.objectives[0].metric == "dev/hamming_acc"


def test_a_resampling_protocol_is_refused_as_the_split_protocol(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset.protocol.name: 'imbalance_1to20' resamples inside existing"):
        load_spec(_cond(tmp_path, "dataset: {protocol: {name: imbalance_1to20, params: {label: emotion}}}\n"))
