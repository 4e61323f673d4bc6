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
    method = METHODS.get("rw")(METHODS.get("rw").Params(loss="ce"), ctx())
    logits = torch.randn(4, 4)
    y, g = torch.tensor([0, 0, 2, 1]), torch.tensor([0, 1, 0, -1])
    b = Batch(x=torch.zeros(4, 1), y=y, attr=g, stratum=torch.zeros(4, dtype=torch.long), index=torch.arange(4), group=g,
              group_prob=torch.ones(4, 2) / 2)
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
    b = Batch(x=torch.zeros(6, 1), y=y, attr=g, stratum=torch.zeros(6, dtype=torch.long), index=torch.arange(6), group=g,
              group_prob=torch.ones(6, 2) / 2)
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    means, _ = group_means(ce, g, 2)
    cls = METHODS.get("gdro")
    eg = cls(cls.Params(eta_q=0.5, loss="ce"), ctx())
    out = eg.loss(logits, b)
    q = torch.softmax(0.5 * means, 0)
    assert out.loss.item() == pytest.approx((q * means).sum().item(), rel=1e-6)
    assert out.logs == pytest.approx({"q/F": float(q[0]), "q/M": float(q[1])})
    assert eg.state_dict()["q"] == [0.5, 0.5]  # loss() keeps nothing: the new q is the update ...
    eg.on_step([out])
    assert eg.state_dict()["q"] == pytest.approx(q.tolist())  # ... committed after the optimiser step
    hard = cls(cls.Params(solver="hard_max", loss="ce"), ctx())
    out = hard.loss(logits, b)
    assert out.loss.item() == pytest.approx(means.max().item())
    worst = int(means.argmax())  # hard_max logs q as the one-hot of the worst group (η_q → ∞)
    assert out.logs == {"q/F": float(worst == 0), "q/M": float(worst == 1)} and out.update is None


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
    b = Batch(x=torch.zeros(1, 1), y=torch.tensor([0]), attr=torch.tensor([0]), stratum=torch.tensor([0]),
              index=torch.tensor([0]), group=torch.tensor([0]), group_prob=torch.tensor([[0.75, 0.25]]))
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

    # CE as before the defaults followed METHODS (cb_ce): a 6-epoch DS run on cb_ce lands at chance level + 0.1
    raw = {"name": "g", "method": {"name": name, "loss": "ce"}, "model": {"hidden": 16}, "train": {"epochs": 6},
           "search": {"objectives": [{"metric": "dev/macro_f1", "direction": "max"}]}}
    data = prepare(build_spec(raw, "g").dataset)
    with tempfile.TemporaryDirectory() as d:
        final = run_trial(raw, {}, data, LocalSession(d))
    assert 0.3 < final["test/macro_f1"] < 1.0 and math.isfinite(final["test/tpr_gap/gender"])  # chance is 0.2


# --- the step contract: loss() computes, on_step commits (METHODS 3.0) ---------------------------------------

def _batch(y, g, prob=None, index=None):
    y, g = torch.tensor(y), torch.tensor(g)
    prob = torch.nn.functional.one_hot(g.clamp(min=0), 2).float() if prob is None else torch.tensor(prob)
    n = len(y)
    return Batch(x=torch.zeros(n, 1), y=y, attr=g, stratum=torch.zeros(n, dtype=torch.long),
                 index=torch.arange(n) if index is None else torch.tensor(index), group=g, group_prob=prob)


@pytest.mark.parametrize("name", ["gdro", "gadro", "pgdro"])
def test_q_loss_is_pure_and_on_step_commits_the_last_update(name):
    cls = METHODS.get(name)
    m = cls(cls.Params(eta_q=0.5), ctx())
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    b = _batch([0, 1, 2, 0, 1, 3], [0, 0, 0, 1, 1, 1])
    first, again = m.loss(logits, b), m.loss(logits, b)
    assert first.loss.item() == again.loss.item() and m.state_dict() == {"q": [0.5, 0.5]}
    assert sorted(first.logs) == ["q/F", "q/M"] and sum(first.logs.values()) == pytest.approx(1.0)
    m.on_step([again, first])  # micro-batches of one step see the same q; the last one's is kept
    assert m.state_dict()["q"] == pytest.approx(first.update.tolist())
    assert m.q.tolist() != [0.5, 0.5]


def test_pgdro_keeps_a_low_mass_group_in_the_loss_and_skips_only_its_q_step():
    """Group M has batch mass 0.2 < 0.5: L_M enters Σ_g q_g A_g, but q_M is not stepped (METHODS 3.10)."""
    cls = METHODS.get("pgdro")
    m = cls(cls.Params(eta_q=1.0, C=2.0, loss="ce"), ctx())
    logits = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.5, 0.0, 0.0, 1.5]], requires_grad=True)
    b = _batch([0, 0, 3], [0, 0, 0], prob=[[1.0, 0.0], [1.0, 0.0], [0.8, 0.2]])
    out = m.loss(logits, b)
    ce = torch.nn.functional.cross_entropy(logits, b.y, reduction="none").detach()
    a_f = (ce[0] + ce[1] + 0.8 * ce[2]) / 2.8 + 2 / math.sqrt(39)  # n_g = group_soft_counts = (39, 26)
    a_m = ce[2] + 2 / math.sqrt(26)
    q_f = 0.5 * math.exp(float(a_f)) / (0.5 * math.exp(float(a_f)) + 0.5)  # only F's weight moves
    assert out.update.tolist() == pytest.approx([q_f, 1 - q_f], rel=1e-6)
    assert out.loss.item() == pytest.approx(q_f * float(a_f) + (1 - q_f) * float(a_m), rel=1e-6)
    out.loss.backward()
    # sample 2 is all of M's loss: its gradient carries q_M (it would carry only 0.8 q_F / 2.8 without M)
    p2 = torch.softmax(logits[2].detach(), 0) - torch.nn.functional.one_hot(torch.tensor(3), 4)
    torch.testing.assert_close(logits.grad[2], (q_f * 0.8 / 2.8 + (1 - q_f)) * p2)


