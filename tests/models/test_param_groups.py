"""Per-input learning rates: ``model.lr_scales`` of ``modalities`` / ``fusion`` marks each input's encoder, the
loop's parameter groups (:func:`fairray.train.loop.param_groups`) give it ``scale x train.lr``, nested scales
multiply, and methods that take the encoders out of the model (GEAR's robust and biased copies, CBERL's trunks)
keep them. Bad scales are refused when the section is built, naming the key and the inputs there are."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from fairray.config import build_spec, resolve_trial
from fairray.errors import ConfigError
from fairray.inputs import InputSpec
from fairray.methods import METHODS
from fairray.models import MODELS, build_model
from fairray.models.fusion import Encoder
from fairray.train.loop import param_groups

from ..methods.test_gear_sequences import SPECS as GEAR_SPECS
from ..methods.test_gear_sequences import TASKS

VECTORS = {"a": InputSpec("a", "vector", dim=5), "b": InputSpec("b", "vector", dim=5)}


def _section(name: str, **params) -> Encoder:
    return Encoder(name, MODELS.get(name).Params(**params))


def modalities(lr_scales, **params):
    return MODELS.get("modalities").Params(sequence=_section("lstm", hidden=5, out=6, dropout=0.0),
                                           vector=_section("mlp", hidden=6, depth=1, dropout=0.0), hidden=8,
                                           dropout=0.0, lr_scales=lr_scales, **params)


def by_lr(module: torch.nn.Module, lr: float) -> dict[float, set[int]]:
    """Parameter ids by group lr, checking that every trainable parameter is in exactly one group."""
    groups = param_groups(module, lr)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == {id(p) for p in module.parameters() if p.requires_grad}, "a parameter was lost"
    assert len({g["lr"] for g in groups}) == len(groups)
    return {round(g["lr"], 12): {id(p) for p in g["params"]} for g in groups}


def ids(*modules: torch.nn.Module) -> set[int]:
    return {id(p) for m in modules for p in m.parameters()}


def test_each_input_s_encoder_trains_at_its_scale_and_the_rest_at_train_lr():
    model = build_model("modalities", modalities({"audio": 5.0, "features": 0.5}), GEAR_SPECS, 3)
    groups = by_lr(model, 1e-3)
    enc = model.encoders
    assert groups == {5e-3: ids(enc["audio"]), 5e-4: ids(enc["features"]), 1e-3: ids(enc["text"], model.head)}


def test_fusion_lr_scales_by_encoder_label_compose_with_an_encoder_s_own_scales():
    params = MODELS.get("fusion").Params(
        encoders={"wav": _section("wav_cnn", channels=8, layers=2, hidden=8, frontend_lr_scale=0.1),
                  "feat": _section("mlp", hidden=6, depth=1)}, hidden=8, lr_scales={"wav": 4.0})
    specs = {"audio": InputSpec("audio", "waveform"), "features": InputSpec("features", "vector", dim=5)}
    model = build_model("fusion", params, specs, 2)
    wav = model.encoders["wav"]
    groups = by_lr(model, 1e-3)
    # wav_cnn's frontend at 0.1 x its encoder's 4 x train.lr; the wav encoder's other layers at 4 x
    assert groups[4e-4] == ids(wav.frontend)
    assert groups[4e-3] == ids(wav) - ids(wav.frontend) and groups[4e-3]
    assert groups[1e-3] == ids(model.encoders["feat"], model.head)


def test_one_adamw_step_moves_an_encoder_at_100x_its_lr_100x_as_far():
    torch.manual_seed(0)
    model = build_model("modalities", modalities({"b": 100.0}), VECTORS, 3)
    a, b = model.encoders["a"], model.encoders["b"]
    b.load_state_dict(a.state_dict())  # the same weights and (below) the same gradients for both inputs
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        pa.grad = torch.randn_like(pa)
        pb.grad = pa.grad.clone()
    for p in model.head.parameters():
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in (*a.parameters(), *b.parameters())]
    lr = 1e-5
    optimizer = torch.optim.AdamW(param_groups(model, lr), lr=lr, weight_decay=0.01)  # as the loop builds it
    optimizer.step()
    n = len(before) // 2
    after = [p.detach() for p in (*a.parameters(), *b.parameters())]
    step_a = torch.cat([(x - y).flatten() for x, y in zip(after[:n], before[:n], strict=True)])
    step_b = torch.cat([(x - y).flatten() for x, y in zip(after[n:], before[n:], strict=True)])
    # Adam's first step is about lr per element (|m / sqrt(v)| = 1), AdamW's decay is lr x wd x p
    assert float(step_a.abs().median()) == pytest.approx(lr, rel=0.05)
    torch.testing.assert_close(step_b, 100 * step_a, rtol=2e-2, atol=1e-8)
    assert float(step_b.abs().median() / step_a.abs().median()) == pytest.approx(100, rel=0.02)


@pytest.mark.parametrize("fusion_branches", [False, True])
def test_gear_s_robust_and_biased_copies_of_the_audio_encoder_both_get_audio_s_lr(fusion_branches):
    method = METHODS.get("gear")(METHODS.get("gear").Params(d=8, heads=2, hidden=8, fusion_branches=fusion_branches),
                                 TASKS["classes"])
    nets = method.build_model(lambda n: build_model("modalities", modalities({"audio": 5.0}), GEAR_SPECS, n))
    groups = by_lr(nets, 1e-3)
    audio = ids(nets.robust_enc["audio"], nets.biased_enc["audio"])
    assert nets.robust_enc["audio"] is not nets.biased_enc["audio"]
    # as the released IFL_LS optimiser groups model_c / model_b's audio subnets; heads and fusion at train.lr
    assert set(groups) == {5e-3, 1e-3} and groups[5e-3] == audio
    assert ids(nets.bias_head["audio"], nets.project["audio"], nets.fusion, nets.robust_enc["text"]) <= groups[1e-3]


def test_cberl_s_trunks_keep_their_input_s_lr():
    from ..methods.test_conformance import CTX

    params = METHODS.get("cberl").Params(latent=8, lstm_hidden=4, gcn_hidden=8, gan_hidden=8, heads=2, dropout=0.0)
    method = METHODS.get("cberl")(params, CTX)
    nets = method.build_model(lambda n: build_model("modalities", modalities({"b": 3.0}), VECTORS, n))
    groups = by_lr(nets, 1e-3)
    assert groups[3e-3] == ids(nets.trunks["b"]) and ids(nets.trunks["a"]) <= groups[1e-3]


def test_without_lr_scales_every_parameter_is_in_one_group_at_train_lr():
    model = build_model("modalities", modalities(None), GEAR_SPECS, 3)
    assert list(by_lr(model, 2e-3)) == [2e-3]


@pytest.mark.parametrize("value", [0.0, -1.0, float("inf"), float("nan")])
def test_a_scale_that_is_not_positive_and_finite_is_refused(value):
    with pytest.raises(ValueError, match=r"lr_scales\.audio: must be a number > 0 \(a multiple of train.lr\)"):
        modalities({"audio": value})
    with pytest.raises(ValueError, match=r"lr_scales\.feat: must be a number > 0"):
        MODELS.get("fusion").Params(encoders={"feat": _section("mlp")}, lr_scales={"feat": value})


def test_a_scale_for_an_input_the_model_does_not_encode_names_the_inputs_it_has():
    with pytest.raises(ConfigError, match=r"lr_scales\.vision: names no input the model encodes "
                                          r"\(text, audio, features\)") as info:
        build_model("modalities", modalities({"vision": 5.0}), GEAR_SPECS, 3)
    assert "\n" not in str(info.value)
    # an input of the dataset that `inputs` leaves out: its scale would be dropped silently
    with pytest.raises(ConfigError, match=r"lr_scales\.audio: names no input the model encodes \(text\)"):
        build_model("modalities", modalities({"audio": 5.0}, inputs=("text",)), GEAR_SPECS, 3)
    with pytest.raises(ValueError, match=r"lr_scales\.audio: names no encoder of the model \(feat\)"):
        MODELS.get("fusion").Params(encoders={"feat": _section("mlp")}, lr_scales={"audio": 2.0})


SPEC_YAML = "search_spaces/gear_mosi_sequences.yaml"


def _gear_raw() -> dict:
    from pathlib import Path

    return yaml.safe_load((Path(__file__).resolve().parents[2] / SPEC_YAML).read_text())


def test_gear_mosi_sequences_sets_the_released_audio_and_vision_learning_rates():
    raw = _gear_raw()
    spec = build_spec(raw, SPEC_YAML)
    assert spec.train.lr == pytest.approx(1e-3)  # the released learning_rate_other
    scales = dict(spec.model.params.lr_scales)
    assert set(scales) == {"audio", "vision"}
    assert {m: s * spec.train.lr for m, s in scales.items()} == pytest.approx({"audio": 5e-3, "vision": 5e-3})


def test_a_scale_is_searchable_from_search_space_like_any_model_key():
    raw = copy.deepcopy(_gear_raw())
    raw["search"]["space"]["model.lr_scales.audio"] = {"type": "loguniform", "low": 1.0, "high": 10.0}
    raw["search"]["space"]["model.lr_scales.text"] = {"type": "categorical", "choices": [0.5, 1, 2]}
    assert "model.lr_scales.audio" in build_spec(raw, "spec.yaml").search.space
    trial = resolve_trial(raw, {"model.lr_scales.audio": 3.3, "model.lr_scales.text": 2})
    assert dict(trial.spec.model.params.lr_scales) == {"audio": 3.3, "vision": 5.0, "text": 2.0}
    bad = copy.deepcopy(raw)
    bad["search"]["space"]["model.lr_scales.audio"] = {"type": "categorical", "choices": [5, 0]}
    with pytest.raises(ConfigError, match=r"search\.space\.model\.lr_scales\.audio: value 0 is not valid there "
                                          r"\(model: lr_scales\.audio: must be a number > 0"):
        build_spec(bad, "spec.yaml")
    unknown = copy.deepcopy(raw)
    unknown["search"]["space"]["model.lr_scales.face"] = {"type": "uniform", "low": 1.0, "high": 2.0}
    with pytest.raises(ConfigError, match=r"lr_scales\.face: names no input the model encodes"):
        build_spec(unknown, "spec.yaml")

