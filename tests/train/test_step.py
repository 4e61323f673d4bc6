"""The optimiser step of the one loop: gradient accumulation, mixed precision, skipped steps, clipping,
parameter groups, streamed evaluation and device checks (``fairray.train.loop``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fairray.inputs import FEATURES, Batch, VectorStore
from fairray.methods import METHODS, TrainContext
from fairray.models import MLP, build_model
from fairray.train.loop import Precision, infer, param_groups, resolve_device, train_step

N_FEATURES = 6
CTX = TrainContext(classes=("a", "b", "c"), class_counts=np.array([30, 20, 14]), attr_values=("F", "M"),
                   strata_values=("de", "en"), n_train=64, group_values=("F", "M"), group_counts=np.array([32, 32]),
                   class_group_counts=np.array([[15, 15], [10, 10], [7, 7]]),
                   group_soft_counts=np.array([32.0, 32.0]), n_rows=64, epochs=3)


def big_batch(n=64, seed=0, nan_row: int | None = None) -> Batch:
    """A batch whose language x gender cells are unevenly spread, so 16-row slices see other cell means."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=g)
    if nan_row is not None:
        x[nan_row] = float("nan")
    attr = torch.randint(0, 2, (n,), generator=g)
    stratum = torch.randint(0, 2, (n,), generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return Batch(x=x, y=y, attr=attr, stratum=stratum, index=torch.arange(n), group=attr,
                 group_prob=torch.nn.functional.one_hot(attr, 2).float(),
                 target=torch.nn.functional.one_hot(y, 3).float())


def rows(b: Batch, idx) -> Batch:
    idx = torch.as_tensor(idx)
    return Batch(x=b.x[idx], y=b.y[idx], attr=b.attr[idx], stratum=b.stratum[idx], index=b.index[idx],
                 group=b.group[idx], group_prob=b.group_prob[idx], target=b.target[idx])


def setup(name: str, **params):
    cls = METHODS.get(name)
    torch.manual_seed(0)
    method = cls(cls.Params(**params), CTX)
    module = method.build_model(lambda n: build_model("mlp", MLP.Params(hidden=16, depth=1, dropout=0.0),
                                                      N_FEATURES, n))
    opt = torch.optim.SGD(module.parameters(), lr=0.0)  # lr 0: the step leaves the weights, grads stay readable
    return method, module, opt


def grads(module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("cuts", [(0, 16, 32, 48, 64), (0, 3, 5, 29, 64)], ids=["4x16", "3+2+24+35"])
@pytest.mark.parametrize("name,params", [("erm", {}), ("minmaxgap", {"m_min": 3}), ("gdro", {"eta_q": 0.5}),
                                         ("rw", {}), ("pgdro", {"eta_q": 0.5})])
def test_accumulating_micro_batches_gives_the_gradient_of_the_whole_batch(name, params, cuts):
    """Four micro-batches of 16 (or of unequal sizes, whose weights n_m / N are not 1/k) against one of 64."""
    batch = big_batch()
    method, module, opt = setup(name, **params)
    whole = train_step(module, method, [batch], opt, Precision("fp32", torch.device("cpu")))
    g_whole, loss_whole = grads(module), float(whole.outputs[0].loss.detach())
    method, module, opt = setup(name, **params)
    micro = [rows(batch, range(a, b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    acc = train_step(module, method, micro, opt, Precision("fp32", torch.device("cpu")))
    for a, b in zip(grads(module), g_whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert len(acc.outputs) == 4
    if hasattr(method, "q"):  # the committed q is the whole batch's step
        method_whole, module_whole, opt_whole = setup(name, **params)
        train_step(module_whole, method_whole, [batch], opt_whole, Precision("fp32", torch.device("cpu")))
        torch.testing.assert_close(method.q, method_whole.q, rtol=1e-6, atol=1e-7)
    # every micro-batch sees the whole batch's statistics: MinMaxGAP's gap, GDRO's q-weighted group losses
    for out in acc.outputs:
        if name == "minmaxgap":
            assert out.logs["gap_batch"] == pytest.approx(whole.outputs[0].logs["gap_batch"], rel=1e-5)
        elif name == "gdro":
            assert float(out.loss.detach()) == pytest.approx(loss_whole, rel=1e-5)


def test_without_the_whole_step_statistics_minmaxgap_would_get_another_gradient():
    """The check above can fail: 16-row cell means give MinMaxGAP a different penalty and gradient."""
    batch = big_batch()
    method, module, opt = setup("minmaxgap", m_min=3)
    train_step(module, method, [batch], opt, Precision("fp32", torch.device("cpu")))
    g_whole = grads(module)
    method, module, opt = setup("minmaxgap", m_min=3)
    opt.zero_grad()
    for i in range(0, 64, 16):  # naive accumulation: each micro-batch's own gap
        b = rows(batch, range(i, i + 16))
        (method.loss(module(b.inputs), b).loss * 0.25).backward()
    assert max(float((a - b).abs().max()) for a, b in zip(grads(module), g_whole, strict=True)) > 1e-4


def test_a_method_that_says_it_has_no_batch_statistics_may_not_use_them():
    batch = big_batch()
    method, module, opt = setup("gdro")
    method.batch_statistics = False  # a wrong declaration must not silently give per-micro-batch groups
    with pytest.raises(RuntimeError, match="declares batch_statistics = False but its loss calls batch_sum"):
        train_step(module, method, [rows(batch, range(0, 32)), rows(batch, range(32, 64))], opt,
                   Precision("fp32", torch.device("cpu")))


def test_a_non_finite_loss_skips_the_step_and_commits_no_state():
    method, module, opt = setup("gdro", eta_q=1.0)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    before = [p.detach().clone() for p in module.parameters()]
    q = method.q.clone()
    result = train_step(module, method, [big_batch(nan_row=3)], opt, Precision("fp32", torch.device("cpu")),
                        fail_on_nan=False, where="at epoch 0, step 5")
    assert result.skipped is not None and "training loss is nan at epoch 0, step 5" in result.skipped
    assert all(torch.equal(a, b) for a, b in zip(module.parameters(), before, strict=True))  # untouched: copies
    assert torch.equal(method.q, q)
    # a finite batch then trains and moves q
    result = train_step(module, method, [big_batch(seed=1)], opt, Precision("fp32", torch.device("cpu")))
    assert result.skipped is None and not torch.equal(method.q, q)


def test_a_non_finite_loss_with_fail_on_nan_raises_one_line():
    from fairray.errors import TrialError

    method, module, opt = setup("erm")
    with pytest.raises(TrialError, match=r"training loss is nan at epoch 2, step 0 \(micro-batch 2 of 2\).*"
                                         r"train.fail_on_nan: false"):
        train_step(module, method, [big_batch(n=8, seed=2), big_batch(n=8, nan_row=0)], opt,
                   Precision("fp32", torch.device("cpu")), where="at epoch 2, step 0")


def _fp32_final(name: str, batch: Batch, steps: int = 80) -> float:
    method, module, _ = setup(name)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-2)
    out = None
    for _ in range(steps):
        out = train_step(module, method, [batch], opt, Precision("fp32", torch.device("cpu")))
    return float(out.outputs[0].loss.detach())


def test_bf16_autocast_trains_on_the_cpu():
    batch = big_batch()
    method, module, _ = setup("minmaxgap")
    opt = torch.optim.AdamW(module.parameters(), lr=1e-2)
    precision = Precision("bf16", torch.device("cpu"))
    with precision.autocast():
        assert module(batch.inputs).dtype == torch.bfloat16  # the forward really runs in bf16
    losses = [float(train_step(module, method, [batch], opt, precision).outputs[0].loss.detach()) for _ in range(80)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.7 * losses[0]  # 0.46 here
    assert losses[-1] == pytest.approx(_fp32_final("minmaxgap", batch), rel=0.1)  # trains as fp32 does


def test_fp16_uses_a_gradient_scaler():
    batch = big_batch()
    method, module, _ = setup("erm")
    opt = torch.optim.AdamW(module.parameters(), lr=1e-2)
    precision = Precision("fp16", torch.device("cpu"))
    assert precision.scaler is not None and precision.state_dict()["scale"] > 1
    losses = [float(train_step(module, method, [batch], opt, precision).outputs[0].loss.detach()) for _ in range(80)]
    assert losses[-1] < 0.7 * losses[0]  # 0.42 here
    assert losses[-1] == pytest.approx(_fp32_final("erm", batch), rel=0.1)


def test_grad_clip_bounds_the_step_and_reports_the_norm():
    batch = big_batch()
    method, module, opt = setup("erm")
    result = train_step(module, method, [batch], opt, Precision("fp32", torch.device("cpu")), grad_clip=1e-3)
    total = math.sqrt(sum(float((p.grad ** 2).sum()) for p in module.parameters()))
    assert result.grad_norm > 1e-3 and total == pytest.approx(1e-3, rel=1e-4)


def test_parameter_groups_take_their_learning_rate_from_lr_scales():
    from fairray.inputs import InputSpec
    from fairray.models import MODELS

    params = MODELS.get("wav_cnn").Params(channels=8, layers=3, hidden=8, frontend_lr_scale=0.1)
    model = build_model("wav_cnn", params, {"audio": InputSpec("audio", "waveform")}, 4)
    groups = param_groups(model, lr=1e-3)
    by_scale = {g["lr_scale"]: g for g in groups}
    assert set(by_scale) == {0.1, 1.0} and by_scale[0.1]["lr"] == pytest.approx(1e-4)
    frontend = {id(p) for p in model.frontend.parameters()}
    assert {id(p) for p in by_scale[0.1]["params"]} == frontend
    assert {id(p) for p in by_scale[1.0]["params"]} == {id(p) for p in model.head.parameters()}
    model.head[0].weight.requires_grad_(False)  # frozen parameters are not optimised
    assert all(p is not model.head[0].weight for g in param_groups(model, 1e-3) for p in g["params"])


def _peak_cpu_bytes(fn) -> int:
    """Peak of live CPU tensor memory while ``fn`` runs, from the profiler's allocation events."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True,
                                acc_events=True) as prof:
        fn()
    # allocations are attributed to the op that made them (self usage), frees are "[memory]" events
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def test_streamed_evaluation_peak_memory_stays_flat_when_the_split_grows_tenfold():
    wide = build_model("mlp", MLP.Params(hidden=2048, depth=2, dropout=0.0), 32, 5).eval()
    X = np.random.default_rng(0).standard_normal((4000, 32)).astype(np.float32)
    stores = {FEATURES: VectorStore(FEATURES, X)}
    small = _peak_cpu_bytes(lambda: infer(wide, stores, np.arange(400), 64, torch.device("cpu")))
    large = _peak_cpu_bytes(lambda: infer(wide, stores, np.arange(4000), 64, torch.device("cpu")))
    assert small > 64 * 2048 * 4  # the probe sees at least one chunk's activations
    assert large < 1.5 * small, (small, large)
    # what one forward pass over the whole split would hold (the check can fail)
    whole = _peak_cpu_bytes(lambda: infer(wide, stores, np.arange(4000), 4000, torch.device("cpu")))
    assert whole > 5 * small
    # and the chunked logits are the one-pass logits
    torch.testing.assert_close(infer(wide, stores, np.arange(300), 64, torch.device("cpu")),
                               infer(wide, stores, np.arange(300), 300, torch.device("cpu")), rtol=1e-5, atol=1e-6)


def test_a_gpu_spec_on_a_machine_without_cuda_is_an_error(monkeypatch):
    from fairray.errors import TrialError
    from fairray.train import LocalSession

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(0, LocalSession("/nonexistent")) == torch.device("cpu")
    with pytest.raises(TrialError, match="gpus_per_worker is 1, but this worker sees no CUDA device"):
        resolve_device(1, LocalSession("/nonexistent"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_gpu_spec_trains_on_cuda(tmp_path, precision):
    """gpus_per_worker > 0 with one worker: the model, batches and method state are on CUDA."""
    from pathlib import Path

    from fairray.config import load_spec
    from fairray.sweep import prepare_data
    from fairray.train import LocalSession, run_trial

    spec = Path(__file__).resolve().parents[2] / "search_spaces" / "minmaxgap.yaml"
    loaded = load_spec(spec, ["train.epochs=2", f"train.precision={precision}", "resources.gpus_per_worker=1"])
    seen = []
    original = METHODS.get("minmaxgap").loss

    def spy(self, outputs, batch):
        seen.append((outputs.device.type, batch.y.device.type))
        return original(self, outputs, batch)

    METHODS.get("minmaxgap").loss = spy
    try:
        final = run_trial(loaded.raw, {}, prepare_data(loaded.spec), LocalSession(tmp_path))
    finally:
        METHODS.get("minmaxgap").loss = original
    assert seen and set(seen) == {("cuda", "cuda")}
    assert math.isfinite(final["dev/loss"]) and 0 <= final["test/weighted_f1"] <= 1


def test_group_sums_stay_float32_under_bf16_autocast():
    from fairray.methods import group_means

    g = torch.Generator().manual_seed(0)
    values, groups = torch.rand(64, generator=g) * 3, torch.randint(0, 2, (64,), generator=g)
    exact, _ = group_means(values, groups, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under, counts = group_means(values.bfloat16().float(), groups, 2)
    exact_of_rounded, _ = group_means(values.bfloat16().float(), groups, 2)
    assert under.dtype == torch.float32 and counts.dtype == torch.float32
    torch.testing.assert_close(under, exact_of_rounded, rtol=1e-6, atol=1e-6)  # no bf16 matmul in between
    assert (exact - under).abs().max() < 2e-2


def test_batches_smaller_than_the_worker_count_are_left_out_on_every_worker():
    from fairray.train.loop import _steps

    batches = [np.arange(8), np.arange(8, 10), np.arange(10, 18)]
    assert [len(s) for s in _steps(iter(batches), 1, world_size=3)] == [1, 1]  # the 2-row batch is dropped
    assert [[len(b) for b in s] for s in _steps(iter(batches), 2, world_size=1)] == [[8, 2], [8]]


def test_a_group_seen_once_stays_present_when_micro_batch_weights_are_not_round():
    """Micro-batches of 3 and 2 rows (weights 3/5, 2/5) with a group that has one sample in the whole batch:
    the accumulated counts must stay exact integers, or the group drops out of GDRO's step (count 0.99999994)."""
    batch = rows(big_batch(n=5), range(5))
    batch = Batch(x=batch.x, y=batch.y, attr=batch.attr, stratum=batch.stratum, index=batch.index,
                  group=torch.tensor([0, 0, 1, 0, 0]), group_prob=batch.group_prob, target=batch.target)
    method, module, opt = setup("gdro", eta_q=0.5)
    train_step(module, method, [batch], opt, Precision("fp32", torch.device("cpu")))
    g_whole, q_whole = grads(module), method.q.clone()
    method, module, opt = setup("gdro", eta_q=0.5)
    train_step(module, method, [rows(batch, range(0, 3)), rows(batch, range(3, 5))], opt,
               Precision("fp32", torch.device("cpu")))
    torch.testing.assert_close(method.q, q_whole, rtol=1e-6, atol=1e-7)
    for a, b in zip(grads(module), g_whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
