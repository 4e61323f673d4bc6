"""The ``ssl`` model: WavLM / wav2vec2 / HuBERT from a local folder (tiny random configs), on real RAVDESS clips."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from fairray.cli import main
from fairray.data.audio import load_audio
from fairray.errors import ConfigError, DataError
from fairray.inputs import InputSpec, Padded
from fairray.methods import METHODS, Batch, TrainContext
from fairray.models import MODELS, build_model, check_model
from fairray.models.ssl import SSLClassifier, write_random_model
from fairray.train.checkpoint import load_state, load_trainable_state, save_state, trainable_state
from fairray.train.loop import param_groups

SPECS = {"audio": InputSpec("audio", "waveform")}
Params = MODELS.get("ssl").Params
#: No dropout anywhere, so train-mode forwards are deterministic and comparable.
NO_DROPOUT = {"hidden_dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "feat_proj_dropout": 0.0,
              "layerdrop": 0.0}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny random models: WavLM with a layer-norm feature encoder, wav2vec2 with a group-norm one."""
    root = tmp_path_factory.mktemp("ssl")
    return {"wavlm": write_random_model(root / "wavlm", "wavlm", norm="layer", **NO_DROPOUT),
            "wav2vec2": write_random_model(root / "wav2vec2", "wav2vec2", norm="group", **NO_DROPOUT)}


@pytest.fixture(scope="module")
def clips(corpora):
    """Four real RAVDESS clips (16 kHz), 0.4-1.0 s of speech from 0.9 s on, so they differ in length."""
    table = pd.read_csv(corpora / "ravdess" / "manifest.csv").head(4)
    cuts = [16000, 6400, 11000, 8000]
    return [torch.from_numpy(load_audio(corpora / "ravdess" / p)[14400:14400 + n]).float()
            for p, n in zip(table["path"], cuts, strict=True)]


def padded(clips: list[torch.Tensor]) -> Padded:
    length = max(len(c) for c in clips)
    values = torch.zeros(len(clips), length)
    mask = torch.zeros(len(clips), length, dtype=torch.bool)
    for i, c in enumerate(clips):
        values[i, :len(c)], mask[i, :len(c)] = c, True
    return Padded(values, mask)


def make(folder, n_out=4, **params) -> SSLClassifier:
    torch.manual_seed(0)
    return build_model("ssl", Params(model_path=str(folder), **{"dropout": 0.0, **params}), SPECS, n_out)


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ["wavlm", "wav2vec2"])
@pytest.mark.parametrize("finetune", ["frozen", "lora"])
def test_a_clip_gives_the_same_logits_alone_and_inside_a_padded_batch(folders, clips, arch, finetune):
    model = make(folders[arch], finetune=finetune, pooling="stats").eval()
    with torch.no_grad():
        batch = model({"audio": padded(clips)})
        alone = torch.cat([model({"audio": padded([c])}) for c in clips])
    torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-5)


def test_group_norm_encoders_run_clip_by_clip_because_padding_would_change_them(folders, clips):
    model = make(folders["wav2vec2"]).eval()
    with torch.no_grad():
        alone = torch.cat([model({"audio": padded([c])}) for c in clips])
        encoder = model.hf.feature_extractor
        encoder.__class__ = type(encoder).__mro__[1]  # the stock encoder: group norm over the padded batch
        del encoder.clip_lengths
        batch = model({"audio": padded(clips)})
    assert not torch.allclose(batch, alone, rtol=1e-3, atol=1e-4)


def test_inputs_are_normalised_per_clip_as_the_feature_extractor_says(folders, clips):
    model = make(folders["wavlm"]).eval()
    with torch.no_grad():
        a = model({"audio": padded(clips)})
        b = model({"audio": padded([3.0 * c + 0.01 for c in clips])})
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_clips_shorter_than_one_frame_still_give_logits(folders):
    model = make(folders["wavlm"]).eval()
    with torch.no_grad():
        out = model({"audio": padded([torch.randn(40), torch.randn(3000)])})
    assert out.shape == (2, 4) and torch.isfinite(out).all()


@pytest.mark.parametrize(("finetune", "extra", "expected"), [
    ("frozen", {}, set()),
    ("top_k", {"top_k": 1}, {"encoder.layers.1", "encoder.layer_norm"}),
    ("full", {}, {"feature_projection", "encoder", "masked_spec_embed"}),
    ("full", {"freeze_feature_encoder": False}, {"feature_extractor", "feature_projection", "encoder",
                                                  "masked_spec_embed"}),
])
def test_each_finetune_mode_trains_the_right_backbone_weights(folders, finetune, extra, expected):
    model = make(folders["wavlm"], finetune=finetune, **extra)
    names = trainable(model)
    assert {"layer_logits", "head.0.weight", "head.3.bias"} <= names  # layer weights and head always train
    backbone = {n.removeprefix("backbone.") for n in names if n.startswith("backbone.")}
    covered = {n for n in backbone if any(n == e or n.startswith(e + ".") for e in expected)}
    assert covered == backbone  # nothing outside the expected parts trains
    assert all(any(n == e or n.startswith(e + ".") for n in backbone) for e in expected if e != "masked_spec_embed")


