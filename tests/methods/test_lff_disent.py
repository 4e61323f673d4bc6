"""LfF (METHODS §3.8) and DisEnt (§3.9) against hand-computed values: GCE, the per-sample EMA tables, the
class-wise normalisation and W, DisEnt's stop-gradients and swap schedule, and resuming from state."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fairray.config import build_spec
from fairray.errors import ConfigError
from fairray.methods import (
    METHODS,
    Batch,
    DifficultyWeights,
    DisEnt,
    LfF,
    LfFLogits,
    SampleLossEMA,
    TrainContext,
    gce,
)
from fairray.models import build_model
from fairray.models.mlp import MLP

CG = np.array([[6, 4], [5, 5]])


def ctx(n_rows=12, epochs=10, classes=("a", "b")):
    cg = CG[: len(classes)]
    return TrainContext(classes=classes, class_counts=cg.sum(axis=1), attr_values=("F", "M"), strata_values=("x",),
                        n_train=int(cg.sum()), group_values=("F", "M"), group_counts=cg.sum(axis=0),
                        class_group_counts=cg, group_soft_counts=cg.sum(axis=0) * 1.0, n_rows=n_rows, epochs=epochs)


def batch(index, y, x=None):
    index, y = torch.as_tensor(index), torch.as_tensor(y)
    n = len(y)
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(int(index.sum()))) if x is None else x
    zeros = torch.zeros(n, dtype=torch.long)
    return Batch(x=x, y=y, attr=zeros, stratum=zeros, index=index, group=zeros,
                 group_prob=F.one_hot(zeros, 2).float())


def build(n_out):
    return build_model("mlp", MLP.Params(hidden=8, depth=1, dropout=0.0), 5, n_out)


def make(name, context=None, **params):
    cls = METHODS.get(name)
    torch.manual_seed(0)
    method = cls(cls.Params(**params), context or ctx())
    return method, method.build_model(build)


# --- GCE -------------------------------------------------------------------------------------------------

def test_gce_value_by_hand():
    logits = torch.tensor([[math.log(3.0), 0.0]])  # p = (3/4, 1/4)
    assert float(gce(logits, torch.tensor([0]), q=0.5)) == pytest.approx(2 * (1 - math.sqrt(0.75)))
    assert float(gce(logits, torch.tensor([1]), q=1.0)) == pytest.approx(0.75)
    # a soft target uses p_t = Σ_c t_c p_c; a one-hot one equals the integer label
    assert float(gce(logits, torch.tensor([[0.5, 0.5]]), q=1.0)) == pytest.approx(0.5)
    assert float(gce(logits, torch.tensor([[1.0, 0.0]]), q=0.5)) == pytest.approx(2 * (1 - math.sqrt(0.75)))


def test_gce_gradient_is_p_t_to_the_q_times_the_ce_gradient():
    logits = torch.tensor([[0.3, -1.2, 2.0], [1.0, 0.5, -0.5]], requires_grad=True)
    y = torch.tensor([0, 2])
    q = 0.7
    (g_gce,) = torch.autograd.grad(gce(logits, y, q).sum(), logits)
    (g_ce,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), logits)
    p_t = torch.softmax(logits, 1).detach()[torch.arange(2), y]
    torch.testing.assert_close(g_gce, p_t[:, None] ** q * g_ce)
    # by hand for row 0: ∇CE = p - onehot
    p0 = torch.softmax(logits[0].detach(), 0)
    torch.testing.assert_close(g_gce[0], p0[0] ** q * (p0 - torch.tensor([1.0, 0.0, 0.0])))


# --- EMA tables and W --------------------------------------------------------------------------------------

def test_ema_first_visit_then_update():
    ema = SampleLossEMA(n_rows=5, alpha=0.7)
    ema.update(torch.tensor([3, 1]), torch.tensor([2.0, 1.0]), torch.tensor([0, 1]))
    torch.testing.assert_close(ema.value, torch.tensor([0.0, 1.0, 0.0, 2.0, 0.0]))  # first visit e = a; others 0
    ema.update(torch.tensor([3]), torch.tensor([4.0]), torch.tensor([0]))
    assert float(ema.value[3]) == pytest.approx(0.7 * 2.0 + 0.3 * 4.0)
    ema.update(torch.tensor([1, 1]), torch.tensor([1.0, 3.0]), torch.tensor([1, 1]))  # drawn twice: mean loss 2
    assert float(ema.value[1]) == pytest.approx(0.7 * 1.0 + 0.3 * 2.0)
    assert ema.label.tolist() == [-1, 1, -1, 0, -1]


def test_classwise_normalisation_and_w_by_hand():
    weights = DifficultyWeights(ctx(n_rows=6), alpha=0.7)
    # rows 0, 1 are class 0; rows 2, 3 class 1; rows 4, 5 never visited
    b = batch([0, 1, 2, 3], [0, 0, 1, 1])
    w, rows = weights(b, torch.tensor([1.0, 2.0, 4.0, 1.0]), torch.tensor([2.0, 2.0, 1.0, 3.0]))
    # ê^B = (1/2, 2/2, 4/4, 1/4), ê^D = (2/2, 2/2, 1/3, 3/3)
    expected = [0.5 / 1.5, 1 / 2, 1 / (1 + 1 / 3), 0.25 / 1.25]
    torch.testing.assert_close(w, torch.tensor(expected), rtol=1e-6, atol=1e-7)
    assert weights.biased.label.tolist() == [-1] * 6  # computing W changes nothing ...
    weights.commit([rows])  # ... the rows are committed after the optimiser step
    assert weights.biased.value.tolist() == [1.0, 2.0, 4.0, 1.0, 0.0, 0.0]
    # the class maximum comes from the whole table, not the batch: row 0 alone keeps row 1's maximum
    w0, _ = weights(batch([0], [0]), torch.tensor([1.0]), torch.tensor([2.0]))
    assert float(w0) == pytest.approx(0.5 / 1.5, rel=1e-6)


def test_ema_stepped_is_pure_and_update_commits_it():
    ema = SampleLossEMA(n_rows=4, alpha=0.5)
    ema.update(torch.tensor([0]), torch.tensor([2.0]), torch.tensor([1]))
    value, label = ema.stepped(torch.tensor([0, 2]), torch.tensor([4.0, 1.0]), torch.tensor([1, 0]))
    assert value.tolist() == [3.0, 0.0, 1.0, 0.0] and label.tolist() == [1, -1, 0, -1]
    assert ema.value.tolist() == [2.0, 0.0, 0.0, 0.0] and ema.label.tolist() == [1, -1, -1, -1]  # unchanged


def test_accumulated_micro_batches_commit_one_step_of_all_their_rows():
    """Under train.accumulate the step's micro-batches enter the tables together: the step a single batch of
    all their rows takes (a row in two micro-batches takes its mean loss, as within one batch)."""
    split, whole = DifficultyWeights(ctx(n_rows=6), alpha=0.7), DifficultyWeights(ctx(n_rows=6), alpha=0.7)
    for table in (split, whole):  # a committed history first, so the step is an EMA step, not a first visit
        table.commit([table(batch([0, 1, 2], [0, 1, 0]), torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 1.0]))[1]])
    _, a = split(batch([0, 3], [0, 1]), torch.tensor([2.0, 5.0]), torch.tensor([1.0, 2.0]))
    _, b = split(batch([0, 4], [0, 0]), torch.tensor([4.0, 1.0]), torch.tensor([3.0, 2.0]))
    split.commit([a, b])
    _, rows = whole(batch([0, 3, 0, 4], [0, 1, 0, 0]), torch.tensor([2.0, 5.0, 4.0, 1.0]),
                    torch.tensor([1.0, 2.0, 3.0, 2.0]))
    whole.commit([rows])
    assert split.state_dict() == whole.state_dict()
    assert split.biased.value[0].item() == pytest.approx(0.7 * 1.0 + 0.3 * 3.0)  # mean of 2 and 4


def test_lff_loss_is_pure_and_on_step_commits():
    method, module = make("lff")
    b = batch([4, 7, 9], [0, 1, 1])
    first, again = method.loss(module(b.x), b), method.loss(module(b.x), b)
    assert first.loss.item() == again.loss.item()
    assert method.state_dict()["ema"]["biased"]["index"] == []
    method.on_step([first])
    assert method.state_dict()["ema"]["biased"]["index"] == [4, 7, 9]


def test_lff_loss_is_gce_plus_w_weighted_base_loss():
    method, _ = make("lff", q=0.5, loss="ce")
    b = batch([4, 7, 9], [0, 1, 1])
    lb = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]], requires_grad=True)
    ld = torch.tensor([[0.0, 1.0], [0.5, 0.0], [0.0, 3.0]], requires_grad=True)
    out = method.loss(LfFLogits(lb, ld), b)
    a, d = F.cross_entropy(lb, b.y, reduction="none").detach(), F.cross_entropy(ld, b.y, reduction="none").detach()
    # first visit: ê = per-class max-normalised losses of this batch (rows 7 and 9 share class 1)
    e_a = torch.stack([a[0] / a[0], a[1] / a[1:].max(), a[2] / a[1:].max()])
    e_d = torch.stack([d[0] / d[0], d[1] / d[1:].max(), d[2] / d[1:].max()])
    w = e_a / (e_a + e_d + 1e-8)
    expected = gce(lb, b.y, 0.5).mean() + (w * d).mean()  # loss: ce → l^D = CE
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    out.loss.backward()
    assert lb.grad.abs().sum() > 0 and ld.grad.abs().sum() > 0


def test_lff_evaluates_the_debiased_net():
    method, module = make("lff", loss="cb_ce")
    assert method.inference_model(module) is module.debiased
    b = batch([0, 1, 2], [0, 1, 0])
    logits = module.debiased(b.x)
    torch.testing.assert_close(method.per_sample_loss(logits, b), method.base(logits, b.y))


# --- DisEnt ------------------------------------------------------------------------------------------------

def _grads(module):
    return {name: (None if p.grad is None else float(p.grad.abs().sum())) for name, p in module.named_parameters()}


def _zero(g, prefix):
    return all(v is None or v == 0.0 for k, v in g.items() if k.startswith(prefix))


def _nonzero(g, prefix):
    return all(v is not None and v > 0 for k, v in g.items() if k.startswith(prefix))


def test_disent_split_classifiers_equal_the_concatenated_ones():
    method, module = make("disent", d=4)
    b = batch(range(6), [0, 1, 0, 1, 1, 0])
    out = module(b.x)
    z_i, z_b = module.enc_i(b.x), module.enc_b(b.x)
    perm = torch.tensor([2, 0, 1, 5, 3, 4])
    torch.testing.assert_close(out.intrinsic(), module.cls_i(torch.cat([z_i, z_b], 1)))
    torch.testing.assert_close(out.bias(), module.cls_b(torch.cat([z_i, z_b], 1)))
    torch.testing.assert_close(out.intrinsic(perm), module.cls_i(torch.cat([z_i, z_b[perm]], 1)))
    torch.testing.assert_close(out.bias(perm), module.cls_b(torch.cat([z_i, z_b[perm]], 1)))
    torch.testing.assert_close(method.inference_model(module)(b.x), out.intrinsic())


def test_disent_stop_gradients():
    b = batch(range(8), [0, 1, 0, 1, 1, 0, 0, 1])
    # with λ_dis = 0 (no swap yet) E_b and C_b get nothing from L_dis: z_b reaches C_i only through sg
    method, module = make("disent", lambda_dis=0.0, swap_start=1.0)
    method.loss(module(b.x), b).loss.backward()
    g = _grads(module)
    assert _zero(g, "enc_b.") and _zero(g, "cls_b.") and _nonzero(g, "enc_i.") and _nonzero(g, "cls_i.")
    # the bias branch alone never reaches E_i (nor C_i); the intrinsic branch never reaches E_b
    _, module = make("disent")
    F.cross_entropy(module(b.x).bias(), b.y).backward()
    g = _grads(module)
    assert _zero(g, "enc_i.") and _zero(g, "cls_i.") and _nonzero(g, "enc_b.") and _nonzero(g, "cls_b.")
    _, module = make("disent")
    F.cross_entropy(module(b.x).intrinsic(), b.y).backward()
    g = _grads(module)
    assert _zero(g, "enc_b.") and _zero(g, "cls_b.") and _nonzero(g, "enc_i.")
    # swapping from the first step, no GCE on either bias term: E_b still gets nothing
    method, module = make("disent", lambda_dis=0.0, lambda_swap_b=0.0, swap_start=0.0)
    out = method.loss(module(b.x), b)
    assert "l_swap" in out.logs
    out.loss.backward()
    g = _grads(module)
    assert _zero(g, "enc_b.") and _nonzero(g, "enc_i.")
    # ... and with λ_swap_b > 0 the swapped bias term does train E_b
    method, module = make("disent", lambda_dis=0.0, lambda_swap_b=1.0, swap_start=0.0)
    method.loss(module(b.x), b).loss.backward()
    assert _nonzero(_grads(module), "enc_b.")


@pytest.mark.parametrize(("swap_start", "unit", "steps_per_epoch", "epochs", "first"), [
    (0.2, "steps", 5, 10, 10), (0.2, "steps", 7, 4, 6), (0.5, "steps", 3, 5, 8), (0.0, "steps", 4, 3, 0),
    (1.0, "steps", 4, 3, 12), (0.2, "epochs", 7, 4, 7), (0.5, "epochs", 3, 5, 9), (0.2, "epochs", 5, 10, 10)])
def test_first_swap_step(swap_start, unit, steps_per_epoch, epochs, first):
    """METHODS 3.9: the first swapping step is swap_start of the trial's optimiser steps (rounded half up);
    ``swap_unit: epochs`` rounds it to an epoch boundary, round(swap_start · epochs) epochs in."""
    method, _ = make("disent", ctx(epochs=epochs), swap_start=swap_start, swap_unit=unit)
    method.on_train_start(steps_per_epoch)
    assert method.swap_step == first


def test_swap_needs_the_trial_length_unless_it_starts_at_once():
    assert make("disent", swap_start=0.0)[0].swapping
    method, _ = make("disent", swap_start=0.2)
    assert method.swap_step is None and not method.swapping  # before on_train_start


def test_swap_starts_at_the_configured_step_with_the_hand_computed_loss():
    method, module = make("disent", ctx(epochs=10), swap_start=0.2, lambda_dis=2.0, lambda_swap=0.5,
                          lambda_swap_b=3.0)
    method.on_train_start(3)  # 30 steps: swapping from step 6, in the middle of epoch 2
    b = batch(range(6), [0, 1, 0, 1, 1, 0])
    seen = []
    for _ in range(8):
        out = method.loss(module(b.x), b)
        assert out.logs["swapping"] == float("l_swap" in out.logs)
        seen.append("l_swap" in out.logs)
        method.on_step([out])
    assert seen == [False] * 6 + [True] * 2
    assert method.step == 8 and method.state_dict()["step"] == 8
    # the swapped loss by hand, with π of the current step
    perm = method.permutation(6)
    weights = copy.deepcopy(method.weights)
    out = module(b.x)
    loss = method.loss(out, b).loss
    w, _ = weights(b, F.cross_entropy(out.bias(), b.y, reduction="none").detach(),
                   F.cross_entropy(out.intrinsic(), b.y, reduction="none").detach())
    ce = lambda logits, y: F.cross_entropy(logits, y, reduction="none")  # noqa: E731
    l_dis = (w * ce(out.intrinsic(), b.y)).mean() + 2.0 * gce(out.bias(), b.y, 0.7).mean()
    l_swap = (w * ce(out.intrinsic(perm), b.y)).mean() + 3.0 * gce(out.bias(perm), b.y[perm], 0.7).mean()
    assert loss.item() == pytest.approx((l_dis + 0.5 * l_swap).item(), rel=1e-6)


def test_lambda_swap_b_defaults_to_lambda_dis():
    assert make("disent", lambda_dis=4.0)[0].lambda_swap_b == 4.0
    assert make("disent", lambda_dis=4.0, lambda_swap_b=0.5)[0].lambda_swap_b == 0.5


def test_permutation_is_seeded_by_step_and_a_batch_of_one_is_fine():
    method, module = make("disent", swap_start=0.0)
    first = method.permutation(10)
    assert sorted(first.tolist()) == list(range(10))
    assert torch.equal(method.permutation(10), first)  # same step, same π
    out = method.loss(module(batch(range(10), [0, 1] * 5).x), batch(range(10), [0, 1] * 5))
    assert torch.equal(method.permutation(10), first)  # loss() does not count: the optimiser step does
    method.on_step([out])
    second = method.permutation(10)
    assert sorted(second.tolist()) == list(range(10)) and not torch.equal(second, first)
    assert method.permutation(1).tolist() == [0]
    b = batch([3], [1])
    out = method.loss(module(b.x), b)
    assert torch.isfinite(out.loss) and "l_swap" in out.logs


# --- resuming ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lff", "disent"])
def test_state_round_trip_resumes_identically(name):
    params = {"swap_start": 0.0} if name == "disent" else {}
    method, module = make(name, **params)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    batches = [batch(torch.randperm(12, generator=torch.Generator().manual_seed(s))[:5],
                     torch.randint(0, 2, (5,), generator=torch.Generator().manual_seed(10 + s))) for s in range(5)]

    def step(m, mod, o, b):
        out = m.loss(mod(b.x), b)
        o.zero_grad()
        out.loss.backward()
        o.step()
        m.on_step([out])
        return out.loss.item()

    for b in batches[:2]:
        step(method, module, opt, b)
    saved = (copy.deepcopy(method.state_dict()), copy.deepcopy(module.state_dict()), copy.deepcopy(opt.state_dict()))
    rest = [step(method, module, opt, b) for b in batches[2:]]

    fresh, fresh_module = make(name, **params)
    fresh.load_state_dict(saved[0])
    fresh_module.load_state_dict(saved[1])
    fresh_opt = torch.optim.SGD(fresh_module.parameters(), lr=0.1)
    fresh_opt.load_state_dict(saved[2])
    assert [step(fresh, fresh_module, fresh_opt, b) for b in batches[2:]] == rest
    assert fresh.state_dict() == method.state_dict()


def test_ema_state_is_the_visited_rows_and_checks_the_table_size():
    method, module = make("lff")
    b = batch([5, 2, 9], [1, 0, 1])
    method.on_step([method.loss(module(b.x), b)])
    state = method.state_dict()["ema"]["biased"]
    assert state["n_rows"] == 12 and state["index"] == [2, 5, 9] and state["label"] == [0, 1, 1]
    other = LfF(LfF.Params(), ctx(n_rows=13))
    with pytest.raises(ValueError, match="13"):
        other.load_state_dict(method.state_dict())


def _spec(method):
    return build_spec({"name": "t", "method": method, "model": {"name": "mlp"},
                       "search": {"objectives": [{"metric": "dev/weighted_f1", "direction": "max"}]}}, "t")


def test_params_are_validated_at_spec_load():
    with pytest.raises(ConfigError, match=r"method\.q: must be > 0"):
        _spec({"name": "lff", "q": 0.0})
    with pytest.raises(ConfigError, match=r"method\.swap_start: must be <= 1"):
        _spec({"name": "disent", "swap_start": 1.5})
    params = _spec({"name": "disent", "lambda_swap_b": None, "loss": "cb_ce"}).method.params
    assert params == replace(DisEnt.Params(), loss="cb_ce")


@pytest.mark.slow
def test_ddp_workers_hold_identical_tables_equal_to_one_process(tmp_path):
    """Under DDP each worker sees part of a batch; (index, loss) pairs are gathered before the EMA update."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).with_name("_ddp_ema_worker.py")
    subprocess.run([sys.executable, str(worker), str(tmp_path)], check=True, timeout=300,
                   cwd=Path(__file__).resolve().parents[2])
    spec = importlib.util.spec_from_file_location("_ddp_ema_worker", worker)
    w = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(w)
    reference = DifficultyWeights(w.context(), alpha=0.7)
    expected = []
    for index, y, lb, ld in w.steps():
        w_full, rows = reference(w.batch(index, y), lb, ld)
        reference.commit([rows])
        expected.append(w_full)
    for rank in range(w.WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        want = reference.state_dict()
        assert set(got["state"]) == set(want)
        for name, table in want.items():  # rows, labels exactly; the EMA values (another process) to rounding
            assert {k: v for k, v in got["state"][name].items() if k != "value"} == {
                k: v for k, v in table.items() if k != "value"}
            assert got["state"][name]["value"] == pytest.approx(table["value"], rel=1e-6, abs=1e-7)
        for w_rank, w_full in zip(got["w"], expected, strict=True):
            torch.testing.assert_close(w_rank, w_full[rank::w.WORLD])
