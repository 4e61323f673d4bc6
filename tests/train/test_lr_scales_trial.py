"""Per-input learning rates through the one loop: a GEAR trial of search_spaces/gear_mosi_sequences.yaml (on a small
folder in MulT's MOSI pickle layout) trains with the optimiser groups its model declares (read back from the
trial's checkpoint), logs the scales as MLflow params like the rest of the model section, takes a searched scale
like any model key; a bad scale or one for an input the model lacks stops `fairray sweep` in one line, exit 2,
nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from fairray.cli import main
from fairray.config import build_spec
from fairray.data import prepare
from fairray.tracking import ensure_experiment
from fairray.train import LocalSession, TrialTracking, run_trial
from fairray.train.checkpoint import TRAINER_FILE

from ..sweep.test_gear_mosi_e2e import write_mosi
from ..sweep.test_gear_mosi_sequences_e2e import SPEC, small


@pytest.fixture(scope="module")
def mosi(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("mosi_lr")
    _, demographics = write_mosi(folder)
    return folder, demographics


def _raw(mosi, storage: Path) -> dict:
    raw = small(yaml.safe_load(SPEC.read_text()), mosi, storage)
    raw["train"]["epochs"] = 1
    return raw


def test_the_trial_trains_and_logs_each_input_s_learning_rate(mosi, tmp_path):
    raw = _raw(mosi, tmp_path)
    assert raw["model"]["lr_scales"] == {"audio": 5, "vision": 5}  # the spec's released setting
    data = prepare(build_spec(raw, "spec.yaml").dataset)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = ensure_experiment(uri, "lr", str(tmp_path / "art"))
    searched = {"model.lr_scales.text": 2.0}  # a sampled scale, as Tune hands it to the trial
    run_trial(raw, searched, data, LocalSession(tmp_path / "ck"), TrialTracking(uri, exp, None, "lr", "lr"))

    run = MlflowClient(uri).search_runs([exp])[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert {k: float(v) for k, v in params.items() if k.startswith("model.lr_scales.")} == {
        "model.lr_scales.audio": 5.0, "model.lr_scales.vision": 5.0, "model.lr_scales.text": 2.0}
    assert float(params["train.lr"]) == pytest.approx(1e-3)
    assert "model.lr_scales.text" in run.data.tags["fairray.searched_params"]

    # the optimiser the loop built: one group per learning rate, holding the GEAR copies of each encoder
    state = torch.load(tmp_path / "ck" / "checkpoint" / TRAINER_FILE, weights_only=True, map_location="cpu")
    groups = {round(g["lr"], 12): len(g["params"]) for g in state["optimizer"]["param_groups"]}
    weights = torch.load(tmp_path / "ck" / "checkpoint" / "model.pt", weights_only=True)

    def n_params(*modalities: str) -> int:
        return sum(1 for k in weights for m in modalities for branch in ("robust_enc", "biased_enc")
                   if k.startswith(f"{branch}.{m}."))

    assert groups == {5e-3: n_params("audio", "vision"), 2e-3: n_params("text"),
                      1e-3: len(weights) - n_params("audio", "vision", "text")}
    assert all(v > 0 for v in groups.values())


@pytest.mark.parametrize(("scales", "message"), [
    ({"audio": -1}, "model: lr_scales.audio: must be a number > 0 (a multiple of train.lr), got -1.0"),
    ({"audio": 0}, "model: lr_scales.audio: must be a number > 0 (a multiple of train.lr), got 0.0"),
    ({"face": 5}, "lr_scales.face: names no input the model encodes (text, audio, vision)"),
])
def test_a_bad_scale_stops_the_sweep_in_one_line_before_anything_is_written(mosi, tmp_path, capsys, scales,
                                                                            message):
    raw = _raw(mosi, tmp_path)
    raw["model"]["lr_scales"] = scales
    spec = tmp_path / "bad_lr.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["sweep", str(spec), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(spec) in err and message in err, err
    assert not (tmp_path / "runs").exists()  # no MLflow store, no sweep run, no trial
    assert not list((tmp_path / "features").glob("sequences/*"))
