"""``dataset.inputs`` in YAML: typed, checked at load time, one line naming file, key and value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fairray.cli import main
from fairray.config import build_spec
from fairray.errors import ConfigError
from fairray.inputs import FEATURES


def spec_with(dataset: dict, model: dict | None = None, storage: str = "runs") -> dict:
    return {"name": "inputs", "method": {"name": "erm"}, "model": model or {"name": "wav_cnn"},
            "dataset": {"name": "corpora", "languages": ["en"], "emotions": ["anger", "neutral"], **dataset},
            "storage": {"path": storage}}


def ravdess(root: Path) -> list[dict]:
    return [{"adapter": "manifest", "root": str(root)}]


@pytest.fixture
def manifest_corpus(tmp_path) -> Path:
    """A manifest corpus with transcripts (no acted-corpus rows); its audio is never read at load time."""
    root = tmp_path / "talk"
    root.mkdir()
    (root / "manifest.csv").write_text("path,speaker,gender,language,emotion,text\n"
                                       "a.wav,talk_1,F,en,anger,Well I never\n")
    return root


@pytest.fixture
def tokenizer_dir(tmp_path) -> str:
    """A tiny real WordPiece tokenizer folder, saved with save_pretrained."""
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "well", "i", "never"]
    folder = tmp_path / "tokenizer"
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize(("inputs", "key", "says"), [
    ({"audio": {"kind": "video"}}, "dataset.inputs.audio.kind", "expected one of 'waveform', 'tokens', got 'video'"),
    ({"audio": {"kind": "waveform", "max_seconds": -1}}, "dataset.inputs.audio.max_seconds", "must be > 0, got -1"),
    ({"audio": {"kind": "waveform", "tokenizer": "/x"}}, "dataset.inputs.audio",
     "tokenizer does not apply to kind waveform, which takes max_seconds, eval, dtype"),
    ({"audio": {"kind": "waveform", "eval": "crop"}}, "dataset.inputs.audio", "eval: crop needs max_seconds"),
    ({"audio": {"kind": "waveform", "evaluation": "whole"}}, "dataset.inputs.audio.evaluation", "unknown key"),
    ({"text": {"kind": "tokens"}}, "dataset.inputs.text", "kind tokens needs `tokenizer`"),
    ({"features": {"kind": "waveform"}}, "dataset", "the name 'features' is the extractor's vector input"),
])
def test_malformed_inputs_are_refused_with_their_key(manifest_corpus, inputs, key, says):
    raw = spec_with({"corpora": ravdess(manifest_corpus), "extractor": None, "inputs": inputs})
    with pytest.raises(ConfigError) as info:
        build_spec(raw, "spec.yaml")
    message = str(info.value)
    assert message.startswith(f"spec.yaml: {key}: ") and says in message and "\n" not in message


def test_inputs_need_corpora(tmp_path):
    raw = spec_with({"inputs": {"audio": {"kind": "waveform"}}})
    raw["dataset"]["name"] = "ser3"
    raw["dataset"].pop("corpora", None)
    with pytest.raises(ConfigError, match=r"^spec.yaml: dataset: inputs \['audio'\] are built from audio.*name: corpora"):
        build_spec(raw, "spec.yaml")


def test_a_missing_tokenizer_folder_is_one_line(manifest_corpus, tmp_path):
    raw = spec_with({"corpora": ravdess(manifest_corpus), "extractor": None,
                     "inputs": {"text": {"kind": "tokens", "tokenizer": str(tmp_path / "nowhere")}}}, {"name": "mlp"})
    with pytest.raises(ConfigError, match=r"^spec.yaml: dataset.inputs.text.tokenizer: tokenizer folder .*nowhere "
                                          r"does not exist; give a local folder"):
        build_spec(raw, "spec.yaml")
    (tmp_path / "empty").mkdir()
    raw["dataset"]["inputs"]["text"]["tokenizer"] = str(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"dataset.inputs.text.tokenizer: tokenizer folder .*empty holds no tokenizer"):
        build_spec(raw, "spec.yaml")


def test_declared_inputs_decide_which_model_is_accepted(manifest_corpus, tokenizer_dir):
    raw = spec_with({"corpora": ravdess(manifest_corpus), "extractor": None,
                     "inputs": {"audio": {"kind": "waveform", "max_seconds": 2.0}}})
    spec = build_spec(raw, "spec.yaml")  # wav_cnn reads the one waveform input
    assert spec.dataset.inputs["audio"].max_seconds == 2.0 and spec.dataset.inputs["audio"].eval_mode == "whole"

    raw["model"] = {"name": "mlp"}  # no features without an extractor: an MLP has nothing to read
    with pytest.raises(ConfigError) as info:
        build_spec(raw, "spec.yaml")
    assert str(info.value).startswith("spec.yaml: model: model mlp accepts vector inputs, but the dataset provides "
                                      "audio: waveform[16 kHz] <= 32000")

    raw["dataset"]["inputs"] = {"text": {"kind": "tokens", "tokenizer": tokenizer_dir, "max_length": 16}}
    with pytest.raises(ConfigError, match=r"model wav_cnn accepts waveform inputs, but the dataset provides "
                                          r"text: tokens\[ids\] <= 16"):
        build_spec({**raw, "model": {"name": "wav_cnn"}}, "spec.yaml")

    from fairray.data import declared_inputs

    raw["dataset"]["extractor"] = {"name": "opensmile_egemaps"}  # beside the extractor's features
    raw["model"] = {"name": "mlp"}
    specs = declared_inputs(build_spec(raw, "spec.yaml").dataset)
    assert list(specs) == [FEATURES, "text"] and specs["text"].vocab_size == 8 and specs["text"].pad_id == 0


@pytest.mark.corpora
@pytest.mark.parametrize("adapter", ["manifest", "ravdess"])
def test_tokens_on_a_corpus_without_transcripts_exit_2_and_write_nothing(corpora, tmp_path, capsys, tokenizer_dir,
                                                                        adapter):
    """RAVDESS (its scripted statements are no transcripts) asked for a tokens input: one line naming the corpus
    and the key, exit 2, nothing written."""
    root = corpora / "ravdess" if adapter == "manifest" else tmp_path / "Actors"
    raw = spec_with({"corpora": [{"adapter": adapter, "root": str(root)}], "extractor": None,
                     "inputs": {"transcript": {"kind": "tokens", "tokenizer": tokenizer_dir}}},
                    {"name": "mlp"}, storage=str(tmp_path / "runs"))
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["sweep", str(path)]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and out == ""
    assert lines[0].startswith(f"fairray: error: {path}: dataset.inputs.transcript: kind tokens reads transcripts, "
                               f"but corpus {adapter!r} at {root} (dataset.corpora[0]) has none")
    assert "scripted sentences" in lines[0] and "corpora with transcripts: " in lines[0] and "meld" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_waveforms_need_audio(tmp_path):
    raw = spec_with({"corpora": [{"adapter": "meld", "root": str(tmp_path), "options": {"metadata_only": True}}],
                     "extractor": None, "inputs": {"audio": {"kind": "waveform"}}})
    with pytest.raises(ConfigError, match=r"^spec.yaml: dataset.inputs.audio: kind waveform reads audio, but corpus "
                                          r"'meld' \(dataset.corpora\[0\]\) is loaded with metadata_only: true"):
        build_spec(raw, "spec.yaml")


def test_waveforms_need_a_local_cache(manifest_corpus):
    raw = spec_with({"corpora": ravdess(manifest_corpus), "extractor": None,
                     "inputs": {"audio": {"kind": "waveform"}}}, storage="s3://bucket/runs")
    with pytest.raises(ConfigError, match=r"^spec.yaml: dataset.cache: waveform input 'audio' is memory-mapped from a "
                                          r"local cache folder, but the cache is s3://bucket/runs/features "
                                          r"\(storage.path/features: dataset.cache is not set\); set dataset.cache"):
        build_spec(raw, "spec.yaml")
    raw["dataset"]["cache"] = "/tmp/fairray-cache"
    assert build_spec(raw, "spec.yaml").dataset.cache == "/tmp/fairray-cache"
