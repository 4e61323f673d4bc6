"""RW, DS, GDRO, GADRO, PGDRO (METHODS §3.4–3.7, §3.10): hand-computed cases and real short trainings."""

from __future__ import annotations

import math
import tempfile

import numpy as np
import pytest
import torch

from fairray.methods import (
    METHODS,
    Batch,
    SamplerInput,
    TrainContext,
    downsample,
    group_means,
    reweighting_table,
)
from fairray.methods._groups import q_step, soft_group_means

CG = np.array([[20, 10], [12, 8], [2, 8], [5, 0]])


def ctx():
    return TrainContext(classes=("a", "b", "c", "d"), class_counts=CG.sum(axis=1), attr_values=("F", "M"),
                        strata_values=("x",), n_train=int(CG.sum()), group_values=("F", "M"),
                        group_counts=CG.sum(axis=0), class_group_counts=CG, group_soft_counts=CG.sum(axis=0) * 1.0,
                        n_rows=int(CG.sum()), epochs=1)


def test_rw_idi_weights_hand_computed():
    w = reweighting_table(CG, "idi")
    assert w[0].tolist() == pytest.approx([30 / (2 * 20), 30 / (2 * 10)])  # 0.75, 1.5
    assert w[3].tolist() == [1.0, 0.0]  # one non-empty group: weight 1; the empty cell gets nothing
    assert (w * CG).sum(axis=1) == pytest.approx(CG.sum(axis=1))  # Σ_{i in c} w_i = N_c
    assert (w * CG).sum() / CG.sum() == pytest.approx(1.0)


def test_rw_kc_weights_hand_computed_and_clip():
    w = reweighting_table(CG, "kc")
    assert w[0, 0] == pytest.approx(39 * 30 / (65 * 20)) and w[0, 1] == pytest.approx(26 * 30 / (65 * 10))
    assert reweighting_table(CG, "idi", w_max=1.0).max() == 1.0


def test_rw_loss_weights_each_sample_by_its_cell():
    method = METHODS.get("rw")(METHODS.get("rw").Params(), ctx())
    logits = torch.randn(4, 4)
    y, g = torch.tensor([0, 0, 2, 1]), torch.tensor([0, 1, 0, -1])
    b = Batch(torch.zeros(4, 1), y, g, torch.zeros(4, dtype=torch.long), torch.arange(4), g, torch.ones(4, 2) / 2)
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    w = torch.tensor([0.75, 1.5, 10 / (2 * 2), 1.0])  # unknown group -> weight 1
    assert method.loss(logits, b).loss.item() == pytest.approx((w * ce).mean().item(), rel=1e-6)


def test_q_step_hand_computed_and_absent_groups_keep_their_weight():
    q = q_step(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 2.0]), torch.tensor([True, True]), eta=1.0)
    e = math.e
    assert q.tolist() == pytest.approx([e / (e + e**2), e**2 / (e + e**2)])
    q = q_step(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]), torch.tensor([True, False]), eta=1.0)
    assert q.tolist() == pytest.approx([e / (e + 1), 1 / (e + 1)])


def test_gdro_eg_and_hard_max():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    b = Batch(torch.zeros(6, 1), y, g, torch.zeros(6, dtype=torch.long), torch.arange(6), g, torch.ones(6, 2) / 2)
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    means, _ = group_means(ce, g, 2)
    cls = METHODS.get("gdro")
    eg = cls(cls.Params(eta_q=0.5), ctx())
    out = eg.loss(logits, b)
    q = torch.softmax(0.5 * means, 0)
    assert out.loss.item() == pytest.approx((q * means).sum().item(), rel=1e-6)
    assert eg.state_dict()["q"] == pytest.approx(q.tolist())
    hard = cls(cls.Params(solver="hard_max"), ctx())
    assert hard.loss(logits, b).loss.item() == pytest.approx(means.max().item())


def test_gadro_adjusts_by_group_size():
    cls = METHODS.get("gadro")
    m = cls(cls.Params(C=4.0), ctx())
    assert m.adjust.tolist() == pytest.approx([4 / math.sqrt(39), 4 / math.sqrt(26)])


def test_pgdro_soft_group_means_hand_computed():
    means, mass = soft_group_means(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([[1, 0], [0.5, 0.5], [0, 1.0]]))
    assert means.tolist() == pytest.approx([2 / 1.5, 4 / 1.5]) and mass.tolist() == [1.5, 1.5]


def test_pgdro_temperature_sharpens_memberships():
    cls = METHODS.get("pgdro")
    m = cls(cls.Params(temperature=0.5), ctx())
    b = Batch(torch.zeros(1, 1), torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), torch.tensor([0]),
              torch.tensor([0]), torch.tensor([[0.75, 0.25]]))
    assert m._memberships(b).tolist()[0] == pytest.approx([0.9, 0.1])  # 0.75² / (0.75² + 0.25²)


def test_downsample_balances_every_class_to_its_smallest_group():
    y = np.repeat([0, 0, 1, 1, 2], [20, 10, 12, 8, 5])
    g = np.repeat([0, 1, 0, 1, 0], [20, 10, 12, 8, 5])
    g[:2] = -1  # unknown groups never enter the subset
    inp = SamplerInput(np.arange(len(y)), y, g, np.zeros(len(y), dtype=int), g)
    subset = downsample(inp, 3, 2, np.random.default_rng(0))
    counts = {(c, k): int(((y[subset] == c) & (g[subset] == k)).sum()) for c in range(3) for k in range(2)}
    assert counts == {(0, 0): 10, (0, 1): 10, (1, 0): 8, (1, 1): 8, (2, 0): 5, (2, 1): 0}
    assert len(set(subset.tolist())) == len(subset)


@pytest.mark.parametrize("name", ["rw", "ds", "gdro", "gadro", "pgdro"])
def test_trains_on_the_builtin_data(name):
    from fairray.config import build_spec
    from fairray.data import prepare
    from fairray.train import LocalSession, run_trial

    raw = {"name": "g", "method": {"name": name}, "model": {"hidden": 16}, "train": {"epochs": 6},
           "search": {"objectives": [{"metric": "dev/macro_f1", "direction": "max"}]}}
    data = prepare(build_spec(raw, "g").dataset)
    with tempfile.TemporaryDirectory() as d:
        final = run_trial(raw, {}, data, LocalSession(d))
    assert 0.3 < final["test/macro_f1"] < 1.0 and math.isfinite(final["test/tpr_gap/gender"])  # chance is 0.2
