"""Every registered method, by being registered, must pass these (STYLE practice 12).

Models are built as the loop builds them: ``method.build_model(build)`` gives the training module whose
output ``loss`` consumes; ``method.inference_model`` of it gives the class logits ``per_sample_loss``,
``on_epoch_end`` and predict see.

Batches come in three kinds (``TARGETS``): integer labels only (``target`` None), the one-hot targets the
loop passes for single-label data, and the rater-vote soft targets of multi-label data (``y`` = argmax,
with the multi-label training context)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from fairray.inputs import InputSpec, Padded
from fairray.methods import METHODS, Batch, DevEval, TrainContext
from fairray.models import MODELS, build_model

CLASS_GROUP = np.array([[20, 10], [12, 8], [2, 8], [5, 0]])
CTX = TrainContext(classes=("a", "b", "c", "d"), class_counts=CLASS_GROUP.sum(axis=1), attr_values=("F", "M"),
                   strata_values=("de", "en", "pl"), n_train=65, group_values=("F", "M"),
                   group_counts=CLASS_GROUP.sum(axis=0), class_group_counts=CLASS_GROUP,
                   group_soft_counts=CLASS_GROUP.sum(axis=0).astype(float), n_rows=80, epochs=3)
N_FEATURES = 6
#: Multi-label training context: label (argmax) x positive class counts, several positives per sample.
CTX_MULTI = dataclasses.replace(CTX, class_target_counts=np.array([[30, 12, 4, 2], [5, 20, 3, 1], [2, 1, 10, 3],
                                                                     [0, 1, 2, 5]]))
TARGETS = ("labels", "single", "multi")
#: One tiny model per input kind: every method must train on each (vector features, frame sequences with
#: padding — pooled, and through an LSTM —, raw waveforms with padding).
KINDS = {
    "vector": ("mlp", {"hidden": 8, "depth": 1, "dropout": 0.0}, InputSpec("features", "vector", dim=N_FEATURES)),
    "sequence": ("seq_pool", {"hidden": 8, "depth": 1, "dropout": 0.0}, InputSpec("lld", "sequence", dim=N_FEATURES)),
    "waveform": ("wav_cnn", {"channels": 4, "layers": 3, "hidden": 8, "dropout": 0.0}, InputSpec("audio", "waveform")),
    # an LSTM over frames (GEAR's per-modality encoder), some rows with no valid frame at all
    "lstm": ("lstm", {"hidden": 4, "out": 8, "dropout": 0.0}, InputSpec("frames", "sequence", dim=N_FEATURES)),
}


def _padded(n: int, g: torch.Generator, lo: int, hi: int, dim: int | None) -> Padded:
    """``n`` rows of random length in ``[lo, hi]``, zero-padded and masked."""
    lengths = torch.randint(lo, hi + 1, (n,), generator=g)
    mask = torch.arange(hi)[None, :] < lengths[:, None]
    values = torch.randn(n, hi, *(() if dim is None else (dim,)), generator=g)
    values = values * (mask[..., None] if dim is not None else mask)
    return Padded(values, mask)


def make_batch(n=24, seed=0, attr=None, task="labels", kind="vector"):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 2, (n,), generator=g) if attr is None else torch.full((n,), attr)
    prob = torch.nn.functional.one_hot(a, 2).float()
    # dataset rows: a shuffled subset of 0..n_rows-1, as a training split's indices are
    index = torch.randperm(CTX.n_rows, generator=g)[:n]
    y = torch.randint(0, 4, (n,), generator=g)
    target = None
    if task == "single":
        target = torch.nn.functional.one_hot(y, 4).float()
    elif task == "multi":  # vote shares of 10 raters, some with zero votes for a class
        votes = torch.distributions.Multinomial(10, torch.full((4,), 0.25)).sample((n,))
        target = votes / votes.sum(dim=1, keepdim=True)
        y = target.argmax(dim=1)
    x = torch.randn(n, N_FEATURES, generator=g)
    stratum = torch.randint(0, 3, (n,), generator=g)
    if kind == "vector":
        inputs = {"features": x}
    elif kind == "sequence":
        inputs = {"lld": _padded(n, g, 2, 9, N_FEATURES)}
    elif kind == "lstm":
        inputs = {"frames": _padded(n, g, 0, 9, N_FEATURES)}
    else:
        inputs = {"audio": _padded(n, g, 300, 800, None)}
    return Batch(y=y, attr=a, stratum=stratum, index=index, group=a, group_prob=prob, target=target, inputs=inputs)


def build(n_out, kind="vector"):
    name, params, spec = KINDS[kind]
    return build_model(name, MODELS.get(name).Params(**params), {spec.name: spec}, n_out)


def make(name, ctx=CTX, task="labels", kind="vector"):
    """(method, training module), the module built through the method's hook."""
    cls = METHODS.get(name)
    torch.manual_seed(0)
    method = cls(cls.Params(), CTX_MULTI if task == "multi" and ctx is CTX else ctx)
    return method, method.build_model(lambda n_out: build(n_out, kind))


@pytest.mark.parametrize("task", TARGETS)
@pytest.mark.parametrize("name", METHODS.names())
@pytest.mark.parametrize("kind", KINDS)
def test_finite_loss_and_gradients_flow(name, task, kind):
    torch.manual_seed(1)
    method, model = make(name, task=task, kind=kind)
    b = make_batch(task=task, kind=kind)
    out = method.loss(model(b.inputs), b)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(math.isfinite(v) for v in out.logs.values())


