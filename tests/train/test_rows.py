"""The training loop's lean hot path computes what the plain path computes: batches gathered from per-trial
tensor tables equal :func:`_batch`'s, the integer-label base loss equals the one-hot soft-target loss (values and
gradients), and an epoch's report from cached group cells equals :meth:`GroupReport.compute`."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fairray.config import build_spec
from fairray.data import prepare
from fairray.inputs import Padded, SequenceStore
from fairray.methods.erm import BaseLoss, BaseLossParams
from fairray.metrics import GroupReport
from fairray.train.loop import _batch, _Rows, train_context


@pytest.fixture(scope="module")
def data():
    raw = {"name": "t", "method": {"name": "erm"}, "model": {"name": "mlp", "hidden": 8},
           "search": {"objectives": [{"metric": "dev/weighted_f1", "direction": "max"}]}}
    return prepare(build_spec(raw, "t").dataset)


def _with_waveform_and_context(data):
    n, rng = len(data.y), np.random.default_rng(0)
    lengths = rng.integers(50, 300, n)
    store = SequenceStore.from_rows("audio", "waveform", [rng.standard_normal(k).astype(np.float32) for k in lengths],
                                    max_length=200)
    context = np.stack([np.arange(n) // 4, np.arange(n) % 4, np.arange(n) % 3], axis=1).astype(np.int64)
    return dataclasses.replace(data, extra_inputs={"audio": store}, context=context)


def _assert_same_batch(a, b, target_none: bool) -> None:
    for name in ("y", "attr", "stratum", "index", "group", "group_prob"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), name  # gathered integers/copies
    if target_none:
        assert b.target is None and torch.equal(b.loss_target, a.y)
        assert torch.equal(a.target, torch.eye(a.target.shape[1])[b.y])  # what None stands for
    else:
        assert torch.equal(a.target, b.target)
    assert a.inputs.keys() == b.inputs.keys()
    for k in a.inputs:
        x, y = a.inputs[k], b.inputs[k]
        if isinstance(x, Padded):
            assert torch.equal(x.values, y.values) and torch.equal(x.mask, y.mask), k
        else:
            assert torch.equal(x, y), k
    assert (a.context is None) == (b.context is None)
    if a.context is not None:
        for f in ("dialogue", "position", "speaker"):
            assert torch.equal(getattr(a.context, f), getattr(b.context, f))


def test_gathered_batches_equal_the_numpy_batches(data):
    for d in (data, _with_waveform_and_context(data)):
        rows = _Rows(d)
        order = np.random.default_rng(1).permutation(d.indices("train"))
        for idx in (order[:64], order[64:70], order[::7][:33]):
            a = _batch(d, idx, None, np.random.default_rng(5))  # the same crop stream for both
            b = rows.batch(idx, np.random.default_rng(5))
            _assert_same_batch(a, b, target_none=True)


def test_soft_targets_that_are_not_one_hot_stay_on_the_batch(data):
    soft = np.asarray(data.soft, dtype=np.float32).copy()
    soft[:, 0] += 0.1
    soft /= soft.sum(axis=1, keepdims=True)
    d = dataclasses.replace(data, soft=soft)
    idx = d.indices("train")[:40]
    _assert_same_batch(_batch(d, idx), _Rows(d).batch(idx), target_none=False)


@pytest.mark.parametrize("kind", ["ce", "cb_ce", "focal"])
def test_integer_labels_give_the_one_hot_loss_and_gradient(data, kind):
    ctx = train_context(data, 3)
    loss = BaseLoss(BaseLossParams(loss=kind), ctx)
    gen = torch.Generator().manual_seed(0)
    n_c = len(data.classes)
    for _ in range(5):
        logits = torch.randn(64, n_c, generator=gen) * 4
        y = torch.randint(0, n_c, (64,), generator=gen)
        out = []
        for target in (y, torch.eye(n_c)[y]):
            x = logits.clone().requires_grad_(True)
            value = loss(x, target)
            value.mean().backward()
            out.append((value.detach(), x.grad))
        torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-6, atol=1e-8)


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


def test_an_epochs_report_equals_compute_on_its_rows(data):
    from fairray.metrics import Predictions

    idx = data.indices("dev")
    groups = data.meta.iloc[idx][[data.attribute, data.stratum_name]].reset_index(drop=True)
    template = Predictions(uid=idx.astype(str), speaker=data.meta["speaker"].iloc[idx].astype(str).to_numpy(),
                           groups=groups, y_true=data.y[idx], y_pred=data.y[idx], prob=None, classes=data.classes,
                           attribute=data.attribute, stratum=data.stratum_name, task="single")
    rng = np.random.default_rng(2)
    for _ in range(3):  # several epochs from one template: the group cells are encoded once
        pred = template.with_outputs(rng.integers(0, len(data.classes), len(idx)), None)
        got = pred.report().flat("dev")
        want = GroupReport.compute(data.y[idx], pred.y_pred, data.classes, groups, data.attribute,
                                   data.stratum_name).flat("dev")
        assert got.keys() == want.keys()
        assert all(_close(got[k], want[k]) for k in got), [k for k in got if not _close(got[k], want[k])]
        labels = ["scope", "metric", "attr", "group", "stratum", "stratum_value"]  # the table's rows, in order
        assert pred.report().table()[labels].equals(GroupReport.compute(
            data.y[idx], pred.y_pred, data.classes, groups, data.attribute, data.stratum_name).table()[labels])