def test_frozen_backbone_stays_in_eval_mode_while_training(folders):
    model = make(folders["wavlm"]).train()
    assert model.training and model.head.training and not model.backbone.training


def test_lora_trains_adapters_head_and_layer_weights_only_and_leaves_the_base_bit_identical(folders, clips, tmp_path):
    folder = write_random_model(tmp_path / "base", "wavlm", hidden_size=64, num_hidden_layers=4,
                                intermediate_size=128, **NO_DROPOUT)
    model = make(folder, finetune="lora", lora_r=2, lora_dropout=0.0, hidden=16, depth=1).train()
    names = trainable(model)
    assert {n for n in names if n.startswith("backbone.")} == {n for n in names if "lora_" in n}
    assert {n for n in names if "lora_" in n} and "layer_logits" in names
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW(param_groups(model, 1e-2), lr=1e-2, weight_decay=0.1)
    y = torch.tensor([0, 1, 2, 3])
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model({"audio": padded(clips)}), y).backward()
        opt.step()
    after = dict(model.named_parameters())
    # identity of frozen parameters: the one place an exact comparison is right
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    assert any(float(p.detach().abs().sum()) > 0 for n, p in after.items() if "lora_B" in n)  # adapters moved off zero
    state = trainable_state(model)
    assert set(state) == names | {"_extra_state"}
    save_state(model, tmp_path / "model.pt")
    assert os.path.getsize(tmp_path / "model.pt") < 0.05 * os.path.getsize(folder / "model.safetensors")


def test_the_checkpoint_knows_its_base_model_and_refuses_another(folders, clips, tmp_path):
    folder = write_random_model(tmp_path / "base", "wavlm", **NO_DROPOUT)
    model = make(folder, finetune="lora").eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
        expected = model({"audio": padded(clips)})
    save_state(model, tmp_path / "model.pt")
    state = load_state(tmp_path / "model.pt")
    assert state["_extra_state"]["base_model_path"] == str(folder.resolve())
    again = make(folder, finetune="lora").eval()
    load_trainable_state(again, state)
    with torch.no_grad():
        torch.testing.assert_close(again({"audio": padded(clips)}), expected)
    write_random_model(folder, "wavlm", seed=1, **NO_DROPOUT)  # same place, other weights
    with pytest.raises(DataError, match="not the one this checkpoint was trained on") as err:
        load_trainable_state(make(folder, finetune="lora"), state)
    assert "\n" not in str(err.value)


def test_a_missing_or_incomplete_model_folder_is_one_line(folders, tmp_path):
    with pytest.raises(DataError, match=r"does not exist; set model\.model_path") as err:
        check_model("ssl", Params(model_path=str(tmp_path / "nowhere")), SPECS)
    assert "\n" not in str(err.value) and "preprocessor_config.json" in str(err.value)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text((folders["wavlm"] / "config.json").read_text())
    with pytest.raises(DataError, match=r"lacks \['preprocessor_config.json'\]"):
        build_model("ssl", Params(model_path=str(tmp_path / "half")), SPECS, 4)


def test_an_unknown_lora_target_lists_the_module_names_when_the_spec_is_checked(folders):
    params = Params(model_path=str(folders["wavlm"]), finetune="lora", target_modules=("q_proj", "query"))
    with pytest.raises(ConfigError) as err:
        check_model("ssl", params, SPECS)  # on a weightless meta skeleton
    msg = str(err.value)
    assert "\n" not in msg and "['query']" in msg and "k_proj" in msg and "v_proj" in msg
    with pytest.raises(ConfigError, match=r"top_k 5 exceeds the model's 2"):
        check_model("ssl", Params(model_path=str(folders["wavlm"]), finetune="top_k", top_k=5), SPECS)


def test_gradient_checkpointing_gives_the_same_gradients(folders, clips):
    grads = []
    for checkpointing in (False, True):
        model = make(folders["wavlm"], finetune="full", gradient_checkpointing=checkpointing).train()
        assert model.hf.is_gradient_checkpointing == checkpointing
        model({"audio": padded(clips)}).pow(2).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


