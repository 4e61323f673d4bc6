"""Every registered method, by being registered, must pass these (STYLE practice 12)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fairray.methods import METHODS, Batch, DevEval, TrainContext
from fairray.models import build_model
from fairray.models.mlp import MLP

CLASS_GROUP = np.array([[20, 10], [12, 8], [2, 8], [5, 0]])
CTX = TrainContext(classes=("a", "b", "c", "d"), class_counts=CLASS_GROUP.sum(axis=1), attr_values=("F", "M"),
                   strata_values=("de", "en", "pl"), n_train=65, group_values=("F", "M"),
                   group_counts=CLASS_GROUP.sum(axis=0), class_group_counts=CLASS_GROUP,
                   group_soft_counts=CLASS_GROUP.sum(axis=0).astype(float))


def make_batch(n=24, seed=0, attr=None):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 2, (n,), generator=g) if attr is None else torch.full((n,), attr)
    prob = torch.nn.functional.one_hot(a, 2).float()
    return Batch(x=torch.randn(n, 6, generator=g), y=torch.randint(0, 4, (n,), generator=g), attr=a,
                 stratum=torch.randint(0, 3, (n,), generator=g), index=torch.arange(n), group=a, group_prob=prob)


def make(name):
    cls = METHODS.get(name)
    torch.manual_seed(0)
    model = build_model("mlp", MLP.Params(hidden=8, depth=1, dropout=0.0), 6, 4)
    return cls(cls.Params(), CTX), model


@pytest.mark.parametrize("name", METHODS.names())
def test_finite_loss_and_gradients_flow(name):
    method, model = make(name)
    out = method.loss(model(make_batch().x), make_batch())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(math.isfinite(v) for v in out.logs.values())


@pytest.mark.parametrize("name", METHODS.names())
def test_batch_missing_a_group(name):
    method, model = make(name)
    b = make_batch(attr=0)
    out = method.loss(model(b.x), b)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", METHODS.names())
def test_state_round_trip_and_json(name):
    method, model = make(name)
    b = make_batch(seed=1)
    with torch.no_grad():
        method.on_epoch_end(DevEval(model(b.x), b))
    state = method.state_dict()
    json.dumps(state)  # logged as method_state.json
    fresh, _ = make(name)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state


@pytest.mark.parametrize("name", METHODS.names())
def test_per_sample_loss_shape(name):
    method, model = make(name)
    b = make_batch()
    assert method.per_sample_loss(model(b.x), b).shape == (len(b),)


@pytest.mark.parametrize("name", METHODS.names())
def test_metadata_is_declared(name):
    cls = METHODS.get(name)
    from fairray.train import SAMPLERS

    assert cls.requires
    assert cls.sampler in SAMPLERS
    assert cls.summary
