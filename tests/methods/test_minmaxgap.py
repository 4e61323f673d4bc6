"""ERM-MinMaxGAP (METHODS 3.2): the batch penalty, the dual update and the fixed-λ ablation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fairray.methods import Batch, DevEval, MinMaxGap, MinMaxGapParams, TrainContext, dual_step, worst_stratum_gap


def ctx(n_strata=2, classes=("a", "b", "c")):
    cg = np.array([[5, 5], [5, 5], [5, 5]])
    return TrainContext(classes=classes, class_counts=cg.sum(axis=1), attr_values=("F", "M"),
                        strata_values=tuple("xyz"[:n_strata]), n_train=30, group_values=("F", "M"),
                        group_counts=cg.sum(axis=0), class_group_counts=cg, group_soft_counts=cg.sum(axis=0) * 1.0,
                        n_rows=30, epochs=1)


def batch(y, attr, stratum):
    n = len(y)
    a = torch.tensor(attr)
    return Batch(x=torch.zeros(n, 1), y=torch.tensor(y), attr=a, stratum=torch.tensor(stratum),
                 index=torch.arange(n), group=a, group_prob=F.one_hot(a.clamp(min=0), 2).float())


def test_worst_stratum_gap_hand_computed():
    values = torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0, 1.0])
    attr = torch.tensor([0, 0, 1, 1, 0, 1])
    stratum = torch.tensor([0, 0, 0, 0, 1, 1])
    worst, per = worst_stratum_gap(values, attr, stratum, n_attr=2, n_strata=2, m_min=1)
    # stratum 0: F (1+3)/2 = 2, M (2+2)/2 = 2 -> 0; stratum 1: F 5, M 1 -> 4
    assert float(worst) == pytest.approx(4.0)
    assert per.tolist() == pytest.approx([0.0, 4.0])
    # m_min = 2: stratum 1 has one sample per gender -> not valid, so only stratum 0 counts
    worst2, per2 = worst_stratum_gap(values, attr, stratum, n_attr=2, n_strata=2, m_min=2)
    assert float(worst2) == 0.0
    assert math.isnan(per2[1])


def test_stratum_missing_a_gender_is_skipped_not_zero():
    values = torch.tensor([9.0, 1.0, 1.0, 2.0])
    attr = torch.tensor([0, 0, 0, 1])  # stratum 0 only has F (would be a gap of 9 - 0 if treated as zero cell)
    stratum = torch.tensor([0, 0, 1, 1])
    worst, per = worst_stratum_gap(values, attr, stratum, n_attr=2, n_strata=2, m_min=1)
    assert float(worst) == pytest.approx(1.0)
    assert math.isnan(per[0])


def test_no_valid_stratum_gives_zero_penalty():
    values = torch.tensor([1.0, 2.0], requires_grad=True)
    worst, _ = worst_stratum_gap(values, torch.tensor([0, 0]), torch.tensor([0, 1]), 2, 2, 1)
    assert worst.item() == 0.0
    worst.backward()
    assert torch.all(values.grad == 0)


def test_unknown_group_ids_are_ignored():
    values = torch.tensor([100.0, 1.0, 3.0])
    worst, _ = worst_stratum_gap(values, torch.tensor([-1, 0, 1]), torch.tensor([0, 0, 0]), 2, 1, 1)
    assert float(worst) == pytest.approx(2.0)


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_loss_matches_a_direct_computation(p):
    torch.manual_seed(0)
    y = [0, 1, 2, 0, 1, 2, 0, 1]
    attr = [0, 0, 1, 1, 0, 0, 1, 1]
    stratum = [0, 0, 0, 0, 1, 1, 1, 1]
    logits = torch.randn(8, 3, requires_grad=True)
    params = MinMaxGapParams(p=p, lambda0=0.7, m_min=2)
    out = MinMaxGap(params, ctx()).loss(logits, batch(y, attr, stratum))
    ce = F.cross_entropy(logits, torch.tensor(y), reduction="none").detach().numpy()
    gaps = []
    for s in (0, 1):
        f = [ce[i] for i in range(8) if stratum[i] == s and attr[i] == 0]
        m = [ce[i] for i in range(8) if stratum[i] == s and attr[i] == 1]
        gaps.append(abs(np.mean(f) - np.mean(m)))
    expected = ce.mean() + 0.7 * max(gaps) ** p
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.logs["gap_batch"] == pytest.approx(max(gaps), rel=1e-5)


def test_penalty_gradient_reaches_only_the_worst_stratum():
    y = [0, 0, 0, 0, 0, 0, 0, 0]
    attr = [0, 0, 1, 1, 0, 0, 1, 1]
    stratum = [0, 0, 0, 0, 1, 1, 1, 1]
    logits = torch.zeros(8, 3)
    logits[4:6, 0] = 3.0  # stratum 1, F: low loss -> stratum 1 has the larger gap
    logits.requires_grad_(True)
    method = MinMaxGap(MinMaxGapParams(lambda0=1.0, m_min=2), ctx())
    b = batch(y, attr, stratum)
    losses = method.per_sample_loss(logits, b)
    gap, _ = worst_stratum_gap(losses, b.attr, b.stratum, n_attr=2, n_strata=2, m_min=2)
    gap.backward()
    grad = logits.grad.abs().sum(dim=1)
    assert torch.all(grad[:4] == 0)
    assert torch.all(grad[4:] > 0)


def test_dual_step_hand_cases():
    assert dual_step(0.5, 0.3, eta=2.0, eps=0.1, lambda_max=10) == pytest.approx(0.9)
    assert dual_step(9.9, 1.0, eta=2.0, eps=0.0, lambda_max=10) == 10.0  # projected onto λ_max
    assert dual_step(0.1, 0.0, eta=2.0, eps=0.1, lambda_max=10) == 0.0  # projected onto 0
    assert dual_step(1.0, 0.02, eta=5.0, eps=0.02, lambda_max=10) == 1.0  # at ε: unchanged


def _dev(method):
    y = [0, 1, 0, 1]
    b = batch(y, [0, 1, 0, 1], [0, 0, 1, 1])
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    ce = F.cross_entropy(logits, torch.tensor(y), reduction="none")
    expected_gap = max(abs(float(ce[0] - ce[1])), abs(float(ce[2] - ce[3])))
    return DevEval(logits, b), expected_gap


def test_adaptive_lambda_follows_projected_dual_ascent():
    params = MinMaxGapParams(lambda0=0.5, eta=2.0, eps=0.02, lambda_max=10.0)
    method = MinMaxGap(params, ctx())
    dev, gap = _dev(method)
    lam = 0.5
    for _ in range(3):
        logs = method.on_epoch_end(dev)
        assert logs["lambda"] == pytest.approx(lam)
        assert logs["delta_dev"] == pytest.approx(gap, rel=1e-6)
        lam = dual_step(lam, gap, eta=2.0, eps=0.02, lambda_max=10.0)
        assert method.lam == pytest.approx(lam)
    assert [h["lambda"] for h in method.state_dict()["history"]][1:] == pytest.approx(
        [h["lambda_next"] for h in method.state_dict()["history"]][:-1])


def test_fixed_lambda_ablation_keeps_lambda0():
    method = MinMaxGap(MinMaxGapParams(lambda0=0.3, adaptive=False), ctx())
    dev, _ = _dev(method)
    for _ in range(3):
        method.on_epoch_end(dev)
    assert method.lam == 0.3


def test_lambda0_above_lambda_max_is_rejected():
    with pytest.raises(ValueError, match="lambda0"):
        MinMaxGapParams(lambda0=5.0, lambda_max=1.0)


def test_state_round_trip():
    m1 = MinMaxGap(MinMaxGapParams(), ctx())
    dev, _ = _dev(m1)
    m1.on_epoch_end(dev)
    m2 = MinMaxGap(MinMaxGapParams(), ctx())
    m2.load_state_dict(m1.state_dict())
    assert m2.lam == m1.lam and m2.history == m1.history
    assert dataclasses.asdict(MinMaxGapParams()) == dataclasses.asdict(m1.params)


# --- METHODS 3.2 options: eps relative to a reference gap, step rounds on a dev subset, cell EMA -----------------

def test_eps_relative_to_a_reference_gap():
    """METHODS 3.2's "0.5 x ERM dev gap": eps 0.5 of eps_ref (the ERM dev gap); without eps_ref eps is absolute."""
    method = MinMaxGap(MinMaxGapParams(lambda0=0.5, eta=2.0, eps=0.5, eps_ref=0.2), ctx())
    assert method.eps == pytest.approx(0.1) and MinMaxGap(MinMaxGapParams(eps=0.5), ctx()).eps == 0.5
    dev, gap = _dev(method)
    method.on_epoch_end(dev)
    assert method.lam == pytest.approx(dual_step(0.5, gap, eta=2.0, eps=0.1, lambda_max=10.0))


