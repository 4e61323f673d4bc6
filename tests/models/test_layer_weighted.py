"""The layer-weighted SSL model: layout, s3prl-style softmax weights, equivalence to an MLP, spec and training."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fairray.config import build_spec, load_spec, to_plain
from fairray.data import prepare
from fairray.errors import ConfigError
from fairray.models import MLP, MODELS, LayerWeighted, LayerWeightedSum, build_model
from fairray.train import LocalSession, run_trial

L, D, C = 4, 6, 3


def params(**kw) -> LayerWeighted.Params:
    return LayerWeighted.Params(**{"n_layers": L, "hidden": 8, **kw})


def model(**kw) -> LayerWeightedSum:
    torch.manual_seed(0)
    return build_model("layer_weighted", params(**kw), L * D, C)


def test_output_shape_and_layer_layout() -> None:
    m = model()
    x = torch.randn(5, L * D)
    assert m(x).shape == (5, C)
    assert (m.n_layers, m.dim) == (L, D)
    # uniform weights: the pooled vector is the mean of the layer-major blocks
    torch.testing.assert_close(m.pool(x), x.reshape(5, L, D).mean(1))


def test_default_head_is_two_linear_layers() -> None:
    m = build_model("layer_weighted", LayerWeighted.Params(n_layers=13), 13 * 768, C)
    linears = [layer for layer in m.head if isinstance(layer, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(768, 256), (256, C)]
    probe = model(depth=0).head
    assert [type(layer) for layer in probe] == [torch.nn.Linear]


def test_weights_start_uniform_and_sum_to_one() -> None:
    m = model()
    assert torch.equal(m.weights.detach(), torch.zeros(L))  # s3prl: zeros before the softmax
    w = m.layer_weights()
    torch.testing.assert_close(w, torch.full((L,), 1 / L))
    with torch.no_grad():
        m.weights.copy_(torch.tensor([2.0, -1.0, 0.5, 3.0]))
    w = m.layer_weights()
    assert not w.requires_grad and math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)
    torch.testing.assert_close(w, torch.softmax(torch.tensor([2.0, -1.0, 0.5, 3.0]), 0))


@pytest.mark.parametrize("layer_norm", [False, True])
def test_a_one_hot_weight_equals_an_mlp_over_that_layer(layer_norm: bool) -> None:
    m = model(layer_norm=layer_norm, depth=2).eval()
    pick = 2
    with torch.no_grad():  # softmax([-inf, -inf, 0, -inf]) is exactly one-hot
        m.weights.copy_(torch.tensor([-math.inf] * L).index_fill(0, torch.tensor(pick), 0.0))
    mlp = build_model("mlp", MLP.Params(hidden=8, depth=2, dropout=0.2), D, C).eval()
    mlp.load_state_dict(m.head.state_dict())
    x = torch.randn(7, L * D)
    layer = x.reshape(7, L, D)[:, pick]
    if layer_norm:
        layer = torch.nn.functional.layer_norm(layer, (D,))
    # the same function, but not the same kernels (einsum pooling, a strided vs contiguous GEMM input)
    torch.testing.assert_close(m(x), mlp(layer), atol=1e-6, rtol=1e-5)


def test_layer_norm_normalises_each_layer_vector() -> None:
    m = model(layer_norm=True)
    x = torch.randn(3, L * D) * torch.arange(1, L + 1).repeat_interleave(D) + 5.0  # layers at different scales
    with torch.no_grad():
        m.weights.copy_(torch.tensor([0.0, 50.0, 0.0, 0.0]))
    pooled = m.pool(x)
    torch.testing.assert_close(pooled.mean(1), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(pooled.var(1, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)


def test_gradients_reach_the_layer_weights() -> None:
    m = model()
    x, y = torch.randn(16, L * D), torch.randint(0, C, (16,))
    torch.nn.functional.cross_entropy(m(x), y).backward()
    assert m.weights.grad is not None and m.weights.grad.abs().sum() > 0
    assert all(p.grad is not None for p in m.parameters())


def test_a_width_not_divisible_by_n_layers_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        build_model("layer_weighted", params(n_layers=5), 88, C)
    message = str(info.value)
    assert "\n" not in message
    assert "n_features=88" in message and "n_layers=5" in message
    assert "model.n_layers" in message and "hf_ssl" in message


def test_registered_and_validated_by_the_spec_loader(tmp_path: Path) -> None:
    assert "layer_weighted" in MODELS and MODELS.get("layer_weighted") is LayerWeighted
    base = {"name": "t", "method": {"name": "erm"}}
    spec = build_spec({**base, "model": {"name": "layer_weighted", "n_layers": 13, "layer_norm": True}}, "s")
    assert spec.model.name == "layer_weighted"
    assert spec.model.params == LayerWeighted.Params(n_layers=13, hidden=256, depth=1, dropout=0.2, layer_norm=True)
    plain = to_plain(spec.model)  # what checkpoints store and `fairray predict` rebuilds from
    assert plain == {"name": "layer_weighted", "n_layers": 13, "hidden": 256, "depth": 1, "dropout": 0.2,
                     "layer_norm": True, "input": None}
    assert build_spec({**base, "model": plain}, "s").model == spec.model
    path = tmp_path / "spec.yaml"
    path.write_text("name: t\nmethod: {name: erm}\nmodel: {name: layer_weighted, n_layers: 25, hidden: 64}\n")
    loaded = load_spec(path, ["model.depth=2"])
    assert (loaded.spec.model.params.n_layers, loaded.spec.model.params.hidden) == (25, 64)
    assert loaded.spec.model.params.depth == 2
    for model_section, key, value in [({"name": "layer_weighted"}, "model.n_layers", "required key is missing"),
                                      ({"name": "layer_weighted", "n_layers": 0}, "model.n_layers", ">= 1"),
                                      ({"name": "layer_weighted", "n_layers": 3, "dropout": 1.0}, "model.dropout",
                                       "< 1")]:
        with pytest.raises(ConfigError, match=rf"^s: {re.escape(key)}: .*{re.escape(value)}"):
            build_spec({**base, "model": model_section}, "s")


def test_a_short_training_learns_to_weigh_the_informative_layer(tmp_path: Path) -> None:
    """Real eGeMAPS features as the middle "layer" between two noise layers: the weight moves to it."""
    objectives = [{"metric": "dev/weighted_f1", "direction": "max"}]
    raw = {"name": "t", "method": {"name": "erm"}, "search": {"objectives": objectives},
           "model": {"name": "layer_weighted", "n_layers": 3, "hidden": 32},
           "train": {"epochs": 3, "lr": 3e-3}}
    data = prepare(build_spec(raw, "t").dataset)
    noise = np.random.default_rng(0).standard_normal((2, *data.X.shape)).astype(np.float32)
    stacked = dataclasses.replace(data, X=np.concatenate([noise[0], data.X, noise[1]], axis=1),
                                  mean=np.tile(data.mean, 3), std=np.tile(data.std, 3))
    final = run_trial(raw, {}, stacked, LocalSession(tmp_path))
    assert final["final"] == 1.0 and math.isfinite(final["dev/weighted_f1"])
    m = build_model("layer_weighted", params(n_layers=3, hidden=32), stacked.n_features, len(data.classes))
    m.load_state_dict(torch.load(tmp_path / "checkpoint" / "model.pt", weights_only=True))
    w = m.layer_weights()
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)
    assert int(w.argmax()) == 1 and float(w[1]) > 1 / 3 + 0.02
