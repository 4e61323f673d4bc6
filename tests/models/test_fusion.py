"""The ``fusion`` model: encoders built through the registry from typed sections, late and early fusion
over a vector and a tokens input, load-time errors naming the key, and ERM training on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fairray._typed import Where, build, to_plain
from fairray.config import load_spec, resolve_trial
from fairray.errors import ConfigError
from fairray.inputs import Batch, InputSpec, Padded
from fairray.methods import METHODS, DevEval, TrainContext
from fairray.models import MODELS, Encoder, build_model, check_model
from fairray.models.text import write_random_model
from fairray.train.checkpoint import load_trainable_state, trainable_state
from fairray.train.loop import param_groups

transformers = pytest.importorskip("transformers")
SPECS_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
SPECS = {"features": InputSpec("features", "vector", dim=6), "text": InputSpec("text", "tokens", vocab_size=40)}
CLASS_GROUP = np.array([[8, 4], [5, 7], [6, 6]])
CTX = TrainContext(classes=("a", "b", "c"), class_counts=CLASS_GROUP.sum(axis=1), attr_values=("F", "M"),
                   strata_values=("en",), n_train=36, group_values=("F", "M"), group_counts=CLASS_GROUP.sum(axis=0),
                   class_group_counts=CLASS_GROUP, group_soft_counts=CLASS_GROUP.sum(axis=0).astype(float),
                   n_rows=36, epochs=2)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return str(write_random_model(tmp_path_factory.mktemp("tiny-bert"), "tiny", vocab_size=40))


def _fusion(tiny_bert, mode="early", **text):
    section = {"mode": mode, "hidden": 8, "dropout": 0.0, "encoders": {
        "audio": {"name": "mlp", "hidden": 5, "depth": 1, "dropout": 0.0},
        "text": {"name": "text", "model_path": tiny_bert, "hidden": 7, "dropout": 0.0, **text}}}
    return build(MODELS.get("fusion").Params, section, Where("spec.yaml", "model"))


def _batch(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 9, (n,), generator=g)
    mask = torch.arange(8)[None, :] < lengths[:, None]
    ids = torch.randint(1, 40, (n, 8), generator=g) * mask
    a = torch.randint(0, 2, (n,), generator=g)
    return Batch(y=torch.randint(0, 3, (n,), generator=g), attr=a, stratum=torch.zeros(n, dtype=torch.long),
                 index=torch.randperm(36, generator=g)[:n], group=a, group_prob=torch.nn.functional.one_hot(a, 2).float(),
                 inputs={"features": torch.randn(n, 6, generator=g), "text": Padded(ids, mask)})


def test_encoders_are_typed_sections_and_round_trip(tiny_bert):
    params = _fusion(tiny_bert, pooling="cls")
    audio, text = params.encoders["audio"], params.encoders["text"]
    assert isinstance(audio, Encoder) and audio.params == MODELS.get("mlp").Params(hidden=5, depth=1, dropout=0.0)
    assert text.name == "text" and text.params.pooling == "cls"
    plain = to_plain(params)
    assert plain["encoders"]["text"] == {"name": "text", **to_plain(text.params)}
    assert build(MODELS.get("fusion").Params, json.loads(json.dumps(plain)), Where("again")) == params


@pytest.mark.parametrize(("encoders", "message"), [
    ({"a": {"name": "mlp", "hiddn": 3}}, r"spec.yaml: model.encoders.a.hiddn: unknown key \(value 3\); valid keys"),
    ({"a": {"name": "nope"}}, r"spec.yaml: model.encoders.a.name: unknown model 'nope'; registered: .*fusion.*mlp"),
    ({"a": {"hidden": 3}}, r"spec.yaml: model.encoders.a.name: required key is missing"),
    ({"a": {"name": "mlp", "dropout": 2}}, r"spec.yaml: model.encoders.a.dropout: must be < 1, got 2"),
    ({"a": [1]}, r"spec.yaml: model.encoders.a: expected a model section"),
    ({}, r"spec.yaml: model: encoders: give at least one encoder"),
])
def test_a_bad_encoder_section_is_one_line_naming_the_key(encoders, message):
    with pytest.raises(ConfigError, match=message) as err:
        build(MODELS.get("fusion").Params, {"encoders": encoders}, Where("spec.yaml", "model"))
    assert "\n" not in str(err.value)


def test_a_spec_file_loads_fusion_and_searches_an_encoders_parameter(tmp_path):
    raw = yaml.safe_load((SPECS_DIR / "erm.yaml").read_text())
    raw["model"] = {"name": "fusion", "mode": "late",
                    "encoders": {"a": {"name": "mlp", "hidden": 16}, "b": {"name": "mlp", "depth": 0}}}
    raw["search"]["space"] = {"model.encoders.a.hidden": {"type": "int", "low": 8, "high": 64}}
    path = tmp_path / "fusion.yaml"
    path.write_text(yaml.safe_dump(raw))
    loaded = load_spec(path)
    assert loaded.spec.model.params.encoders["b"].params.depth == 0
    trial = resolve_trial(loaded.raw, {"model.encoders.a.hidden": 24}).spec
    assert trial.model.params.encoders["a"].params.hidden == 24
    raw["model"]["encoders"]["b"] = {"name": "seq_pool"}  # the built-in data has no sequence input
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"fusion.yaml: model: model fusion: encoders.b: model seq_pool accepts "
                                          r"sequence inputs, but the dataset provides features: vector") as err:
        load_spec(path)
    assert "\n" not in str(err.value)


def test_late_fusion_averages_the_encoders_logits(tiny_bert):
    torch.manual_seed(0)
    model = build_model("fusion", _fusion(tiny_bert, mode="late"), SPECS, 3).eval()
    b = _batch()
    with torch.no_grad():
        per = model.encoder_logits(b.inputs)
        assert set(per) == {"audio", "text"}
        torch.testing.assert_close(model(b.inputs), (per["audio"] + per["text"]) / 2)
        assert model.embed(b.inputs).shape == (12, 5 + 7) and model.embed_dim == 12


def test_early_fusion_concatenates_embeddings_under_one_head(tiny_bert):
    torch.manual_seed(0)
    model = build_model("fusion", _fusion(tiny_bert, finetune="lora", lora_r=2), SPECS, 3)
    b = _batch()
    emb = model.embeddings(b.inputs)
    assert emb["audio"].shape == (12, 5) and emb["text"].shape == (12, 7)
    assert model.head[0].in_features == 12 and model(b.inputs).shape == (12, 3)
    # the encoders' classifiers are gone: no parameter without a gradient, none in the checkpoint
    assert not any(isinstance(m, torch.nn.Linear) and m.out_features == 3 for m in model.encoders.modules())
    torch.nn.functional.cross_entropy(model(b.inputs), b.y).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.grad is not None for p in trainable.values())
    assert all(p.grad.abs().sum() > 0 for n, p in trainable.items() if "lora_A" not in n)  # B starts at 0
    assert any("lora_A" in n for n in trainable) and not any("encoders.text.backbone" in n and "lora" not in n
                                                            for n in trainable)
    # the text encoder's lr_scales() reach through the fusion model: its adapters get their own group
    groups = {g["lr_scale"]: {id(p) for p in g["params"]} for g in param_groups(model, 1e-3)}
    adapters = {id(p) for n, p in trainable.items() if n.startswith("encoders.text.backbone.")}
    assert adapters and groups[0.1] == adapters and set(groups) == {0.1, 1.0}


def test_an_encoder_without_an_embedding_is_refused_for_early_fusion(tiny_bert, monkeypatch):
    from fairray.models import mlp

    monkeypatch.delattr(mlp.VectorMLP, "embed")
    with pytest.raises(ConfigError, match=r"model fusion: encoders.audio: model mlp gives no embedding \(VectorMLP "
                                          r"lacks embed\); use mode: late"):
        build_model("fusion", _fusion(tiny_bert), SPECS, 3)
    build_model("fusion", _fusion(tiny_bert, mode="late"), SPECS, 3)  # late fusion needs logits only


def test_encoder_errors_name_the_encoder(tiny_bert, tmp_path):
    params = _fusion(tiny_bert)
    with pytest.raises(ConfigError, match=r"model fusion: encoders.text: model text accepts tokens inputs, but the "
                                          r"dataset provides features: vector\[6\]"):
        check_model("fusion", params, {"features": SPECS["features"]})
    missing = _fusion(str(tmp_path / "absent"))
    with pytest.raises(Exception, match=r"model fusion: encoders.text: model text: model folder .*absent does not "
                                        r"exist") as err:
        check_model("fusion", missing, SPECS)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("mode", ["early", "late"])
def test_erm_trains_on_fusion(tiny_bert, mode):
    """The method contract on a two-input model: finite loss, gradients reach every trainable weight,
    per-sample losses, method state round trip, trainable-state checkpoint reload; the loss falls."""
    cls = METHODS.get("erm")
    torch.manual_seed(0)
    method = cls(cls.Params(), CTX)
    model = method.build_model(lambda n_out: build_model("fusion", _fusion(tiny_bert, mode=mode), SPECS, n_out))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(trainable, lr=1e-2)
    b = _batch()
    losses = []
    for _ in range(25):
        out = method.loss(model(b.inputs), b)
        assert torch.isfinite(out.loss)
        optimiser.zero_grad()
        out.loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
        optimiser.step()
        method.on_step([out])
        losses.append(out.loss.item())
    assert losses[-1] < 0.7 * losses[0]
    net = method.inference_model(model).eval()
    with torch.no_grad():
        logits = net(b.inputs)
        method.on_epoch_end(DevEval(logits, b))
    assert method.per_sample_loss(logits, b).shape == (len(b),)
    fresh = cls(cls.Params(), CTX)
    fresh.load_state_dict(method.state_dict())
    torch.manual_seed(1)  # a differently initialised model takes the trained weights back
    rebuilt = fresh.build_model(lambda n_out: build_model("fusion", _fusion(tiny_bert, mode=mode), SPECS, n_out))
    load_trainable_state(rebuilt, trainable_state(model))
    with torch.no_grad():
        torch.testing.assert_close(fresh.inference_model(rebuilt).eval()(b.inputs), logits, rtol=1e-5, atol=1e-6)