def test_the_backbone_has_its_own_learning_rate(folders):
    model = make(folders["wavlm"], finetune="top_k", top_k=1, backbone_lr_scale=0.1)
    groups = {g["lr_scale"]: g for g in param_groups(model, 1e-3)}
    assert set(groups) == {0.1, 1.0}
    assert groups[0.1]["lr"] == pytest.approx(1e-4) and groups[1.0]["lr"] == pytest.approx(1e-3)
    ids = {id(p) for p in groups[0.1]["params"]}
    assert ids == {id(p) for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")}


def test_last_layer_and_weighted_layers(folders, clips):
    last = make(folders["wavlm"], layers="last")
    assert last.layer_logits is None and last.layer_weights() is None
    weighted = make(folders["wavlm"], layer_norm=True)
    torch.testing.assert_close(weighted.layer_weights(), torch.full((3,), 1 / 3))  # hidden states 0..2
    out = weighted({"audio": padded(clips)})
    out.sum().backward()
    assert weighted.layer_logits.grad is not None and torch.isfinite(weighted.layer_logits.grad).all()


def test_wavlm_attention_through_its_modules_equals_the_stock_attention(folders, clips):
    model = make(folders["wavlm"]).eval()
    with torch.no_grad():
        ours = model({"audio": padded(clips)})
        for sub in model.hf.modules():
            if type(sub).__name__.startswith("ModuleCalls"):
                sub.__class__ = type(sub).__mro__[1]  # transformers' WavLMAttention
        stock = model({"audio": padded(clips)})
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-5)


def test_lora_adapters_reach_the_output_of_every_architecture(folders, clips):
    for folder in folders.values():
        model = make(folder, finetune="lora").train()
        model({"audio": padded(clips)}).sum().backward()
        grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
        assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads)


# -- every method trains the ssl model (the conformance suite's core checks on this model) ---------------

CLASS_GROUP = np.array([[3, 2], [2, 3], [1, 2], [2, 1]])
CTX = TrainContext(classes=("a", "b", "c", "d"), class_counts=CLASS_GROUP.sum(axis=1), attr_values=("F", "M"),
                   strata_values=("en",), n_train=16, group_values=("F", "M"), group_counts=CLASS_GROUP.sum(axis=0),
                   class_group_counts=CLASS_GROUP, group_soft_counts=CLASS_GROUP.sum(axis=0).astype(float),
                   n_rows=16, epochs=2)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_the_lora_ssl_model_on_real_clips(folders, clips, name):
    cls = METHODS.get(name)
    torch.manual_seed(0)
    method = cls(cls.Params(), CTX)
    module = method.build_model(lambda n_out: make(folders["wav2vec2"], n_out, finetune="lora", hidden=8))
    n = len(clips)
    y, attr = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 0, 1])
    batch = Batch(y=y, attr=attr, stratum=torch.zeros(n, dtype=torch.long), index=torch.arange(n), group=attr,
                  group_prob=torch.nn.functional.one_hot(attr, 2).float(), inputs={"audio": padded(clips)})
    out = method.loss(module(batch.inputs), batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    lora = [p.grad for n_, p in module.named_parameters() if "lora_" in n_]
    heads = [p.grad for n_, p in module.named_parameters() if ".head." in f".{n_}"]
    assert lora and all(g is not None and torch.isfinite(g).all() for g in lora + heads)
    assert any(float(g.abs().sum()) > 0 for g in heads)


@pytest.mark.parametrize(("model", "says"), [
    ({"model_path": "MISSING"}, "model: model ssl: model folder {root}/nowhere does not exist; set model.model_path"),
    ({"finetune": "lora", "target_modules": ["q_proj", "query"]}, "model: model ssl: target_modules ['query'] are "
     "not modules of WavLMModel; its module names: "),
])
def test_a_bad_ssl_model_exits_2_in_one_line_and_writes_nothing(folders, tmp_path, capsys, model, says):
    root = tmp_path / "talk"
    root.mkdir()  # a manifest corpus whose audio is never read at load time
    (root / "manifest.csv").write_text("path,speaker,gender,language,emotion\na.wav,talk_1,F,en,anger\n")
    path = {"model_path": str(tmp_path / "nowhere")} if model.get("model_path") == "MISSING" else \
        {"model_path": str(folders["wavlm"]), **model}
    raw = {"name": "bad-ssl", "method": {"name": "erm"}, "model": {"name": "ssl", **path},
           "dataset": {"name": "corpora", "corpora": [{"adapter": "manifest", "root": str(root)}], "extractor": None,
                       "inputs": {"audio": {"kind": "waveform", "max_seconds": 1.0}}, "languages": ["en"],
                       "emotions": ["anger", "neutral"]},
           "storage": {"path": str(tmp_path / "runs")}}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    assert main(["sweep", str(spec)]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and out == "" and lines[0].startswith(f"fairray: error: {spec}: ")
    assert says.format(root=tmp_path) in lines[0]
    assert not (tmp_path / "runs").exists()


def test_the_ssl_model_is_a_fusion_encoder(folders, clips):
    model = make(folders["wavlm"], hidden=8).eval()
    batch = {"audio": padded(clips)}
    with torch.no_grad():
        logits, embedding = model(batch), model.embed(batch)
        assert embedding.shape == (len(clips), model.embed_dim) == (len(clips), 8)
        torch.testing.assert_close(model.head[-1](embedding), logits)
        model.drop_classifier()
        torch.testing.assert_close(model(batch), embedding)
