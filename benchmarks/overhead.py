"""Overhead of running trials through `fairray sweep` vs. in-process, side by side in one run.

The same N trial configurations (sampled once by the first sweep, read back from MLflow) are run:
  * in-process, one after another (concurrency 1) and in a pool of 2 processes (concurrency 2);
  * through `fairray sweep` with backend `function` (loop inside the Tune trial), concurrency 1 and 2;
  * through `fairray sweep` with backend `train` (Ray Train TorchTrainer per trial), concurrency 1 and 2.
Ratios are wall-time(sweep) / wall-time(in-process) at equal concurrency.

    python benchmarks/overhead.py [--trials 6] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

SPEC = Path(__file__).resolve().parents[1] / "search_spaces" / "minmaxgap.yaml"


def _spec(tmp: Path, name: str, trials: int, epochs: int, concurrency: int, backend: str) -> Path:
    raw = yaml.safe_load(SPEC.read_text())
    raw.update(name=name)
    raw["tracking"]["experiment"] = name
    raw["train"]["epochs"] = epochs
    raw["search"]["sampler"] = "random"  # configurations independent of results: same sequence every sweep
    raw["budget"].update(num_samples=trials, max_concurrent=concurrency, seed=0)
    raw["resources"]["backend"] = backend
    raw["storage"]["path"] = str(tmp / name)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _sweep(path: Path) -> tuple[float, list[dict]]:
    from fairray.config import load_spec
    from fairray.frontier.query import load_sweep
    from fairray.sweep import run_sweep

    t0 = time.perf_counter()
    out = run_sweep(load_spec(path), verbose=0)
    wall = time.perf_counter() - t0
    assert out.n_finished == out.n_trials, out
    sweep = load_sweep(out.tracking_uri, out.experiment, out.sweep_run_id)
    return wall, [dict(t.params) for t in sweep.trials]


def _one(args: tuple[dict, dict]) -> float:
    import torch

    from fairray.config import build_spec
    from fairray.data import prepare
    from fairray.train import LocalSession, run_trial

    raw, params = args
    torch.set_num_threads(1)
    data = prepare(build_spec(raw, "bench").dataset)
    with tempfile.TemporaryDirectory() as d:
        run_trial(raw, params, data, LocalSession(d))
    return 0.0


def _in_process(raw: dict, configs: list[dict], concurrency: int) -> float:
    parsed = [(raw, {k: yaml.safe_load(v) for k, v in c.items()}) for c in configs]
    t0 = time.perf_counter()
    if concurrency == 1:
        for a in parsed:
            _one(a)
    else:
        with ProcessPoolExecutor(concurrency) as pool:
            list(pool.map(_one, parsed))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        configs = None
        for concurrency in (1, 2):
            fn_wall, fn_configs = _sweep(_spec(tmp, f"fn{concurrency}", args.trials, args.epochs, concurrency,
                                               "function"))
            tr_wall, tr_configs = _sweep(_spec(tmp, f"tr{concurrency}", args.trials, args.epochs, concurrency,
                                               "train"))
            configs = configs or fn_configs
            same = sorted(map(json.dumps, fn_configs)) == sorted(map(json.dumps, configs)) == \
                sorted(map(json.dumps, tr_configs))
            raw = yaml.safe_load(_spec(tmp, "ip", args.trials, args.epochs, concurrency, "function").read_text())
            ip_wall = _in_process(raw, configs, concurrency)
            rows.append((concurrency, ip_wall, fn_wall, tr_wall, same))
    print(f"\n{args.trials} trials x {args.epochs} epochs (MLP on built-in ser3), wall seconds; ratio = sweep / "
          "in-process at equal concurrency")
    print(f"{'concurrency':>11} {'in-process':>10} {'sweep:function':>15} {'ratio':>6} {'sweep:train':>12} "
          f"{'ratio':>6}  same configs")
    for c, ip, fn, tr, same in rows:
        print(f"{c:>11} {ip:>10.1f} {fn:>15.1f} {fn / ip:>6.2f} {tr:>12.1f} {tr / ip:>6.2f}  {same}")
    for c, ip, fn, tr, _ in rows:
        print(f"per-trial overhead at concurrency {c}: function {(fn - ip) / args.trials * c:.1f} s, "
              f"train {(tr - ip) / args.trials * c:.1f} s (train vs function: {tr / fn:.2f}x)")


if __name__ == "__main__":
    main()