def test_pgdro_training_counts_follow_the_temperature():
    """n_g = Σ_train sharpened π (METHODS 3.10); with T = 1 it is the context's group_soft_counts."""
    import dataclasses

    from fairray.methods.dro import sharpened

    prob = np.array([[0.75, 0.25], [0.5, 0.5], [0.2, 0.8]])
    sharp = sharpened(prob, 0.5)
    np.testing.assert_allclose(sharp, [[0.9, 0.1], [0.5, 0.5], [0.04 / 0.68, 0.64 / 0.68]])

    c = dataclasses.replace(ctx(), train_group_prob=prob)  # the training rows' π
    cls = METHODS.get("pgdro")
    n_g = sharp.sum(axis=0)
    assert cls(cls.Params(C=2.0, temperature=0.5), c).adjust.tolist() == pytest.approx((2 / np.sqrt(n_g)).tolist())
    assert cls(cls.Params(C=2.0), ctx()).adjust.tolist() == pytest.approx([2 / math.sqrt(39), 2 / math.sqrt(26)])
    blind = cls(cls.Params(temperature=0.5), ctx())  # T != 1 without them (a context from a checkpoint): refused
    with pytest.raises(ValueError, match="temperature=0.5"):
        blind.on_train_start(10)


# --- DS: kc_uniform and the subset state (METHODS 3.5) --------------------------------------------------------

def _cells_input():
    y = np.repeat([0, 0, 1, 1, 2, 2, 3], [20, 10, 12, 8, 2, 8, 5])
    g = np.repeat([0, 1, 0, 1, 0, 1, 0], [20, 10, 12, 8, 2, 8, 5])  # the cells of CG
    return SamplerInput(np.arange(len(y)), y, g, np.zeros(len(y), dtype=int), g)


def test_ds_kc_uniform_resamples_every_cell_to_its_expected_size():
    from fairray.methods.reweight import subset_sizes

    # N = 65, N_c = (30, 20, 10, 5), N_g = (39, 26): N_c N_g / N; the empty cell (3, M) stays empty
    expected = [[18, 12], [12, 8], [6, 4], [3, 0]]
    assert subset_sizes(CG, "kc_uniform").tolist() == expected
    assert subset_sizes(CG, "idi").tolist() == [[10, 10], [8, 8], [2, 2], [5, 0]]
    inp = _cells_input()
    subset = downsample(inp, 4, 2, np.random.default_rng(0), mode="kc_uniform")
    y, g = inp.y[subset], inp.group[subset]
    assert [[int(((y == c) & (g == k)).sum()) for k in range(2)] for c in range(4)] == expected
    # a cell above its expected size is subsampled without replacement; one below keeps all its clips + duplicates
    big = subset[(y == 0) & (g == 0)]
    assert len(set(big.tolist())) == 18
    small = subset[(y == 2) & (g == 0)]
    assert set(small.tolist()) == {50, 51} and len(small) == 6
    cls = METHODS.get("ds")
    assert cls(cls.Params(ds_mode="kc_uniform"), ctx()).retained == pytest.approx(63 / 65)


def test_ds_once_keeps_its_subset_in_the_state_and_resumes_on_it():
    import dataclasses

    cls = METHODS.get("ds")
    inp = _cells_input()
    m = cls(cls.Params(ds_resample="once", ds_seed=3), ctx())
    assert m.state_dict() == {"subset": None, "seed": 3, "epoch": None}
    first = np.concatenate(list(m.batches(inp, 8, np.random.default_rng(0), 0, "uniform")))
    state = m.state_dict()
    assert sorted(state["subset"]) == sorted(first.tolist()) and state["seed"] == 3
    assert len(state["subset"]) == 10 + 10 + 8 + 8 + 2 + 2 + 5
    other = cls(cls.Params(ds_resample="once", ds_seed=4), ctx())  # a different seed would draw another subset ...
    other.load_state_dict(state)
    again = np.concatenate(list(other.batches(inp, 8, np.random.default_rng(0), 1, "uniform")))
    assert sorted(again.tolist()) == sorted(first.tolist())  # ... but a resumed trial trains on the stored one
    with pytest.raises(ValueError, match="outside this trial's training split"):
        other.batches(dataclasses.replace(inp, indices=np.arange(20)), 8, np.random.default_rng(0), 2, "uniform")
    per_epoch = cls(cls.Params(), ctx())
    per_epoch.batches(inp, 8, np.random.default_rng(0), 5, "uniform")
    assert per_epoch.state_dict()["epoch"] == 5 and per_epoch.state_dict()["seed"] is None
    per_epoch.load_state_dict({})  # checkpoints written before DS kept state
    assert per_epoch.subset is None