@pytest.mark.parametrize("task", TARGETS)
@pytest.mark.parametrize("name", METHODS.names())
@pytest.mark.parametrize("kind", KINDS)
def test_batch_missing_a_group(name, task, kind):
    torch.manual_seed(1)
    method, model = make(name, task=task, kind=kind)
    b = make_batch(attr=0, task=task, kind=kind)
    out = method.loss(model(b.inputs), b)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("task", TARGETS)
@pytest.mark.parametrize("name", METHODS.names())
@pytest.mark.parametrize("kind", KINDS)
def test_state_round_trip_and_json(name, task, kind):
    torch.manual_seed(1)
    method, model = make(name, task=task, kind=kind)
    b = make_batch(seed=1, task=task, kind=kind)
    method.on_step([method.loss(model(b.inputs), b)])  # a training step first, so per-sample state is not empty
    with torch.no_grad():
        method.on_epoch_end(DevEval(method.inference_model(model)(b.inputs), b))
    state = method.state_dict()
    json.dumps(state)  # logged as method_state.json
    fresh, _ = make(name, task=task, kind=kind)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state


@pytest.mark.parametrize("task", TARGETS)
@pytest.mark.parametrize("name", METHODS.names())
@pytest.mark.parametrize("kind", KINDS)
def test_per_sample_loss_shape(name, task, kind):
    torch.manual_seed(1)
    method, model = make(name, task=task, kind=kind)
    b = make_batch(task=task, kind=kind)
    logits = method.inference_model(model)(b.inputs)
    assert logits.shape == (len(b), CTX.n_classes)
    assert method.per_sample_loss(logits, b).shape == (len(b),)


def _steps(name, kind, loss="cb_ce", ctx=CTX, steps=3):
    """Losses, gradients and per-sample losses of a few training steps on batches of ``kind``:
    ``labels`` (target None), ``one_hot`` (of y), ``soft`` (vote shares, y their argmax) or ``argmax``
    (the one-hot of those soft targets' argmax)."""
    cls = METHODS.get(name)
    extra = {"swap_start": 0.0} if name == "disent" else {}  # DisEnt's swap branch from the first step
    torch.manual_seed(0)
    method = cls(cls.Params(loss=loss, **extra), ctx)
    module = method.build_model(build)
    out = []
    for step in range(steps):
        b = make_batch(seed=10 + step, task="multi" if kind in ("soft", "argmax") else "labels")
        if kind in ("one_hot", "argmax"):
            b = dataclasses.replace(b, target=torch.nn.functional.one_hot(b.y, 4).float())
        o = method.loss(module(b.x * 3), b)
        grads = torch.autograd.grad(o.loss, list(module.parameters()))
        per_sample = method.per_sample_loss(method.inference_model(module)(b.inputs), b).detach()
        out.append((o.loss.detach(), grads, per_sample))
    return out


@pytest.mark.parametrize("loss", ["ce", "cb_ce", "focal"])
@pytest.mark.parametrize("name", METHODS.names())
def test_one_hot_targets_reproduce_integer_labels_exactly(name, loss):
    """The single-label path is numerically unchanged: the loop's one-hot targets give the same losses,
    gradients and per-sample losses, to float rounding, as the integer labels did (the soft-target path is a
    different kernel: a sum over classes instead of a gather, so not necessarily bit for bit)."""
    for (la, ga, pa), (lb, gb, pb) in zip(_steps(name, "labels", loss), _steps(name, "one_hot", loss), strict=True):
        torch.testing.assert_close(la, lb, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)
        for x, y in zip(ga, gb, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", METHODS.names())
def test_soft_targets_enter_the_loss(name):
    """Every method's loss and base loss see the soft target, not just its argmax."""
    soft, hard = _steps(name, "soft", ctx=CTX_MULTI, steps=1), _steps(name, "argmax", ctx=CTX_MULTI, steps=1)
    assert not torch.equal(soft[0][0], hard[0][0])
    assert not torch.equal(soft[0][2], hard[0][2])


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
        torch.testing.assert_close(rebuilt_method.inference_model(rebuilt).eval()(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", METHODS.names())
def test_metadata_is_declared(name):
    cls = METHODS.get(name)
    from fairray.methods import SAMPLERS

    assert cls.requires
    assert cls.sampler in SAMPLERS
    assert cls.summary


@pytest.mark.parametrize("name", METHODS.names())
def test_loss_is_pure_and_on_step_commits(name):
    """``loss()`` computes and keeps nothing (a skipped step changes no state); its update is committed by
    ``on_step`` (STYLE practice 4, the Method contract)."""
    torch.manual_seed(1)
    method, model = make(name)
    b = make_batch(seed=2)
    before = json.dumps(method.state_dict(), sort_keys=True)
    first = method.loss(model(b.inputs), b)
    again = method.loss(model(b.inputs), b)
    assert json.dumps(method.state_dict(), sort_keys=True) == before
    # the same code path twice on the same inputs: bit-identical unless loss() changed the method in between
    assert torch.equal(first.loss, again.loss) and first.logs == again.logs
    method.on_step([first])
    json.dumps(method.state_dict())


@pytest.mark.parametrize("name", METHODS.names())
def test_batch_statistics_is_declared_truthfully(name):
    """``batch_statistics = False`` promises a loss without batch sums (the loop then skips the recorded pass
    under accumulation); True must use them (else that pass is wasted)."""
    from fairray.methods._reduce import Accumulation, forbidden, recording

    torch.manual_seed(1)
    method, model = make(name)
    b = make_batch(seed=3)
    if not method.batch_statistics:
        with forbidden(f"{name} declares batch_statistics = False"):
            method.loss(model(b.inputs), b)
        return
    acc = Accumulation(1)
    with torch.no_grad(), recording(acc, 0):
        method.loss(model(b.inputs), b)
    assert acc.used

