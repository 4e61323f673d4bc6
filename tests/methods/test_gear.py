"""GEAR (METHODS 3.11): the formulas pinned at known values, the swap, the stop-gradients and the switches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fairray.inputs import InputSpec
from fairray.methods import METHODS, Batch, DevEval, TrainContext, gce, gmae, gmae_weight, ipw_weights
from fairray.methods.lff import cross_entropy
from fairray.models import MODELS, build_model

CG = np.array([[6, 4], [5, 5], [3, 7]])
CTX = TrainContext(classes=("a", "b", "c"), class_counts=CG.sum(axis=1), attr_values=("F", "M"),
                   strata_values=("en",), n_train=30, group_values=("F", "M"), group_counts=CG.sum(axis=0),
                   class_group_counts=CG, group_soft_counts=CG.sum(axis=0).astype(float), n_rows=30, epochs=4)
D_IN = 5


def batch(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.arange(n) % 2
    return Batch(x=torch.randn(n, D_IN, generator=g), y=torch.randint(0, 3, (n,), generator=g), attr=a,
                 stratum=torch.zeros(n, dtype=torch.long), index=torch.arange(n), group=a,
                 group_prob=torch.nn.functional.one_hot(a, 2).float())


def make(**params):
    cls = METHODS.get("gear")
    torch.manual_seed(0)
    method = cls(cls.Params(**{"d": 8, "heads": 2, "hidden": 8, **params}), CTX)
    mlp = MODELS.get("mlp").Params(hidden=6, depth=1, dropout=0.0)
    return method, method.build_model(lambda n: build_model("mlp", mlp, D_IN, n))


# -- pure functions -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("e", "q", "want"), [(1.0, 0.7, math.tanh(1.0)), (0.5, 0.7, math.tanh(0.5 ** -0.7)),
                                              (2.0, 1.0, math.tanh(0.5)), (4.0, 0.5, math.tanh(0.5))])
def test_gmae_tanh_weight_at_known_errors(e, q, want):
    assert float(gmae_weight(torch.tensor([e]), q, "tanh")) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize(("e", "want"), [(0.0, 1.0), (1.0, 2 / (1 + math.e)), (3.0, 2 / (1 + math.e ** 3))])
def test_gmae_sigmoid_weight_at_known_errors(e, want):
    assert float(gmae_weight(torch.tensor([e]), 0.7, "sigmoid")) == pytest.approx(want, rel=1e-6)


def test_gmae_weights_keep_easy_samples_and_damp_hard_ones_with_a_detached_weight():
    e = torch.tensor([1e-4, 0.1, 1.0, 10.0])
    for kind in ("tanh", "sigmoid"):
        w = gmae_weight(e, 0.7, kind)
        assert float(w[0]) == pytest.approx(1.0, abs=1e-3) and bool((w[1:] < w[:-1]).all())
    pred = torch.tensor([0.5, 3.0], requires_grad=True)
    y = torch.tensor([0.0, 0.0])
    gmae(pred, y, 0.7).sum().backward()  # d/dpred sg(w(e))·e = w(e)·sign(pred − y)
    torch.testing.assert_close(pred.grad, gmae_weight(torch.tensor([0.5, 3.0]), 0.7))
    with pytest.raises(ValueError, match="tanh' or 'sigmoid'"):
        gmae_weight(e, 0.7, "relu")


def test_gce_limits_q_to_zero_is_ce_and_q_one_is_one_minus_p():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.2, 0.3]], dtype=torch.float64)  # (1 − p^q)/q cancels in fp32
    y = torch.tensor([0, 2])
    p_y = torch.softmax(logits, dim=1)[torch.arange(2), y]
    ce = cross_entropy(logits, y)
    gaps = [float((gce(logits, y, q) - ce).abs().max()) for q in (0.1, 0.01, 0.001)]
    assert gaps[0] > gaps[1] > gaps[2]  # GCE_q = CE − q·CE²/2 + O(q²)
    torch.testing.assert_close(gce(logits, y, 1e-7), ce, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(gce(logits, y, 1.0), 1.0 - p_y)


def test_ipw_weights_on_a_constructed_batch():
    b_text, b_audio, r = torch.tensor([1.0, 3.0, 0.0]), torch.tensor([2.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 2.0])
    torch.testing.assert_close(ipw_weights([b_text, b_audio], r, "min"), torch.tensor([0.5, 0.5, 0.0]))
    torch.testing.assert_close(ipw_weights([b_text, b_audio], r, "avg"), torch.tensor([1.5 / 2.5, 2 / 3, 0.0]))
    # both losses 0: the 1e-8 keeps W finite
    assert float(ipw_weights([torch.zeros(1)], torch.zeros(1))) == 0.0


def test_the_method_weights_come_from_detached_ce_losses():
    method, module = make(weight="avg")
    b = batch()
    out = module(b.inputs)
    w = method.weights(out, b.y)
    bias = (cross_entropy(out.biased["features"], b.y))
    r = cross_entropy(out.logits, b.y)
    torch.testing.assert_close(w, (bias / (bias + r + 1e-8)).detach())
    assert not w.requires_grad


# -- swap ---------------------------------------------------------------------------------------------------

def test_swap_permutes_biased_features_and_their_labels():
    method, module = make(swap_epochs=0)
    b = batch()
    out = module(b.inputs)
    perm = out.perm
    assert sorted(perm.tolist()) == list(range(len(b))) and perm.tolist() != list(range(len(b)))
    h_r, h_b = module.encode(b.inputs)
    want = module.bias_head["features"](torch.cat([h_r["features"], h_b["features"][perm]], dim=1))
    torch.testing.assert_close(out.biased_swap["features"], want)
    # the loss: the swapped biased head is trained on y[π], the swapped robust prediction on y
    p = method.params
    w = method.weights(out, b.y)
    expected = ((w * method.base(out.logits, b.y)).mean() + p.lambda_dis * gce(out.biased["features"], b.y, p.q).mean()
                + p.lambda_swap * ((w * method.base(out.logits_swap, b.y)).mean()
                                   + p.lambda_dis * gce(out.biased_swap["features"], b.y[perm], p.q).mean()))
    torch.testing.assert_close(method.loss(out, b).loss, expected)


def test_swap_starts_after_swap_epochs_and_the_epoch_count_is_the_state():
    method, module = make(swap_epochs=2)
    b = batch()
    dev = DevEval(torch.zeros(len(b), 3), b.labels_only())
    seen, drawn = [], []
    for _ in range(3):
        out = module(b.inputs)  # epochs before swap_epochs compute no swapped outputs
        seen.append(method.loss(out, b).logs["swapping"])
        drawn.append(out.perm is not None)
        method.on_epoch_end(dev)
    assert seen == [0.0, 0.0, 1.0] and drawn == [False, False, True]
    assert "l_swap" in method.loss(module(b.inputs), b).logs
    fresh, fresh_module = make(swap_epochs=2)
    assert fresh_module(b.inputs).perm is None
    fresh.load_state_dict(method.state_dict())  # a resumed trial swaps again
    assert fresh.swapping and fresh.state_dict() == {"epoch": 3} and fresh_module(b.inputs).perm is not None


def test_no_permutation_in_evaluation_with_swap_off_and_identity_for_one_row():
    method, module = make(swap_epochs=0)
    assert module.eval()(batch().inputs).perm is None
    _, off = make(swap=False)
    assert off.train()(batch().inputs).perm is None
    assert module.train()(batch(n=1).inputs).perm.tolist() == [0]


# -- stop-gradients -----------------------------------------------------------------------------------------

def _grads(loss, params):
    return [g for g in torch.autograd.grad(loss, list(params), allow_unused=True, retain_graph=True)]


def _zero(grads):
    return all(g is None or float(g.abs().sum()) == 0.0 for g in grads)


@pytest.mark.parametrize("branches", [False, True])
def test_biased_heads_give_the_robust_encoder_no_gradient_and_vice_versa(branches):
    method, module = make(swap_epochs=0, fusion_branches=branches)
    b = batch()
    out = module(b.inputs)
    robust_enc, biased_enc = module.robust_enc.parameters(), module.biased_enc.parameters()
    per_modality = out.biased["features"].sum() + out.biased_swap["features"].sum()
    assert _zero(_grads(per_modality, robust_enc))
    assert not _zero(_grads(per_modality, module.biased_enc.parameters()))
    robust = out.logits.sum() + out.logits_swap.sum()
    assert _zero(_grads(robust, biased_enc))
    assert not _zero(_grads(robust, module.robust_enc.parameters()))
    if branches:  # IFL_LS: the fusion's robust head gets nothing from its biased branch, and vice versa
        fused_b = out.biased["fusion"].sum() + out.biased_swap["fusion"].sum()
        assert _zero(_grads(fused_b, [*module.fusion.head.parameters(), *module.fusion.trunk.parameters()]))
        assert _zero(_grads(out.logits.sum(), [*module.fusion.head_b.parameters(), *module.fusion.trunk_b.parameters()]))
        assert not _zero(_grads(fused_b, module.fusion.trunk_b.parameters()))


# -- switches and modalities --------------------------------------------------------------------------------

def test_ablation_switches():
    b = batch()
    method, module = make(ipw=False)
    out = module(b.inputs)
    assert method.loss(out, b).logs["weight_mean"] == 1.0
    method, module = make(gce=False, lambda_dis=2.0)
    out = module(b.inputs)
    want = 2.0 * cross_entropy(out.biased["features"], b.y).mean().detach()
    assert method.loss(out, b).logs["l_bias"] == pytest.approx(float(want), rel=1e-6)


def test_every_fusion_encoder_is_a_modality_with_its_own_robust_and_biased_encoder():
    from fairray.models.fusion import Encoder

    mlp = MODELS.get("mlp").Params
    fusion = MODELS.get("fusion").Params(encoders={"audio": Encoder("mlp", mlp(hidden=4, depth=1, input="a")),
                                                   "text": Encoder("mlp", mlp(hidden=6, depth=1, input="t"))},
                                         mode="late")
    specs = {"a": InputSpec("a", "vector", dim=3), "t": InputSpec("t", "vector", dim=7)}
    cls = METHODS.get("gear")
    method = cls(cls.Params(d=8, heads=2, hidden=8, fusion_branches=True, weight="min"), CTX)
    module = method.build_model(lambda n: build_model("fusion", fusion, specs, n))
    assert module.modalities == ("audio", "text")
    assert module.robust_enc["audio"] is not module.biased_enc["audio"]
    g = torch.Generator().manual_seed(1)
    b = Batch(y=torch.tensor([0, 1, 2, 1]), attr=torch.tensor([0, 1, 0, 1]), stratum=torch.zeros(4, dtype=torch.long),
              index=torch.arange(4), group=torch.tensor([0, 1, 0, 1]), group_prob=torch.eye(2)[[0, 1, 0, 1]],
              inputs={"a": torch.randn(4, 3, generator=g), "t": torch.randn(4, 7, generator=g)})
    out = module(b.inputs)
    assert set(out.biased) == {"audio", "text", "fusion"}
    w = method.weights(out, b.y)
    losses = [cross_entropy(z, b.y) for z in out.biased.values()]
    r = cross_entropy(out.logits, b.y)
    b_min = torch.stack(losses).min(dim=0).values
    torch.testing.assert_close(w, (b_min / (b_min + r + 1e-8)).detach())
    method.loss(out, b).loss.backward()
    assert method.inference_model(module)(b.inputs).shape == (4, 3)


def test_heads_must_divide_d():
    with pytest.raises(ValueError, match=r"heads \(3\) must divide d \(8\)"):
        METHODS.get("gear").Params(d=8, heads=3)
