"""ERM base losses (METHODS 3.1): CE, class-balanced CE, focal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fairray.methods import ERM, BaseLoss, BaseLossParams, TrainContext, class_balanced_weights


def ctx(counts=(1, 3)):
    cg = np.array([[c, 0] for c in counts])
    return TrainContext(classes=tuple("abcdef"[: len(counts)]), class_counts=np.array(counts), attr_values=("F", "M"),
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
    b = Batch(x=torch.zeros(5, 1), y=y, attr=zeros, stratum=zeros, index=torch.arange(5), group=zeros,
              group_prob=torch.ones(5, 1))
    out = ERM(BaseLossParams(loss="ce"), ctx()).loss(logits, b)
    assert float(out.loss) == pytest.approx(float(F.cross_entropy(logits, y)))


#: Each method's default base loss as its METHODS section gives it: §3.1's class-balanced soft CE, except
#: MinMaxGAP (§3.2: CE of the classifier head) and DisEnt (§3.9: the paper's CE).
DEFAULT_BASE_LOSS = {"erm": "cb_ce", "rw": "cb_ce", "ds": "cb_ce", "gdro": "cb_ce", "gadro": "cb_ce",
                     "pgdro": "cb_ce", "lff": "cb_ce", "minmaxgap": "ce", "disent": "ce"}


@pytest.mark.parametrize("name", sorted(DEFAULT_BASE_LOSS))
def test_default_base_loss_follows_methods(name):
    from fairray.methods import METHODS

    assert METHODS.get(name).Params().loss == DEFAULT_BASE_LOSS[name]


# --- soft targets (multi-label data, METHODS 3.1 as implemented by EMO-SUPERB) --------------------------------

LOGITS = torch.tensor([[0.3, -0.2, 1.1], [2.0, 0.5, -1.0]])
SOFT = torch.tensor([[0.5, 0.3, 0.2], [0.0, 0.1, 0.9]])


def _alpha(beta=0.5, counts=(1, 3, 6)):
    return class_balanced_weights(np.array(counts), beta)


def test_soft_cb_ce_hand_computed():
    # l_i = -(sum_c a_c t_ic) * sum_c t_ic log p_ic
    loss = BaseLoss(BaseLossParams(loss="cb_ce", beta=0.5), ctx((1, 3, 6)))(LOGITS, SOFT)
    z, t, a = LOGITS.double().numpy(), SOFT.double().numpy(), _alpha()
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    expected = [-(a * t[i]).sum() * (t[i] * log_p[i]).sum() for i in range(2)]
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)
    # sample 0: omega = 0.5 a_0 + 0.3 a_1 + 0.2 a_2, written out
    omega0 = 0.5 * a[0] + 0.3 * a[1] + 0.2 * a[2]
    assert float(loss[0]) == pytest.approx(-omega0 * (0.5 * log_p[0, 0] + 0.3 * log_p[0, 1] + 0.2 * log_p[0, 2]))


def test_soft_focal_hand_computed():
    # l_i = -sum_c a_c t_ic (1 - p_ic)^gamma log p_ic
    loss = BaseLoss(BaseLossParams(loss="focal", beta=0.5, gamma=2.0), ctx((1, 3, 6)))(LOGITS, SOFT)
    z, t, a = LOGITS.double().numpy(), SOFT.double().numpy(), _alpha()
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    expected = -(a * t * (1 - p) ** 2 * np.log(p)).sum(axis=1)
    assert loss.tolist() == pytest.approx(expected.tolist(), rel=1e-6)


def test_soft_ce_is_the_soft_cross_entropy():
    loss = BaseLoss(BaseLossParams(loss="ce"), ctx((1, 3, 6)))(LOGITS, SOFT)
    assert torch.allclose(loss, F.cross_entropy(LOGITS, SOFT, reduction="none"))


@pytest.mark.parametrize("kind", ["ce", "cb_ce", "focal"])
def test_one_hot_targets_give_todays_values(kind):
    """The soft formulas reduce to -a_y (1 - p_y)^gamma log p_y for a one-hot target: to float rounding (the
    soft and integer-label paths are different kernels: a masked sum over classes vs a gather)."""
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(64, 3, generator=g) * 4, torch.randint(0, 3, (64,), generator=g)
    base = BaseLoss(BaseLossParams(loss=kind, beta=0.9, gamma=2.0), ctx((1, 3, 6)))
    soft = base(logits, F.one_hot(y, 3).float())
    labels = base(logits, y)
    log_p = F.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
    alpha = base.alpha[y]
    todays = -alpha * (1 - log_p.exp()).pow(2.0) * log_p if kind == "focal" else -alpha * log_p
    torch.testing.assert_close(soft, todays)
    torch.testing.assert_close(soft, labels, rtol=1e-6, atol=1e-7)


def test_multi_label_class_balance_counts_positive_soft_labels():
    """n_c = training samples whose soft label exceeds 1/|C| (the column sums of class_target_counts)."""
    from dataclasses import replace

    c = replace(ctx((4, 6)), class_target_counts=np.array([[4, 3], [1, 6]]))  # n = (5, 9), not (4, 6)
    assert c.cb_counts.tolist() == [5, 9]
    alpha = BaseLoss(BaseLossParams(loss="cb_ce", beta=0.9), c).alpha
    assert torch.allclose(alpha, torch.tensor(class_balanced_weights(np.array([5, 9]), 0.9), dtype=torch.float32))
    assert ctx((4, 6)).cb_counts.tolist() == [4, 6]  # single-label: the class counts


def test_downsampling_scales_the_multi_label_counts_to_its_subset():
    from dataclasses import replace

    from fairray.methods import Downsampling
    from fairray.methods.reweight import DSParams

    cg = np.array([[6, 2], [3, 3]])  # subset keeps 2 + 2 of label 0 and 3 + 3 of label 1
    base = replace(ctx((8, 6)), class_group_counts=cg, group_counts=cg.sum(axis=0))
    single = Downsampling(DSParams(loss="cb_ce", beta=0.9), base)
    assert torch.allclose(single.base.alpha, torch.tensor(class_balanced_weights(np.array([4, 6]), 0.9),
                                                          dtype=torch.float32))
    multi = Downsampling(DSParams(loss="cb_ce", beta=0.9), replace(base, class_target_counts=np.array([[8, 4], [3, 6]])))
    expected = np.array([8 * 4 / 8 + 3 * 6 / 6, 4 * 4 / 8 + 6 * 6 / 6])  # label k keeps 4/8 and 6/6 of its rows
    assert torch.allclose(multi.base.alpha, torch.tensor(class_balanced_weights(expected, 0.9), dtype=torch.float32))