def test_lambda_rounds_every_n_steps_on_a_fixed_stratified_dev_subset():
    from fairray.methods import SamplerInput

    assert MinMaxGap(MinMaxGapParams(), ctx()).round_steps is None  # default: one round per epoch
    method = MinMaxGap(MinMaxGapParams(lambda0=0.5, eta=2.0, eps=0.02, lambda_update_every=25, lambda_dev_per_cell=2),
                       ctx())
    assert method.round_steps == 25
    # dev rows 10..21: stratum 0 F x4, M x1; stratum 1 F x3, M x2; two rows of unknown gender
    attr = np.full(30, -1)
    stratum = np.zeros(30, dtype=int)
    attr[10:22] = [0, 0, 0, 0, 1, 0, 0, 0, 1, 1, -1, -1]
    stratum[10:22] = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0]
    dev = SamplerInput(np.arange(10, 22), np.zeros(30, dtype=int), attr, stratum, attr)
    rows = method.round_rows(dev, np.random.default_rng(0))
    cells = sorted((int(stratum[r]), int(attr[r])) for r in rows)
    assert cells == [(0, 0), (0, 0), (0, 1), (1, 0), (1, 0), (1, 1), (1, 1)]  # 2 per cell, all of a smaller one
    assert len(set(rows.tolist())) == len(rows)
    # a round takes the dual step; the epoch then only reports the whole dev split
    dev_eval, gap = _dev(method)
    logs = method.on_round(dev_eval)
    lam = dual_step(0.5, gap, eta=2.0, eps=0.02, lambda_max=10.0)
    assert logs == pytest.approx({"round/lambda": 0.5, "round/delta_dev": gap}) and method.lam == pytest.approx(lam)
    epoch_logs = method.on_epoch_end(dev_eval)
    assert method.lam == pytest.approx(lam) and epoch_logs["lambda"] == pytest.approx(lam)
    assert epoch_logs["delta_dev"] == pytest.approx(gap, rel=1e-6) and len(method.history) == 1
    with pytest.raises(ValueError, match="lambda_dev_per_cell"):
        MinMaxGapParams(lambda_dev_per_cell=4)


