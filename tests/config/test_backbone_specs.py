"""The backbone search spaces (Qwen2-Audio + LoRA on MELD-ST, WavLM on CREMA-D) load and check on this machine
once their model folders exist: tiny random models stand in for the real weights (the specs' /models paths)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fairray.config import load_spec, resolve_trial
from fairray.errors import ConfigError

SPECS = Path(__file__).resolve().parents[2] / "search_spaces"


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> Path:
    from fairray.models.qwen2_audio import write_random_model

    return write_random_model(tmp_path_factory.mktemp("qwen") / "model")


@pytest.fixture(scope="module")
def wavlm(tmp_path_factory) -> Path:
    from fairray.models.ssl import write_random_model

    return write_random_model(tmp_path_factory.mktemp("wavlm") / "model")


def _with_model(name: str, tmp_path: Path, folder: Path) -> Path:
    text = (SPECS / name).read_text()
    for placeholder in ("/models/qwen2-audio-7b", "/models/wavlm-base-plus"):
        text = text.replace(placeholder, str(folder))
    path = tmp_path / name
    path.write_text(text)
    return path


def test_qwen2audio_spec_loads_with_its_ablations_and_lora_rank_searched(tmp_path, qwen):
    loaded = load_spec(_with_model("minmaxgap_qwen2audio.yaml", tmp_path, qwen))
    spec = loaded.spec
    assert spec.model.name == "qwen2_audio" and spec.model.params.finetune == "lora"
    assert "model.lora_r" in spec.search.space and {"paper", "modality"} <= set(spec.ablations)
    assert {i.kind for i in spec.dataset.inputs.values()} == {"waveform", "tokens"}
    # the multimodal setting: the prompt reads the transcript input
    trial = resolve_trial(loaded.raw, {"model.transcript": "transcript"})
    assert trial.spec.model.params.transcript == "transcript"


def test_wavlm_spec_loads_with_its_conditional_lora_rank(tmp_path, wavlm):
    spec = load_spec(_with_model("wavlm.yaml", tmp_path, wavlm)).spec
    assert spec.model.name == "ssl" and spec.model.params.layers == "weighted"
    assert spec.search.space["model.lora_r"].when == {"model.finetune": "lora"}
    assert "finetune" in spec.ablations


@pytest.mark.parametrize("name", ["minmaxgap_qwen2audio.yaml", "wavlm.yaml"])
def test_a_missing_model_folder_is_one_line_at_load_time(name):
    with pytest.raises(ConfigError) as err:
        load_spec(SPECS / name)
    assert "\n" not in str(err.value) and "/models/" in str(err.value)


@pytest.mark.parametrize("name", ["minmaxgap.yaml", "minmaxgap_qwen2audio.yaml"])
def test_both_minmaxgap_specs_declare_the_papers_comparison(name):
    cells = yaml.safe_load((SPECS / name).read_text())["ablations"]["paper"]
    assert cells["seeds"] == [0, 1, 2]
    assert {"method.name": ["erm"]} in cells["cells"]
    assert {"method.name": ["minmaxgap"], "method.adaptive": [False]} in cells["cells"]
    assert {"method.name": ["minmaxgap"], "method.adaptive": [True], "method.p": [1, 2]} in cells["cells"]
