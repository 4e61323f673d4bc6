"""Gap objectives in specs: the range variants are selectable, and train.s_min defaults to 5 under a gap objective."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from fairray.config import load_spec, resolve_trial
from fairray.config._load import GAP_OBJECTIVE_S_MIN
from fairray.errors import ConfigError
from fairray.frontier.pareto import Direction

SPECS = Path(__file__).resolve().parents[2] / "search_spaces"

BASE = {
    "name": "tiny",
    "method": {"name": "minmaxgap", "lambda0": 0.5, "lambda_max": 10.0},
    "model": {"name": "mlp"},
    "train": {"epochs": 3, "lr": 0.001},
}
GAP = {"metric": "dev/tpr_gap/gender/worst:language", "direction": "min"}
UTIL = {"metric": "dev/weighted_f1", "direction": "max"}


def spec_file(tmp_path: Path, objectives: list[dict], train: dict | None = None, space: dict | None = None) -> Path:
    raw = {
        **BASE,
        "train": {**BASE["train"], **(train or {})},
        "search": {"objectives": objectives, **({"space": space} if space else {})},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(yaml.safe_dump(raw, sort_keys=False)))
    return path


# ---------------------------------------------------------------- range variants as objectives
@pytest.mark.parametrize(
    "metric",
    [
        "dev/tpr_gap_range/gender/worst:language",
        "dev/fpr_gap_range/gender",
        "dev/dp_gap_range/gender/mean:language",
        "dev/tpr_gap_range/gender/language:en",
    ],
)
def test_range_gaps_are_accepted_as_objectives(tmp_path: Path, metric: str) -> None:
    spec = load_spec(spec_file(tmp_path, [UTIL, {"metric": metric, "direction": "min"}])).spec
    assert spec.search.objectives[1].metric == metric
    assert spec.search.objectives[1].direction is Direction.MIN
    assert spec.train.s_min == GAP_OBJECTIVE_S_MIN  # a range variant is a gap like any other


@pytest.mark.parametrize(
    ("metric", "named"),
    [
        ("dev/tpr_gap_rng/gender", "tpr_gap_range"),  # typo: the message lists the known metrics
        ("dev/tpr_gap_mad/gender", "tpr_gap_range"),  # mad is a gap_op, not a reported variant
        ("dev/uar_gap_range/gender", "tpr_gap_range"),  # uar_gap is already a range: no variant
    ],
)
def test_unknown_gap_variants_are_refused(tmp_path: Path, metric: str, named: str) -> None:
    path = spec_file(tmp_path, [{"metric": metric, "direction": "min"}])
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(f"{path}: search.objectives[0].metric: ") and repr(metric) in message
    assert named in message and "\n" not in message


def test_a_range_gap_must_be_minimised(tmp_path: Path) -> None:
    path = spec_file(tmp_path, [{"metric": "dev/tpr_gap_range/gender", "direction": "max"}])
    with pytest.raises(ConfigError, match=r"is a gap \(lower is fairer\); its direction must be 'min'"):
        load_spec(path)


def test_range_gaps_exist_for_multilabel_targets() -> None:
    objective = "search.objectives=[{metric: dev/tpr_gap_range/gender, direction: min}]"
    assert (
        load_spec(SPECS / "idi_cremad.yaml", [objective]).spec.search.objectives[0].metric == "dev/tpr_gap_range/gender"
    )


# ---------------------------------------------------------------- train.s_min default
@pytest.mark.parametrize(
    ("objectives", "expected"),
    [
        ([UTIL, GAP], GAP_OBJECTIVE_S_MIN),
        ([GAP], GAP_OBJECTIVE_S_MIN),
        ([{"metric": "dev/avg_gap/gender", "direction": "min"}], GAP_OBJECTIVE_S_MIN),
        ([UTIL], 1),  # no gap objective: the TrainConfig default
        ([UTIL, {"metric": "dev/fpr", "direction": "min"}], 1),  # fpr is a utility, lower is better, not a gap
        ([], 1),
    ],
)
def test_s_min_defaults_to_5_under_a_gap_objective(tmp_path: Path, objectives: list, expected: int) -> None:
    assert GAP_OBJECTIVE_S_MIN == 5
    assert load_spec(spec_file(tmp_path, objectives)).spec.train.s_min == expected


@pytest.mark.parametrize("explicit", [1, 2, 7])
def test_an_explicit_s_min_always_wins(tmp_path: Path, explicit: int) -> None:
    assert load_spec(spec_file(tmp_path, [UTIL, GAP], train={"s_min": explicit})).spec.train.s_min == explicit
    overridden = load_spec(spec_file(tmp_path, [UTIL, GAP]), [f"train.s_min={explicit}"])
    assert overridden.spec.train.s_min == explicit
    assert load_spec(spec_file(tmp_path, [UTIL]), [f"train.s_min={explicit}"]).spec.train.s_min == explicit


def test_trials_resolve_the_same_default(tmp_path: Path) -> None:
    loaded = load_spec(
        spec_file(tmp_path, [UTIL, GAP], space={"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}})
    )
    assert "s_min" not in loaded.raw["train"]  # the raw spec (what trials get and MLflow stores) stays as written
    assert resolve_trial(loaded.raw, {"train.lr": 0.002}).spec.train.s_min == GAP_OBJECTIVE_S_MIN


def test_a_searched_s_min_is_explicit_in_each_trial(tmp_path: Path) -> None:
    loaded = load_spec(
        spec_file(tmp_path, [UTIL, GAP], space={"train.s_min": {"type": "categorical", "choices": [1, 3]}})
    )
    assert loaded.spec.train.s_min == GAP_OBJECTIVE_S_MIN  # the spec itself; each trial sets its own
    assert resolve_trial(loaded.raw, {"train.s_min": 1}).spec.train.s_min == 1
    assert resolve_trial(loaded.raw, {"train.s_min": 3}).spec.train.s_min == 3


def test_an_invalid_explicit_s_min_is_still_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train.s_min"):
        load_spec(spec_file(tmp_path, [UTIL, GAP], train={"s_min": 0}))


@pytest.mark.parametrize("name", ["idi.yaml", "idi_cremad.yaml", "minmaxgap.yaml", "erm.yaml"])
def test_shipped_specs_pin_s_min_1_and_compute_what_they_did(name: str) -> None:
    # Every shipped spec searches on a dev gap; each sets s_min: 1 explicitly (IDI: its reproduction setting,
    # METHODS 2.4; minmaxgap and its erm baseline: unchanged results, see the note in minmaxgap.yaml).
    loaded = load_spec(SPECS / name)
    assert any(o.metric.split("/")[1].endswith(("_gap", "_gap_range")) for o in loaded.spec.search.objectives)
    assert loaded.raw["train"]["s_min"] == 1 and loaded.spec.train.s_min == 1


# ---------------------------------------------------------------- the warning about thin dev cells
def _brute_force_thin(data, s_min: int, positives) -> list[str]:
    dev = data.split == "dev"
    out = []
    for s, language in sorted(enumerate(data.strata_values), key=lambda x: x[1]):
        for g, gender in enumerate(data.attr_values):
            rows = dev & (data.stratum == s) & (data.attr == g)
            for c, name in enumerate(data.classes):
                n = int(positives[rows, c].sum())
                if n < s_min:
                    out.append(f"{language}/{gender}/{name} ({n})")
    return out


@pytest.fixture(scope="module")
def ser3():
    from fairray.data import prepare

    return prepare(load_spec(SPECS / "minmaxgap.yaml").spec.dataset)


@pytest.mark.parametrize("s_min", [1, 4, 5, 8])
def test_thin_dev_cells_names_every_cell_below_s_min(ser3, s_min: int) -> None:
    from fairray.sweep.runner import thin_dev_cells

    want = _brute_force_thin(ser3, s_min, np.eye(len(ser3.classes), dtype=int)[ser3.y])
    text = thin_dev_cells(ser3, s_min)
    if not want:
        assert text is None
        return
    head = f"dev cells below s_min={s_min} (their TPR is undefined and left out of gaps): "
    more = f", ... and {len(want) - 10} more" if len(want) > 10 else ""
    assert text == head + ", ".join(want[:10]) + more
    if s_min == 5:  # the built-in data: German men have 3-4 dev clips of three emotions
        assert text == head + "de/M/happiness (4), de/M/neutral (4), de/M/sadness (3)"


def test_thin_dev_cells_of_multilabel_data_count_every_positive_class(ser3) -> None:
    import dataclasses

    from fairray.sweep.runner import thin_dev_cells

    # half the votes on the clip's class, half on the next one: two positive classes per clip (> 1/5 each)
    n_classes = len(ser3.classes)
    eye = np.eye(n_classes, dtype=np.float32)
    soft = 0.5 * eye[ser3.y] + 0.5 * eye[(ser3.y + 1) % n_classes]
    multi = dataclasses.replace(ser3, task="multi", soft=soft)
    positives = (soft > 1 / n_classes).astype(int)
    want = _brute_force_thin(multi, 9, positives)
    assert want and thin_dev_cells(multi, 9).endswith(
        ", ".join(want[:10]) + (f", ... and {len(want) - 10} more" if len(want) > 10 else "")
    )


def test_the_warning_is_one_line_once(ser3, caplog: pytest.LogCaptureFixture) -> None:
    from fairray.sweep.runner import warn_thin_dev_cells

    with caplog.at_level("WARNING", logger="fairray"):
        warn_thin_dev_cells([ser3, ser3], 5)  # two variants with the same dev split: one line
        warn_thin_dev_cells([ser3], 1)  # nothing below 1
    lines = [r for r in caplog.records if r.name == "fairray"]
    assert len(lines) == 1 and lines[0].levelname == "WARNING"
    assert lines[0].getMessage().startswith("dev cells below s_min=5") and "\n" not in lines[0].getMessage()


def test_sweep_data_variants_give_each_prepared_dataset_once(ser3, tmp_path: Path) -> None:
    from fairray.sweep.runner import DataVariants

    loaded = load_spec(SPECS / "minmaxgap.yaml", [f"storage.path={tmp_path}"])
    variants = DataVariants.prepare(loaded, [{}], verbose=False)
    (data,) = variants.datasets()
    assert data.fingerprint == ser3.fingerprint


def test_fairray_train_warns_about_thin_dev_cells(tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys) -> None:
    from fairray.cli import main

    with caplog.at_level("WARNING", logger="fairray"):
        code = main(
            [
                "train",
                str(SPECS / "minmaxgap.yaml"),
                "--no-mlflow",
                "--quiet",
                "--set",
                "train.epochs=1",
                "--set",
                "train.s_min=5",
                "--set",
                f"storage.path={tmp_path}",
            ]
        )
    assert code == 0, capsys.readouterr().err
    warned = [r.getMessage() for r in caplog.records if r.name == "fairray" and "s_min" in r.getMessage()]
    assert warned == [
        "dev cells below s_min=5 (their TPR is undefined and left out of gaps): "
        "de/M/happiness (4), de/M/neutral (4), de/M/sadness (3)"
    ]
