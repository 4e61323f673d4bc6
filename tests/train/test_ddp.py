"""Two Ray Train workers (gloo, CPU) take the same step as one worker on the whole batch, and agree on
skipping or failing a step whose loss is not finite on one of them (no hang)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

N_FEATURES = 6
METHODS_UNDER_TEST = {"minmaxgap": {"m_min": 2}, "gdro": {"eta_q": 0.5}, "erm": {}}


def _context():
    from fairray.methods import TrainContext

    return TrainContext(classes=("a", "b", "c"), class_counts=np.array([30, 20, 14]), attr_values=("F", "M"),
                        strata_values=("de", "en"), n_train=64, group_values=("F", "M"),
                        group_counts=np.array([32, 32]), class_group_counts=np.array([[15, 15], [10, 10], [7, 7]]),
                        group_soft_counts=np.array([32.0, 32.0]), n_rows=64, epochs=3)


def _batch(rows: np.ndarray, nan: bool = False):
    from fairray.inputs import Batch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, N_FEATURES, generator=g)
    attr, stratum = torch.randint(0, 2, (64,), generator=g), torch.randint(0, 2, (64,), generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    idx = torch.as_tensor(rows)
    xs = x[idx].clone()
    if nan:
        xs[0] = float("nan")
    return Batch(x=xs, y=y[idx], attr=attr[idx], stratum=stratum[idx], index=idx, group=attr[idx],
                 group_prob=torch.nn.functional.one_hot(attr[idx], 2).float(),
                 target=torch.nn.functional.one_hot(y[idx], 3).float())


def _setup(name: str):
    from fairray.methods import METHODS
    from fairray.models import MLP, build_model

    cls = METHODS.get(name)
    method = cls(cls.Params(**METHODS_UNDER_TEST[name]), _context())
    torch.manual_seed(0)
    module = method.build_model(lambda n: build_model("mlp", MLP.Params(hidden=16, depth=1, dropout=0.0),
                                                      N_FEATURES, n))
    return method, module


def _params(module) -> list[list[float]]:
    from fairray.train.checkpoint import unwrap

    return [p.detach().flatten().tolist() for p in unwrap(module).parameters()]


def _worker(config: dict) -> None:
    import ray.train

    from fairray.errors import TrialError
    from fairray.train import TrainSession
    from fairray.train.loop import Precision, train_step

    session = TrainSession()
    rank, world = session.world_rank, session.world_size
    rows = np.arange(64)[rank::world]
    out = {}
    for name in METHODS_UNDER_TEST:
        method, module = _setup(name)
        module = session.prepare_model(module)
        opt = torch.optim.SGD(module.parameters(), lr=0.5)
        precision = Precision("fp32", torch.device("cpu"))
        step = train_step(module, method, [_batch(rows)], opt, precision)
        record = {"params": _params(module), "skipped": step.skipped,
                  "q": method.q.tolist() if hasattr(method, "q") else None}
        # a NaN on rank 1 only: every worker skips the same step (fail_on_nan: false) ...
        skip = train_step(module, method, [_batch(rows, nan=rank == 1)], opt, precision, fail_on_nan=False)
        record["nan_skipped"] = skip.skipped is not None
        record["params_after_skip"] = _params(module)
        # ... or fails it, every worker with the reason (fail_on_nan: true)
        try:
            train_step(module, method, [_batch(rows, nan=rank == 1)], opt, precision, where="at epoch 0, step 2")
            record["failure"] = None
        except TrialError as exc:
            record["failure"] = str(exc)
        out[name] = record
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(out))
    ray.train.report({"done": 1.0})


def test_two_gloo_workers_match_one_worker_and_agree_on_non_finite_steps(tmp_path):
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from fairray.train.loop import Precision, train_step

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        TorchTrainer(_worker, train_loop_config={"out": str(tmp_path)},
                     scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
                     run_config=RunConfig(name="ddp-test", storage_path=str(tmp_path / "ray"))).fit()
    finally:
        ray.shutdown()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for name in METHODS_UNDER_TEST:
        method, module = _setup(name)
        opt = torch.optim.SGD(module.parameters(), lr=0.5)
        train_step(module, method, [_batch(np.arange(64))], opt, Precision("fp32", torch.device("cpu")))
        single = _params(module)
        for rank in ranks:
            r = rank[name]
            assert r["skipped"] is None
            for a, b in zip(r["params"], single, strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
            if r["q"] is not None:  # the q step saw every worker's groups: one q everywhere
                np.testing.assert_allclose(r["q"], method.q.tolist(), rtol=1e-5, atol=1e-7)
            assert r["nan_skipped"] and r["params_after_skip"] == r["params"]
            # group statistics are all-reduced, so rank 1's NaN reaches rank 0's loss too; ERM's stays on rank 1
            first = "1" if name == "erm" else "0"
            assert r["failure"] is not None and r["failure"].startswith(
                f"training loss is nan (first seen on worker {first} of 2) at epoch 0, step 2;"), r["failure"]
        # the step really changed the weights (the comparison above is not of two untouched copies)
        method0, module0 = _setup(name)
        assert max(abs(a - b) for pa, pb in zip(_params(module0), single, strict=True)
                   for a, b in zip(pa, pb, strict=True)) > 1e-4
