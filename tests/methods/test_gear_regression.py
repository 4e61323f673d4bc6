"""GEAR and ERM on a regression (dataset.targets: regression): one-output heads, GMAE for the biased heads, L1
(MAE) for the robust prediction and ERM, W from detached absolute errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import fairray.methods.gear as gear_module
from fairray.methods import METHODS, Batch, TrainContext, gmae, gmae_weight
from fairray.models import MODELS, build_model

CTX = TrainContext(classes=(), class_counts=np.zeros(0, np.int64), attr_values=("F", "M"), strata_values=("en",),
                   n_train=30, group_values=("F", "M"), group_counts=np.array([15, 15]),
                   class_group_counts=np.zeros((0, 2), np.int64), group_soft_counts=np.array([15.0, 15.0]),
                   n_rows=30, epochs=4, task="regression")
D_IN = 5


def batch(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.arange(n) % 2
    return Batch(x=torch.randn(n, D_IN, generator=g), y=3 * torch.rand(n, generator=g) * 2 - 3, attr=a,
                 stratum=torch.zeros(n, dtype=torch.long), index=torch.arange(n), group=a,
                 group_prob=torch.nn.functional.one_hot(a, 2).float())


def make(name="gear", **params):
    cls = METHODS.get(name)
    torch.manual_seed(0)
    defaults = {"d": 8, "heads": 2, "hidden": 8} if name == "gear" else {}
    method = cls(cls.Params(**{**defaults, "loss": "l1", **params}), CTX)
    mlp = MODELS.get("mlp").Params(hidden=6, depth=1, dropout=0.0)
    return method, method.build_model(lambda n: build_model("mlp", mlp, D_IN, n))


def test_every_head_has_one_output_and_the_prediction_is_a_scalar():
    method, nets = make()
    b = batch()
    out = nets(b.inputs)
    assert out.logits.shape == (12, 1) and all(z.shape == (12, 1) for z in out.biased.values())
    assert method.inference_model(nets)(b.inputs).shape == (12, 1)


def test_the_biased_heads_are_trained_with_gmae(monkeypatch):
    calls = []

    def spy(pred, target, q, kind="tanh"):
        calls.append((pred.shape, q, kind))
        return gmae(pred, target, q, kind)

    monkeypatch.setattr(gear_module, "gmae", spy)
    method, nets = make(q=0.4, gmae="sigmoid", swap_epochs=0)
    nets.train()
    b = batch()
    out = method.loss(nets(b.inputs), b)
    # L_bias and the swapped biased heads' term, one modality each: GMAE called twice with the spec's q and weight
    assert calls == [(torch.Size([12]), 0.4, "sigmoid")] * 2
    z = nets.bias_logits(*nets.encode(b.inputs))
    want = gmae(next(iter(z.values())).squeeze(-1), b.y, 0.4, "sigmoid").mean().detach()
    assert float(method.bias_loss(next(iter(z.values())), b.y).mean().detach()) == pytest.approx(float(want), rel=1e-6)
    assert 0 < out.logs["gmae_weight_mean"] < 1 and torch.isfinite(out.loss)


def test_gmae_off_is_plain_l1_and_w_comes_from_absolute_errors():
    method, nets = make(gce=False, swap=False)
    nets.train()
    b = batch()
    out = nets(b.inputs)
    z = next(iter(out.biased.values()))
    assert torch.allclose(method.bias_loss(z, b.y), (z.squeeze(1) - b.y).abs())
    w = method.weights(out, b.y)
    e_b, e_r = (z.detach().squeeze(1) - b.y).abs(), (out.logits.detach().squeeze(1) - b.y).abs()
    assert torch.allclose(w, e_b / (e_b + e_r + 1e-8))
    assert "gmae_weight_mean" not in method.loss(out, b).logs


def test_the_robust_loss_is_the_w_weighted_mae():
    method, nets = make(swap=False, lambda_dis=0.0)
    nets.train()
    b = batch()
    out = nets(b.inputs)
    w = method.weights(out, b.y)
    want = (w * (out.logits.squeeze(1) - b.y).abs()).mean()
    assert float(method.loss(out, b).loss.detach()) == pytest.approx(float(want.detach()), rel=1e-6)


def test_erm_l1_is_the_mae_and_gradients_flow():
    method, model = make("erm")
    b = batch()
    pred = model(b.inputs)
    loss = method.loss(pred, b).loss
    assert float(loss.detach()) == pytest.approx(float((pred.squeeze(1) - b.y).abs().mean().detach()), rel=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_gmae_weight_is_detached_so_the_gradient_is_w_times_sign():
    pred = torch.tensor([0.5, 2.0], requires_grad=True)
    gmae(pred, torch.zeros(2), q=0.7).sum().backward()
    assert torch.allclose(pred.grad, gmae_weight(torch.tensor([0.5, 2.0]), 0.7))


def test_the_train_context_round_trips_its_task():
    assert TrainContext.from_plain(CTX.to_plain()).task == "regression"
    plain = CTX.to_plain()
    plain.pop("task")  # a checkpoint written before regression existed is single-label
    assert dataclasses.replace(TrainContext.from_plain(plain)).task == "single"