def _cells_batch(f0, f1):
    """Stratum 0 then 1, each F, F, M, M; per-sample losses f0 (F of stratum 0) and f1 (F of stratum 1), M = 0."""
    losses = torch.tensor([f0, f0, 0.0, 0.0, f1, f1, 0.0, 0.0], requires_grad=True)
    return losses, batch([0] * 8, [0, 0, 1, 1, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1])


def _with_losses(method):
    """``per_sample_loss`` = the first logit column, so a test sets each sample's loss directly."""
    method.per_sample_loss = lambda logits, b: logits[:, 0]
    return method


def test_cell_ema_chooses_the_language_from_the_ema_and_the_gradient_from_the_batch():
    method = _with_losses(MinMaxGap(MinMaxGapParams(lambda0=1.0, p=2.0, m_min=2, cell_ema=0.5), ctx()))
    losses, b = _cells_batch(2.0, 1.0)  # first batch: gaps (2, 1); the EMA starts at the cell means
    out = method.loss(losses[:, None], b)
    assert method.ema_seen.sum() == 0  # loss() keeps nothing ...
    method.on_step([out])  # ... the EMA is committed after the optimiser step
    assert method.ema_value.tolist() == [[2.0, 0.0], [1.0, 0.0]]
    losses, b = _cells_batch(0.5, 1.2)  # the batch's worst stratum is 1 (1.2), the EMA's is 0 (1.25 vs 1.1)
    out = method.loss(losses[:, None], b)
    assert out.logs == pytest.approx({"gap_batch": 1.2, "gap_penalised": 0.5, "penalty": 0.25})
    assert out.loss.item() == pytest.approx((2 * 0.5 + 2 * 1.2) / 8 + 1.0 * 0.5**2)
    out.loss.backward()
    # R = Δ_0², dR/dL_{0,F} = 2 Δ_0 = 1 and L_{0,F} is the mean of two samples; stratum 1 only gets the mean's 1/8
    assert losses.grad.tolist() == pytest.approx([0.625, 0.625, -0.375, -0.375] + [0.125] * 4)
    method.on_step([out])
    torch.testing.assert_close(method.ema_value, torch.tensor([[1.25, 0.0], [1.1, 0.0]]))
    fresh = MinMaxGap(MinMaxGapParams(cell_ema=0.5), ctx())
    fresh.load_state_dict(method.state_dict())
    assert fresh.state_dict() == method.state_dict()
    # without cell_ema the same batch penalises its own worst stratum
    plain = _with_losses(MinMaxGap(MinMaxGapParams(lambda0=1.0, p=2.0, m_min=2), ctx()))
    assert plain.loss(losses[:, None].detach(), b).logs == pytest.approx({"gap_batch": 1.2, "penalty": 1.44})


def test_step_rounds_in_a_real_trial(tmp_path):
    """lambda_update_every through the loop: one λ round per 5 optimiser steps on the fixed dev subset, logged
    as epoch means; the epoch reports λ and the whole dev split's gap without a λ step of its own."""
    from fairray.config import build_spec
    from fairray.data import prepare
    from fairray.train import LocalSession, run_trial
    from fairray.train.checkpoint import read_trainer_state

    raw = {"name": "r", "model": {"name": "mlp", "hidden": 16}, "train": {"epochs": 2},
           "method": {"name": "minmaxgap", "lambda_update_every": 5, "lambda_dev_per_cell": 8},
           "search": {"objectives": [{"metric": "dev/weighted_f1", "direction": "max"}]}}
    data = prepare(build_spec(raw, "r").dataset)
    seen = []
    run_trial(raw, {}, data, LocalSession(tmp_path), on_epoch=seen.append)
    state = read_trainer_state(tmp_path / "checkpoint")
    rounds = state["method"]["history"]
    assert len(rounds) == state["step"] // 5 > 0
    assert [r["lambda"] for r in rounds[1:]] == [r["lambda_next"] for r in rounds[:-1]]
    for m in seen:
        assert {"method/round/lambda", "method/round/delta_dev", "method/lambda", "method/delta_dev"} <= set(m)
        assert m["method/lambda"] == m["method/lambda_next"]  # the epoch moves no λ
    assert seen[-1]["method/lambda"] == pytest.approx(rounds[-1]["lambda_next"])
