"""ERM base losses (METHODS 3.1): CE, class-balanced CE, focal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fairray.methods import ERM, BaseLoss, BaseLossParams, TrainContext, class_balanced_weights


def ctx(counts=(1, 3)):
    cg = np.array([[c, 0] for c in counts])
    return TrainContext(classes=tuple("ab"[: len(counts)]), class_counts=np.array(counts), attr_values=("F", "M"),
                        strata_values=("x",), n_train=int(sum(counts)), group_values=("F", "M"),
                        group_counts=cg.sum(axis=0), class_group_counts=cg, group_soft_counts=cg.sum(axis=0) * 1.0,
                        n_rows=int(sum(counts)), epochs=1)


def test_class_balanced_weights_hand_computed():
    # beta 0.5: E = (1 - 0.5^n) / 0.5 -> E(1) = 1, E(3) = 1.75; alpha = (1/E) * 2 / sum(1/E)
    alpha = class_balanced_weights(np.array([1, 3]), 0.5)
    inv = np.array([1.0, 1 / 1.75])
    assert alpha == pytest.approx(inv * 2 / inv.sum())
    assert alpha.sum() == pytest.approx(2.0)


def test_zero_count_class_is_treated_as_one():
    assert class_balanced_weights(np.array([0, 5]), 0.9) == pytest.approx(class_balanced_weights(np.array([1, 5]), 0.9))


def test_cb_ce_weights_each_sample_by_its_class():
    logits = torch.tensor([[0.3, -0.2], [1.0, 0.5], [-1.0, 2.0]])
    y = torch.tensor([0, 1, 1])
    loss = BaseLoss(BaseLossParams(loss="cb_ce", beta=0.5), ctx())(logits, y)
    alpha = torch.tensor(class_balanced_weights(np.array([1, 3]), 0.5), dtype=torch.float32)
    expected = alpha[y] * F.cross_entropy(logits, y, reduction="none")
    assert torch.allclose(loss, expected)


def test_focal_with_gamma_zero_is_cb_ce_and_down_weights_easy_samples():
    logits = torch.tensor([[3.0, -3.0], [0.1, 0.0]])
    y = torch.tensor([0, 0])
    cb = BaseLoss(BaseLossParams(loss="cb_ce", beta=0.9), ctx())(logits, y)
    f0 = BaseLoss(BaseLossParams(loss="focal", beta=0.9, gamma=0.0), ctx())(logits, y)
    f2 = BaseLoss(BaseLossParams(loss="focal", beta=0.9, gamma=2.0), ctx())(logits, y)
    assert torch.allclose(cb, f0)
    assert (f2[0] / cb[0]) < (f2[1] / cb[1])  # the easy sample loses more of its weight


def test_default_beta_is_n_minus_one_over_n():
    c = ctx((2, 8))
    default = BaseLoss(BaseLossParams(loss="cb_ce"), c).alpha
    explicit = BaseLoss(BaseLossParams(loss="cb_ce", beta=9 / 10), c).alpha
    assert torch.allclose(default, explicit)


def test_erm_loss_is_the_batch_mean():
    logits = torch.randn(5, 2)
    y = torch.tensor([0, 1, 1, 0, 1])
    from fairray.methods import Batch

    zeros = torch.zeros(5, dtype=torch.long)
    b = Batch(torch.zeros(5, 1), y, zeros, zeros, torch.arange(5), zeros, torch.ones(5, 1))
    out = ERM(BaseLossParams(), ctx()).loss(logits, b)
    assert float(out.loss) == pytest.approx(float(F.cross_entropy(logits, y)))
