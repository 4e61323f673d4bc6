"""The ``fairray`` command line: one-line errors with exit codes, help, methods, evaluate, data info.

Nothing here starts Ray or runs a sweep: a bad spec fails before, and the rest never gets there.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from fairray.cli import main
from fairray.config import DatasetConfig
from fairray.errors import ConfigError, DataError, FairrayError, RegistryError, TrackingError
from fairray.methods import METHODS

FAIRRAY = Path(sys.executable).parent / "fairray"  # the console script of the venv running the tests
BUILTIN_META = Path(__file__).resolve().parents[1] / "fairray" / "data" / "builtin" / "ser3_meta.csv"

BAD_SPEC = "name: tiny\nmethod: {name: minmaxgap}\ntrain: {epochs: ten}\n"

# y_true, y_pred, gender, language: 5 of 8 predictions are right.
PREDICTIONS = """\
y_true,y_pred,gender,language
anger,anger,F,en
anger,sadness,M,en
sadness,sadness,F,de
sadness,sadness,M,de
anger,anger,M,pl
sadness,anger,F,pl
happiness,happiness,F,en
happiness,sadness,M,de
"""


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {err!r}"
    assert lines[0].startswith("fairray: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def bad_spec(tmp_path: Path) -> Path:
    path = tmp_path / "bad_epochs.yaml"
    path.write_text(BAD_SPEC)
    return path


# ---------------------------------------------------------------- errors: exit codes and one line
def test_user_errors_exit_with_code_2() -> None:
    assert ConfigError.exit_code == DataError.exit_code == RegistryError.exit_code == 2
    assert issubclass(ConfigError, FairrayError) and issubclass(TrackingError, FairrayError)
    assert TrackingError.exit_code != 0


@pytest.mark.parametrize("command", ["sweep", "train"])
def test_bad_spec_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], bad_spec: Path, command: str) -> None:
    code, out, err = run_cli(capsys, command, str(bad_spec))
    assert code == 2
    line = one_error_line(err)
    assert line == f"fairray: error: {bad_spec}: train.epochs: expected an integer, got 'ten'"
    assert out == ""


def test_bad_override_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = tmp_path / "ok_spec.yaml"
    spec.write_text("name: tiny\nmethod: {name: erm}\n")
    code, _, err = run_cli(capsys, "sweep", str(spec), "--set", "train.epochz=5")
    assert code == 2
    line = one_error_line(err)
    assert f"{spec} (with --set train.epochz=5): train.epochz: " in line and "5" in line


def test_bad_num_samples_is_validated_like_a_set(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = tmp_path / "ok_spec.yaml"
    spec.write_text("name: tiny\nmethod: {name: erm}\n")
    code, _, err = run_cli(capsys, "sweep", str(spec), "--num-samples", "0")
    assert code == 2
    line = one_error_line(err)
    assert "budget.num_samples" in line and re.search(r"\b0\b", line)


def test_debug_lets_the_exception_through(bad_spec: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.epochs.*'ten'"):
        main(["--debug", "sweep", str(bad_spec)])


def test_missing_spec_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "no_such_spec.yaml"
    code, _, err = run_cli(capsys, "sweep", str(missing))
    assert code == 2
    line = one_error_line(err)
    assert str(missing) in line and "no such file" in line
    assert "search_spaces/minmaxgap.yaml" in line  # says what to pass instead


def test_console_script_bad_spec(bad_spec: Path) -> None:
    """The installed entry point: one line, exit 2, no traceback; with --debug a traceback."""
    proc = subprocess.run(
        [str(FAIRRAY), "sweep", bad_spec.name], cwd=bad_spec.parent, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert line == "fairray: error: bad_epochs.yaml: train.epochs: expected an integer, got 'ten'"

    proc = subprocess.run(
        [str(FAIRRAY), "--debug", "sweep", bad_spec.name],
        cwd=bad_spec.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode not in (0, 2)
    assert "Traceback (most recent call last)" in proc.stderr
    assert "fairray.errors.ConfigError: bad_epochs.yaml: train.epochs" in proc.stderr


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys)
    assert code == 2 and "usage: fairray" in out


# ---------------------------------------------------------------- help
def test_main_help_shows_example_invocations(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "fairray sweep search_spaces/minmaxgap.yaml" in out
    assert "fairray frontier minmaxgap" in out
    assert "fairray evaluate preds.csv --group gender" in out
    for command in ("sweep", "train", "methods", "frontier", "export", "predict", "evaluate", "data"):
        assert re.search(rf"^\s+{command}\s", out, re.M), f"{command} not listed"


@pytest.mark.parametrize(
    ("command", "example"),
    [
        ("sweep", "fairray sweep search_spaces/minmaxgap.yaml --num-samples 8 --set train.epochs=10"),
        ("frontier", "fairray frontier minmaxgap --by language --plot fronts.html"),
    ],
)
def test_command_help_has_examples(capsys: pytest.CaptureFixture[str], command: str, example: str) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and example in out


# ---------------------------------------------------------------- methods
def test_methods_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0
    blocks = dict(re.findall(r"^(\w+): .*\n((?:\s+.*\n)*)", out, re.M))
    assert set(blocks) == set(METHODS.names()) and {"erm", "minmaxgap", "rw", "gdro"} <= set(blocks)
    assert "needs: nothing" in blocks["erm"] and "needs: true groups" in blocks["minmaxgap"]
    for param in ("lambda_max", "eps", "eta", "p", "lambda0", "m_min", "adaptive"):
        assert re.search(rf"^\s+method\.{param}\s", blocks["minmaxgap"], re.M), f"method.{param} not listed"
        assert not re.search(rf"^\s+method\.{param}\s", blocks["erm"], re.M), f"erm lists method.{param}"
    assert re.search(r"method\.lambda_max\s+float\s+default 10\.0", blocks["minmaxgap"])
    assert re.search(r"method\.loss\s+.*'focal'", blocks["erm"])


def test_methods_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "methods", "--format", "json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == set(METHODS.names())
    params = {name: {p["name"]: p for p in row["params"]} for name, row in rows.items()}
    assert {"lambda_max", "eps", "eta", "p"} <= set(params["minmaxgap"])
    assert set(params["erm"]) == {"loss", "beta", "gamma"}
    assert params["minmaxgap"]["lambda_max"]["default"] == 10.0 and params["minmaxgap"]["eps"]["default"] == 0.02
    assert params["erm"]["beta"]["default"] is None
    assert rows["minmaxgap"]["needs"] == "true groups" and rows["erm"]["needs"] == "nothing"
    assert rows["minmaxgap"]["sampler"] == "stratified_cells"


# ---------------------------------------------------------------- evaluate
def test_evaluate_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "evaluate", "missing.csv", "--group", "gender")
    assert code == 2
    line = one_error_line(err)
    assert "missing.csv" in line and "no such file" in line


def test_evaluate_csv_without_y_pred(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "no_pred.csv"
    path.write_text("y_true,gender,language\nanger,F,en\nsadness,M,de\n")
    code, _, err = run_cli(capsys, "evaluate", str(path), "--group", "gender")
    assert code == 2
    line = one_error_line(err)
    assert "'y_pred'" in line


def test_evaluate_missing_group_column(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "preds.csv"
    path.write_text(PREDICTIONS)
    code, _, err = run_cli(capsys, "evaluate", str(path), "--group", "age")
    assert code == 2 and "'age'" in one_error_line(err)


def test_evaluate_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "preds.csv"
    path.write_text(PREDICTIONS)
    code, out, err = run_cli(capsys, "evaluate", str(path), "--group", "gender", "--stratum", "language")
    assert code == 0 and err == ""
    assert out.startswith("test: 3 classes, attribute 'gender' (groups F, M; 0 excluded), stratum 'language'")
    assert "utility and support" in out and "gaps between gender groups" in out
    overall = re.search(r"^overall\s+(\d+)\s+([\d.]+)", out, re.M)
    assert overall and overall.groups() == ("8", "0.6250")
    assert re.search(r"^gender:F/language:en\s+2\s+1\.0000", out, re.M)


def test_evaluate_json_accuracy_matches_hand_count(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "preds.csv"
    path.write_text(PREDICTIONS)
    frame = pd.read_csv(path)
    accuracy = (frame["y_true"] == frame["y_pred"]).mean()
    assert accuracy == 5 / 8
    code, out, _ = run_cli(
        capsys, "evaluate", str(path), "--group", "gender", "--stratum", "language", "--format", "json"
    )
    assert code == 0
    report = json.loads(out)
    assert report["test/acc"] == pytest.approx(accuracy)
    assert report["test/n"] == 8
    female = frame[frame["gender"] == "F"]
    assert report["test/acc/gender:F"] == pytest.approx((female["y_true"] == female["y_pred"]).mean())  # 4 of 4
    assert report["test/acc_gap/gender"] > 0


def test_evaluate_split_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "preds.csv"
    path.write_text(PREDICTIONS)
    code, out, _ = run_cli(
        capsys, "evaluate", str(path), "--group", "gender", "--format", "json", "--split-name", "dev"
    )
    assert code == 0
    keys = json.loads(out)
    assert "dev/acc" in keys and not any(k.startswith("test/") for k in keys)


# ---------------------------------------------------------------- data info
def test_data_info_counts(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "data", "info")
    assert code == 0
    assert "clips" in out and "speakers" in out
    rows, language = {}, None
    for match in re.finditer(r"^(en|de|pl)?\s+([FM])\s+((?:\d+\s+){5}\d+)$", out, re.M):
        language = match.group(1) or language
        rows[(language, match.group(2))] = [int(x) for x in match.group(3).split()]
    assert set(rows) == {(lang, g) for lang in ("en", "de", "pl") for g in ("F", "M")}

    # independent count from the shipped metadata: every clip of a kept emotion lands in one split
    meta = pd.read_csv(BUILTIN_META, dtype=str)
    meta = meta[meta["emotion"].isin(DatasetConfig().emotions)]
    clips = Counter(zip(meta["language"], meta["gender"], strict=True))
    speakers = meta.groupby(["language", "gender"])["speaker"].nunique()
    for (lang, gender), (dev, test, train, s_dev, s_test, s_train) in rows.items():
        assert dev + test + train == clips[(lang, gender)], (lang, gender)
        assert s_dev + s_test + s_train == speakers[(lang, gender)], (lang, gender)
        assert min(s_dev, s_test, s_train) >= 1, (lang, gender)  # speaker-independent split, each split present
    assert re.search(r"classes: anger, fear, happiness, neutral, sadness; features: \d+", out)


def test_data_info_unknown_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "data", "info", "--dataset", "ser9")
    assert code == 2
    line = one_error_line(err)
    assert "'ser9'" in line and "ser3" in line


# ---------------------------------------------------------------- frontier
def frontier_missing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> tuple[int, str]:
    code, out, err = run_cli(capsys, "frontier", "nosuchsweep", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db")
    assert out == ""
    return code, err


def test_frontier_unknown_experiment(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = frontier_missing(capsys, tmp_path)
    assert code != 0
    errors = [line for line in err.splitlines() if line.startswith("fairray: error: ")]
    assert len(errors) == 1, err
    assert "'nosuchsweep'" in errors[0] and "mlflow.db" in errors[0]
    assert "Traceback" not in err


def test_frontier_unknown_experiment_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _, err = frontier_missing(capsys, tmp_path)
    one_error_line(err)


@pytest.mark.parametrize("spec", ["minmaxgap.yaml", "idi.yaml"])
def test_train_runs_one_trial_in_process_and_prints_its_metrics(capsys, tmp_path, spec):
    """`fairray train` on a shipped spec: one trial, no Ray, no MLflow; the printed JSON holds the overall
    test metrics and the selected epoch."""
    path = Path(__file__).resolve().parents[1] / "search_spaces" / spec
    code, out, err = run_cli(capsys, "train", str(path), "--no-mlflow", "--quiet", "--set", "train.epochs=2",
                             "--set", f"storage.path={tmp_path}")
    assert code == 0, err
    printed = json.loads(out)
    assert printed["selected_epoch"] in (0, 1)
    assert 0 <= printed["test/macro_f1"] <= 1 and "test/acc" in printed


@pytest.mark.parametrize("command", ["sweep", "train"])
def test_a_gpu_spec_on_a_machine_without_cuda_exits_2_before_anything_runs(capsys, tmp_path, monkeypatch, command):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = Path(__file__).resolve().parents[1] / "search_spaces" / "minmaxgap.yaml"
    code, out, err = run_cli(capsys, command, str(spec), "--set", "resources.gpus_per_worker=1",
                             "--set", f"storage.path={tmp_path}")
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert f"{spec}: resources.gpus_per_worker: 1 asks for a GPU per worker, but this machine has no CUDA device" in line
    assert not list(tmp_path.iterdir())  # no MLflow store, no Ray folder: nothing started


def test_models_lists_each_models_accepted_inputs(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    assert "wav_cnn: " in out and "accepts: waveform inputs" in out and "model.frontend_lr_scale" in out
    code, out, _ = run_cli(capsys, "models", "--format", "json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["mlp"]["accepts"] == ["vector"] and rows["seq_pool"]["accepts"] == ["sequence"]
