"""Every registered method, by being registered, must pass these (STYLE practice 12).

Models are built as the loop builds them: ``method.build_model(build)`` gives the training module whose
output ``loss`` consumes; ``method.inference_model`` of it gives the class logits ``per_sample_loss``,
``on_epoch_end`` and predict see."""

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
                   group_soft_counts=CLASS_GROUP.sum(axis=0).astype(float), n_rows=80, epochs=3)
N_FEATURES = 6


def make_batch(n=24, seed=0, attr=None):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 2, (n,), generator=g) if attr is None else torch.full((n,), attr)
    prob = torch.nn.functional.one_hot(a, 2).float()
    # dataset rows: a shuffled subset of 0..n_rows-1, as a training split's indices are
    index = torch.randperm(CTX.n_rows, generator=g)[:n]
    return Batch(x=torch.randn(n, N_FEATURES, generator=g), y=torch.randint(0, 4, (n,), generator=g), attr=a,
                 stratum=torch.randint(0, 3, (n,), generator=g), index=index, group=a, group_prob=prob)


def build(n_out):
    return build_model("mlp", MLP.Params(hidden=8, depth=1, dropout=0.0), N_FEATURES, n_out)


def make(name, ctx=CTX):
    """(method, training module), the module built through the method's hook."""
    cls = METHODS.get(name)
    torch.manual_seed(0)
    method = cls(cls.Params(), ctx)
    return method, method.build_model(build)


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
    method.loss(model(b.x), b)  # a training step first, so per-sample state is not empty
    with torch.no_grad():
        method.on_epoch_end(DevEval(method.inference_model(model)(b.x), b))
    state = method.state_dict()
    json.dumps(state)  # logged as method_state.json
    fresh, _ = make(name)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state


@pytest.mark.parametrize("name", METHODS.names())
def test_per_sample_loss_shape(name):
    method, model = make(name)
    b = make_batch()
    logits = method.inference_model(model)(b.x)
    assert logits.shape == (len(b), CTX.n_classes)
    assert method.per_sample_loss(logits, b).shape == (len(b),)


@pytest.mark.parametrize("name", METHODS.names())
def test_inference_model_shares_the_training_weights(name):
    """Predict loads model.pt into the training module and reads its inference net."""
    method, model = make(name)
    net = method.inference_model(model)
    trained = {id(p) for p in model.parameters()}
    assert {id(p) for p in net.parameters()} <= trained


@pytest.mark.parametrize("name", METHODS.names())
def test_model_rebuilt_from_the_stored_context_loads_the_weights(name):
    """What ``fairray predict`` does: the method from the checkpoint's TrainContext builds the same module."""
    method, model = make(name)
    ctx = TrainContext.from_plain(json.loads(json.dumps(CTX.to_plain())))
    rebuilt_method, rebuilt = make(name, ctx)
    rebuilt.load_state_dict(model.state_dict())
    x = make_batch().x
    with torch.no_grad():
        expected = method.inference_model(model).eval()(x)
        assert torch.equal(rebuilt_method.inference_model(rebuilt).eval()(x), expected)


@pytest.mark.parametrize("name", METHODS.names())
def test_metadata_is_declared(name):
    cls = METHODS.get(name)
    from fairray.train import SAMPLERS

    assert cls.requires
    assert cls.sampler in SAMPLERS
    assert cls.summary
