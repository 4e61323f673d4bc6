"""The step contract of the stateful methods through the loop's ``train_step``: ``loss()`` computes, ``on_step``
commits once the optimiser step is taken (METHODS 3.0).

An accumulated step (``train.accumulate``: several micro-batches, one optimiser step) must leave the same
method state as the one big batch it stands for: the q of GDRO/GADRO/PGDRO and MinMaxGAP's cell EMA because
every micro-batch sees the whole step's batch sums, LfF/DisEnt's EMA tables because the step's rows are
committed together. A skipped step (non-finite loss) leaves the state untouched.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from fairray.methods import METHODS, Batch, TrainContext
from fairray.models import build_model
from fairray.models.mlp import MLP
from fairray.train.loop import Precision, train_step

CG = np.array([[8, 6], [7, 5], [6, 8]])
CTX = TrainContext(classes=("a", "b", "c"), class_counts=CG.sum(axis=1), attr_values=("F", "M"),
                   strata_values=("en", "de"), n_train=40, group_values=("F", "M"), group_counts=CG.sum(axis=0),
                   class_group_counts=CG, group_soft_counts=CG.sum(axis=0).astype(float), n_rows=40, epochs=2)
N_FEATURES = 5
CPU = Precision("fp32", torch.device("cpu"))


def whole_batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.arange(n) % 2
    prob = torch.stack([0.7 * (a == 0) + 0.3 * (a == 1), 0.3 * (a == 0) + 0.7 * (a == 1)], dim=1).float()
    return Batch(x=torch.randn(n, N_FEATURES, generator=g), y=torch.randint(0, 3, (n,), generator=g), attr=a,
                 stratum=(torch.arange(n) // 2) % 2, index=torch.randperm(40, generator=g)[:n], group=a,
                 group_prob=prob)


def split(b, parts=2):
    """``parts`` consecutive micro-batches of ``b`` (each keeps both genders of both languages)."""
    n = len(b) // parts
    take = lambda t, i: t[i * n:(i + 1) * n]  # noqa: E731
    return [Batch(x=take(b.x, i), y=take(b.y, i), attr=take(b.attr, i), stratum=take(b.stratum, i),
                  index=take(b.index, i), group=take(b.group, i), group_prob=take(b.group_prob, i))
            for i in range(parts)]


def make(name, **params):
    cls = METHODS.get(name)
    torch.manual_seed(0)
    method = cls(cls.Params(**params), CTX)
    module = method.build_model(lambda n_out: build_model("mlp", MLP.Params(hidden=8, depth=1, dropout=0.0),
                                                          N_FEATURES, n_out))
    method.on_train_start(4)
    return method, module, torch.optim.SGD(module.parameters(), lr=0.1)


STATEFUL = [("gdro", {"eta_q": 0.5}), ("gadro", {"eta_q": 0.5}), ("pgdro", {"eta_q": 0.5}),
            ("minmaxgap", {"cell_ema": 0.5, "m_min": 1}), ("lff", {}), ("disent", {"swap_start": 0.0, "d": 4})]


@pytest.mark.parametrize(("name", "params"), STATEFUL, ids=[n for n, _ in STATEFUL])
def test_an_accumulated_step_commits_what_the_whole_batch_commits(name, params):
    b = whole_batch()
    one, one_module, one_opt = make(name, **params)
    acc, acc_module, acc_opt = make(name, **params)
    # two steps for the batch-sum methods (the second starts from committed state and equal weights); one for
    # LfF/DisEnt, whose micro-batch W (committed tables + its own rows) differs from the big batch's, so their
    # weights, and a second step's losses, differ slightly
    tables = name in ("lff", "disent")
    for _ in range(1 if tables else 2):
        assert train_step(one_module, one, [b], one_opt, CPU).skipped is None
        result = train_step(acc_module, acc, split(b), acc_opt, CPU)
        assert result.skipped is None and len(result.outputs) == 2
    want, got = one.state_dict(), acc.state_dict()
    if tables:  # the EMA tables: the same rows, the same step
        assert got["ema"]["biased"]["index"] == want["ema"]["biased"]["index"] and len(want["ema"]["biased"]["index"]) == 16
        for table in ("biased", "debiased"):
            np.testing.assert_allclose(got["ema"][table]["value"], want["ema"][table]["value"], rtol=1e-6)
        if name == "disent":
            train_step(acc_module, acc, split(b), acc_opt, CPU)
            assert acc.step == 2  # optimiser steps, not micro-batches
        return
    key = "q" if "q" in want else "cell_ema"
    if key == "q":
        np.testing.assert_allclose(got["q"], want["q"], rtol=1e-5)
        assert got["q"] != [0.5, 0.5]
    else:
        np.testing.assert_allclose(got["cell_ema"]["value"], want["cell_ema"]["value"], rtol=1e-5)
        assert got["cell_ema"]["seen"] == want["cell_ema"]["seen"]
    for p, q in zip(one_module.parameters(), acc_module.parameters(), strict=True):  # ... and the same gradient
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("name", "params"), STATEFUL, ids=[n for n, _ in STATEFUL])
def test_a_skipped_step_leaves_the_method_state_untouched(name, params):
    method, module, opt = make(name, **params)
    assert train_step(module, method, [whole_batch(seed=1)], opt, CPU).skipped is None
    before = copy.deepcopy(method.state_dict())
    bad = dataclasses.replace(whole_batch(seed=2), x=torch.full((16, N_FEATURES), float("nan")), inputs={})
    assert train_step(module, method, [bad], opt, CPU, fail_on_nan=False).skipped is not None
    assert method.state_dict() == before


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                                  reason="needs a CUDA device")])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", METHODS.names())
def test_state_follows_the_model_to_its_device(name, device):
    """After ``method.to(device)`` every hook runs on that device's tensors, and the state stays JSON-ready."""
    import json

    from fairray.methods import DevEval

    extra = {"d": 4, "swap_start": 0.0} if name == "disent" else {"cell_ema": 0.5} if name == "minmaxgap" else {}
    method, module, opt = make(name, **extra)
    method.to(device)
    module.to(device)
    b = whole_batch().to(device)
    for _ in range(2):
        result = train_step(module, method, split(b), opt, Precision("fp32", torch.device(device)))
        assert result.skipped is None
    net = method.inference_model(module)
    with torch.no_grad():
        logs = method.on_epoch_end(DevEval(net(b.x), b.labels_only()))
        if method.round_steps:
            method.on_round(DevEval(net(b.x), b.labels_only()))
    state = method.state_dict()
    json.dumps(state)
    fresh, _, _ = make(name, **extra)
    fresh.to(device)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state and all(isinstance(v, float) for v in logs.values())
