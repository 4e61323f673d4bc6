"""GEAR over several modalities of different kinds (the ``modalities`` model: an LSTM per sequence input, an MLP
per vector input), for classification and regression: each modality has its own robust and biased encoder, the
conformance properties hold (finite loss, gradients reach every encoder of both branches, a batch missing a group,
state round trip, pure loss, the predict path's rebuild), and padding frames do not change the robust prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fairray.inputs import InputSpec, Padded
from fairray.methods import METHODS, Batch, DevEval, TrainContext
from fairray.models import MODELS, build_model

SPECS = {"text": InputSpec("text", "sequence", dim=6), "audio": InputSpec("audio", "sequence", dim=4),
         "features": InputSpec("features", "vector", dim=3)}
CLASSES = TrainContext(classes=("neg", "neu", "pos"), class_counts=np.array([10, 10, 10]), attr_values=("F", "M"),
                       strata_values=("en",), n_train=30, group_values=("F", "M"), group_counts=np.array([15, 15]),
                       class_group_counts=np.array([[5, 5], [5, 5], [5, 5]]),
                       group_soft_counts=np.array([15.0, 15.0]), n_rows=30, epochs=4)
REGRESSION = TrainContext(classes=(), class_counts=np.zeros(0, np.int64), attr_values=("F", "M"),
                          strata_values=("en",), n_train=30, group_values=("F", "M"), group_counts=np.array([15, 15]),
                          class_group_counts=np.zeros((0, 2), np.int64), group_soft_counts=np.array([15.0, 15.0]),
                          n_rows=30, epochs=4, task="regression")
TASKS = {"classes": CLASSES, "regression": REGRESSION}


def _padded(n: int, dim: int, g: torch.Generator, lo: int = 0, hi: int = 7, pad: float = 0.0) -> Padded:
    lengths = torch.randint(lo, hi + 1, (n,), generator=g)
    mask = torch.arange(hi)[None, :] < lengths[:, None]
    values = torch.where(mask[..., None], torch.randn(n, hi, dim, generator=g), torch.tensor(pad))
    return Padded(values, mask)


def make_batch(task: str, n: int = 16, seed: int = 0, attr: int | None = None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    a = torch.arange(n) % 2 if attr is None else torch.full((n,), attr)
    y = (torch.rand(n, generator=g) * 6 - 3) if task == "regression" else torch.randint(0, 3, (n,), generator=g)
    inputs = {"text": _padded(n, 6, g), "audio": _padded(n, 4, g, lo=1), "features": torch.randn(n, 3, generator=g)}
    return Batch(y=y, attr=a, stratum=torch.zeros(n, dtype=torch.long), index=torch.arange(n), group=a,
                 group_prob=torch.nn.functional.one_hot(a, 2).float(), inputs=inputs)


def make(task: str, ctx: TrainContext | None = None, **params):
    torch.manual_seed(0)
    model = MODELS.get("modalities").Params(
        sequence=_section("lstm", hidden=5, out=6, dropout=0.0),
        vector=_section("mlp", hidden=6, depth=1, dropout=0.0), hidden=8, dropout=0.0)
    loss = {"loss": "l1"} if task == "regression" else {}
    method = METHODS.get("gear")(METHODS.get("gear").Params(d=8, heads=2, hidden=8, **loss, **params),
                                 ctx or TASKS[task])
    return method, method.build_model(lambda n_out: build_model("modalities", model, SPECS, n_out))


def _section(name: str, **params):
    from fairray.models.fusion import Encoder

    return Encoder(name, MODELS.get(name).Params(**params))


@pytest.mark.parametrize("task", TASKS)
def test_each_modality_has_its_own_robust_and_biased_encoder_of_its_kind(task):
    _, nets = make(task)
    for branch in (nets.robust_enc, nets.biased_enc):
        assert {m: type(e).__name__ for m, e in branch.items()} == {
            "text": "LSTMHead", "audio": "LSTMHead", "features": "VectorMLP"}
    assert nets.robust_enc["audio"].rnn is not nets.biased_enc["audio"].rnn
    assert set(nets.bias_head) == {"text", "audio", "features"}


@pytest.mark.parametrize("fusion_branches", [False, True])
@pytest.mark.parametrize("task", TASKS)
def test_finite_loss_and_gradients_reach_every_encoder_of_both_branches(task, fusion_branches):
    method, nets = make(task, swap_epochs=0, fusion_branches=fusion_branches)
    nets.train()
    b = make_batch(task)
    out = method.loss(nets(b.inputs), b)
    assert torch.isfinite(out.loss) and out.logs["swapping"] == 1.0
    out.loss.backward()
    for branch in ("robust_enc", "biased_enc"):
        for modality, enc in getattr(nets, branch).items():
            grads = [p.grad for p in enc.parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads), (branch, modality)
            assert sum(float(g.abs().sum()) for g in grads) > 0, (branch, modality)


@pytest.mark.parametrize("task", TASKS)
def test_batch_missing_a_group_and_state_round_trip(task):
    method, nets = make(task)
    b = make_batch(task, attr=1)
    out = method.loss(nets(b.inputs), b)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    method.on_step([out])
    with torch.no_grad():
        method.on_epoch_end(DevEval(method.inference_model(nets)(b.inputs), b))
    state = method.state_dict()
    json.dumps(state)
    fresh, _ = make(task)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state


@pytest.mark.parametrize("task", TASKS)
def test_loss_is_pure(task):
    method, nets = make(task)  # before swap_epochs: no permutation, so the same forward pass twice
    b = make_batch(task, seed=3)
    with torch.no_grad():
        first, again = method.loss(nets(b.inputs), b), method.loss(nets(b.inputs), b)
    assert torch.equal(first.loss, again.loss) and first.logs == again.logs


@pytest.mark.parametrize("task", TASKS)
def test_padding_frames_do_not_change_the_robust_prediction(task):
    method, nets = make(task)
    net = method.inference_model(nets).eval()
    b = make_batch(task, seed=4)
    longer = {k: Padded(torch.cat([v.values, torch.full((len(v), 5, v.values.shape[2]), 9.0)], dim=1),
                        torch.cat([v.mask, torch.zeros(len(v), 5, dtype=torch.bool)], dim=1))
              if isinstance(v, Padded) else v for k, v in b.inputs.items()}
    with torch.no_grad():
        torch.testing.assert_close(net(longer), net(b.inputs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("task", TASKS)
def test_rebuilt_from_the_stored_context_predicts_the_same(task):
    """What `fairray predict` does with a checkpoint: the method from its TrainContext builds the same module."""
    method, nets = make(task)
    ctx = TrainContext.from_plain(json.loads(json.dumps(TASKS[task].to_plain())))
    rebuilt_method, rebuilt = make(task, ctx)
    torch.manual_seed(5)
    for p in nets.parameters():  # weights other than the seeded ones, so the load is what makes them agree
        p.data.add_(torch.randn_like(p) * 0.1)
    rebuilt.load_state_dict(nets.state_dict())
    b = make_batch(task, seed=6)
    with torch.no_grad():
        expected = method.inference_model(nets).eval()(b.inputs)
        torch.testing.assert_close(rebuilt_method.inference_model(rebuilt).eval()(b.inputs), expected,
                                   rtol=1e-5, atol=1e-6)
