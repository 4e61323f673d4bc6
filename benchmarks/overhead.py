"""Overhead of running trials through `fairray sweep` vs. in-process, side by side in one run.

The same N trial configurations (sampled once by the first sweep, read back from MLflow) are run:
  * in-process, one after another (concurrency 1) and in a pool of 2 processes (concurrency 2);
  * through `fairray sweep` with backend `function` (loop inside the Tune trial) and backend `train` (Ray Train
    TorchTrainer per trial, one CPU worker; `train-reuse`: the same with ``resources.reuse_workers``, one worker
    group kept across a trial process's trials), at concurrency 1 and 2, each twice:
      - ``own Ray``:  the sweep starts its own local Ray cluster, as ``fairray sweep`` does on a workstation;
      - ``Ray up``:   the sweep joins a cluster that is already running (started and timed here, outside the
                      sweep), as on a cluster: Ray's start-up excluded, measured rather than subtracted.
Ratios are wall-time(sweep) / wall-time(in-process) at equal concurrency. The driver's one-time imports (Ray
Tune, MLflow's SQL store: paid once per ``fairray sweep`` command, as an in-process script pays torch's) are
done and timed before the first measurement, so every row starts from the same process state.

``--rounds N`` runs every row N times, interleaved (sweeps, then in-process, N times over), and reports each
row's best: load from other work on the machine only ever adds time.

    python benchmarks/overhead.py [--trials 6] [--epochs 10] [--backends function train] [--concurrency 1 2]
                                  [--modes own up] [--rounds 1]
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
# --backends choices: their sweeps' name prefix; "function-direct": backend function with tracking.writer false
BACKENDS = {"function": "fu", "function-direct": "fd", "train": "tr", "train-reuse": "tg"}


def _spec(tmp: Path, name: str, trials: int, epochs: int, concurrency: int, backend: str) -> Path:
    raw = yaml.safe_load(SPEC.read_text())
    raw.update(name=name)
    raw["tracking"]["experiment"] = name
    raw["train"]["epochs"] = epochs
    raw["search"]["sampler"] = "random"  # configurations independent of results: same sequence every sweep
    raw["budget"].update(num_samples=trials, max_concurrent=concurrency, seed=0)
    # "train-reuse": backend train on a worker group kept across a trial process's trials (resources.reuse_workers)
    raw["resources"].update(backend={"train-reuse": "train", "function-direct": "function"}.get(backend, backend),
                            num_workers=1, cpus_per_worker=1, **({"reuse_workers": True} if backend == "train-reuse" else {}))
    if backend == "function-direct":  # each trial process writes to the MLflow store itself (no writer actor)
        raw.setdefault("tracking", {})["writer"] = False
    raw["storage"]["path"] = str(tmp / name)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


class _CpuMeter:
    """CPU seconds used by this process and every process under it (the Ray cluster, its trial processes, a
    process pool) while the meter runs: unlike wall time, this does not grow when other work on the machine
    competes for the cores. Processes are sampled every ``every`` seconds (Ray's raylet does not collect its
    ended workers' times), so a process that ends loses at most its last ``every`` seconds."""

    def __init__(self, every: float = 0.2) -> None:
        import threading

        self.every, self.seen, self._stop = every, {}, threading.Event()
        self.base = self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> dict:
        import psutil

        me = psutil.Process()
        for p in [me, *me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                self.seen[p.pid, p.create_time()] = t.user + t.system
            except psutil.Error:
                pass
        return dict(self.seen)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._sample()
        return sum(v - self.base.get(k, 0.0) for k, v in self.seen.items())


def _sweep(path: Path, ray_up: bool) -> tuple[float, float, float, float, list[dict]]:
    """(sweep wall, its CPU seconds, Ray start of ``Ray up``, trial span, trial params); Ray's
    start is timed outside the sweep.

    The trial span runs from the first trial's MLflow run start to the last one's end: the sweep without its
    fixed costs (Ray start, the driver's MLflow set-up, the trial processes' start and imports, shutdown)."""
    import ray

    from fairray.config import load_spec
    from fairray.frontier.query import load_sweep
    from fairray.sweep import run_sweep

    start = 0.0
    if ray_up:
        t0 = time.perf_counter()
        ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False)
        start = time.perf_counter() - t0
    try:
        t0, meter = time.perf_counter(), _CpuMeter()
        out = run_sweep(load_spec(path), verbose=0)
        wall = time.perf_counter() - t0
        cpu = meter.stop()
    finally:
        if ray_up:
            ray.shutdown()
    assert out.n_finished == out.n_trials, out
    sweep = load_sweep(out.tracking_uri, out.experiment, out.sweep_run_id)
    from fairray.tracking import client

    infos = [client(out.tracking_uri).get_run(t.run_id).info for t in sweep.trials]
    span = (max(i.end_time for i in infos) - min(i.start_time for i in infos)) / 1000
    return wall, cpu, start, span, [dict(t.params) for t in sweep.trials]


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


def _in_process(raw: dict, configs: list[dict], concurrency: int) -> tuple[float, float]:
    """(wall, CPU seconds) of the trials run in this process or a pool of ``concurrency`` processes."""
    parsed = [(raw, {k: yaml.safe_load(v) for k, v in c.items()}) for c in configs]
    t0, meter = time.perf_counter(), _CpuMeter()
    if concurrency == 1:
        for a in parsed:
            _one(a)
    else:
        with ProcessPoolExecutor(concurrency) as pool:
            list(pool.map(_one, parsed))
    return time.perf_counter() - t0, meter.stop()


def _driver_imports() -> float:
    t0 = time.perf_counter()
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import ray.train.torch  # noqa: F401
    import ray.tune  # noqa: F401

    import fairray.sweep  # noqa: F401
    return time.perf_counter() - t0


def _load() -> str:
    import os

    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--backends", nargs="+", default=["function", "train"], choices=BACKENDS,
                    help="train-reuse: backend train with resources.reuse_workers (one worker group per trial process); "
                    "function-direct: backend function with tracking.writer false (trials write to MLflow themselves)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--modes", nargs="+", default=["own", "up"], choices=["own", "up"],
                    help="own: the sweep starts its own Ray; up: Ray already running")
    ap.add_argument("--rounds", type=int, default=1, help="repeat every sweep (alternating) and report the best")
    args = ap.parse_args()
    imports = _driver_imports()
    print(f"driver imports (once per `fairray sweep` command, excluded below): {imports:.1f} s; load {_load()}",
          flush=True)
    rows, configs, starts, spans, cpus = [], None, [], {}, {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for c in args.concurrency:
            walls, same, ips = {}, True, []
            for r in range(args.rounds):
                for backend in args.backends:
                    for mode in args.modes:
                        name = f"{BACKENDS[backend]}{c}{mode}{r}"
                        wall, cpu, start, span, got = _sweep(_spec(tmp, name, args.trials, args.epochs, c, backend),
                                                             mode == "up")
                        key = (backend, mode)
                        cpus[(*key, c)] = min(cpu, cpus.get((*key, c), cpu))
                        spans.setdefault((key, c), []).append(span)
                        if start:
                            starts.append(start)
                        configs = configs or got
                        same &= sorted(map(json.dumps, got)) == sorted(map(json.dumps, configs))
                        walls[key] = min(wall, walls.get(key, wall))
                        print(f"  concurrency {c} {backend:8s} {mode:3s} Ray: {wall:6.1f} s, trial span {span:5.1f} s, "
                              f"CPU {cpu:6.1f} s (load {_load()})", flush=True)
                raw = yaml.safe_load(_spec(tmp, "ip", args.trials, args.epochs, c, "function").read_text())
                ip, ip_cpu = _in_process(raw, configs, c)
                ips.append(ip)
                cpus["in-process", c] = min(ip_cpu, cpus.get(("in-process", c), ip_cpu))
                print(f"  concurrency {c} in-process      {ip:6.1f} s, CPU {ip_cpu:6.1f} s (load {_load()})",
                      flush=True)
            rows.append((c, min(ips), walls, same))
    heads = [f"{b} {'own Ray' if m == 'own' else 'Ray up'}" for b in args.backends for m in args.modes]
    print(f"\n{args.trials} trials x {args.epochs} epochs (MLP on built-in ser3), wall seconds, best of "
          f"{args.rounds} (ratio = sweep / in-process at equal concurrency); local Ray start measured "
          f"{min(starts, default=float('nan')):.1f}-{max(starts, default=float('nan')):.1f} s; load at the end "
          f"{_load()}")
    print(" | ".join(["concurrency", "in-process", *heads, "same configs"]))
    print(" | ".join(["---"] * (len(heads) + 3)))
    for c, ip, walls, same in rows:
        cells = [f"{walls[b, m]:.1f} s ({walls[b, m] / ip:.2f}x)" for b in args.backends for m in args.modes]
        print(" | ".join([str(c), f"{ip:.1f} s", *cells, str(same)]))
    print("CPU seconds (every process under this one, sampled: the cluster, its trial processes, the pool) and "
          "ratio to in-process: robust to other load on the machine, unlike wall time")
    for c, _, _, _ in rows:
        ip_cpu = cpus["in-process", c]
        cells = ", ".join(f"{b} {m} {cpus[b, m, c]:.1f} s ({cpus[b, m, c] / ip_cpu:.2f}x)" for b in args.backends
                          for m in args.modes)
        print(f"  concurrency {c}: in-process {ip_cpu:.1f} s, {cells}")
    for c, ip, _, _ in rows:
        fixed = ", ".join(f"{b} {m} {min(spans[(b, m), c]):.1f} s ({min(spans[(b, m), c]) / ip:.2f}x)"
                          for b in args.backends for m in args.modes)
        print(f"first trial start to last trial end at concurrency {c} (no fixed costs): {fixed}")
    for c, ip, walls, _ in rows:
        per = ", ".join(f"{b} {m} {(walls[b, m] - ip) / args.trials * c:.2f} s" for b in args.backends
                        for m in args.modes)
        print(f"overhead per trial slot at concurrency {c} ((sweep - in-process) / trials x concurrency): {per}")


if __name__ == "__main__":
    main()
