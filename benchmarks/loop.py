"""fairray's training loop against a plain hand-written PyTorch loop, side by side in one run.

Both train the same model on the same rows with the same optimiser, batch size, epochs and objective
(cross-entropy: fairray's ERM with ``loss: ce``, as ``search_spaces/minmaxgap.yaml`` declares it), evaluate the
dev split after every epoch keeping the best state, and evaluate that state on dev and test at the end
(what a plain loop for model selection does):

  * ``plain``: ``for x, y in batches: loss = CE(model(x), y); backward; step``, the epoch's mean training loss
    (``loss.item()``), a dev forward per epoch (dev loss, best state kept with ``deepcopy``) and, at the end,
    accuracy and weighted F1 on dev and test;
  * ``fairray``: :func:`fairray.train.run_trial` with ERM in a :class:`LocalSession` (no MLflow) — its
    batches, named inputs, method hooks, per-group dev report, best epoch on disk and checkpoints
    every ``train.checkpoint_interval_s`` (and after the last epoch).

Two workloads: the built-in data's MLP over 88 eGeMAPS features, and a tiny waveform CNN (``wav_cnn``)
over 0.5 s of 16 kHz audio per clip (synthetic tones: throughput does not depend on the signal).
Samples/s counts training samples (epochs x training rows) over the whole wall time of each loop; the
ratio is fairray / plain (target >= 0.9). On a machine shared with other jobs wall time measures the other jobs
too: the ratios of process CPU time (``cpu ratio``, ``cpu steps``; one torch thread) are printed beside them. The training steps alone are also timed side by side (``steps only``),
which separates the loop's mechanics (named inputs, hooks, accumulation-ready step) from its per-epoch services
(per-group dev report, checkpoint), reported as milliseconds added per epoch. ``--device cuda --precision bf16`` runs the same on a GPU
(``benchmarks/gpu_check.sh``), with peak GPU memory.

    python benchmarks/loop.py [--epochs 30] [--wave-epochs 3] [--repeats 3] [--device cpu] [--precision fp32]
                              [--workloads vector,waveform] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

SPEC = Path(__file__).resolve().parents[1] / "search_spaces" / "minmaxgap.yaml"
WAVE_SECONDS = 0.5


def _raw(model: dict, epochs: int, batch_size: int, device: str, precision: str) -> dict:
    raw = yaml.safe_load(SPEC.read_text())
    raw["method"] = {"name": "erm", "loss": "ce"}  # the plain loop's objective (ERM's default is class-balanced)
    raw["model"] = model
    raw["train"].update(epochs=epochs, batch_size=batch_size, sampler="uniform", precision=precision,
                        selection="best_dev_loss")
    raw["search"] = {"objectives": [{"metric": "dev/weighted_f1", "direction": "max"}]}
    raw["resources"]["gpus_per_worker"] = 1 if device == "cuda" else 0
    return raw


def _data(kind: str):
    from fairray.config import load_spec
    from fairray.inputs import SequenceStore
    from fairray.sweep import prepare_data

    data = prepare_data(load_spec(SPEC).spec)
    if kind == "vector":
        return data
    n, length = len(data.y), int(WAVE_SECONDS * 16_000)
    rng = np.random.default_rng(0)
    t = np.arange(length) / 16_000
    freq = 150.0 * (1 + data.y)  # one tone per class, random phase, noise
    wav = (np.sin(2 * np.pi * freq[:, None] * t[None, :] + rng.uniform(0, 6, (n, 1)))
           + 0.3 * rng.standard_normal((n, length))).astype(np.float32)
    store = SequenceStore("audio", "waveform", wav.reshape(-1), np.arange(n + 1) * length, max_length=length)
    return dataclasses.replace(data, X=np.zeros((n, 0), np.float32), extra_inputs={"audio": store})


class _Clock:
    """Wall and process CPU time of a block (the device synchronised at the end): ``.wall``, ``.cpu``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> _Clock:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0


def _scores(logits: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[float, float]:
    """Accuracy and weighted F1 of argmax predictions (what a hand-written loop reports at the end)."""
    pred = logits.argmax(dim=1)
    confusion = torch.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp, support = confusion.diag().double(), confusion.sum(dim=1).double()
    f1 = 2 * tp / (support + confusion.sum(dim=0).double()).clamp(min=1)
    return float(tp.sum() / len(y)), float((f1 * support).sum() / support.sum())


def plain_loop(data, raw: dict, device: torch.device, precision: str, evaluate: bool = True) -> tuple[float, float]:
    """What a user would write by hand: same model, batches of shuffled rows, the epoch's training loss, dev loss
    each epoch, best state; at the end the best state's accuracy and weighted F1 on dev and test.
    ``evaluate=False``: the training steps alone. Returns (wall s, CPU s)."""
    from fairray.config import build_spec
    from fairray.inputs import specs_of, take_inputs
    from fairray.models import build_model

    spec = build_spec(raw, "bench", check_space=False)
    torch.manual_seed(0)
    n_classes = len(data.classes)
    model = build_model(spec.model.name, spec.model.params, specs_of(data.inputs), n_classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.train.lr, weight_decay=spec.train.weight_decay)
    train, dev = data.indices("train"), data.indices("dev")
    stores = data.inputs
    y = torch.from_numpy(np.array(data.y))
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    best, best_state = float("inf"), None

    def evaluate_split(rows: np.ndarray) -> tuple[float, torch.Tensor]:
        model.eval()
        with torch.no_grad():
            out = []
            for i in range(0, len(rows), spec.train.eval_batch_size):
                idx = rows[i:i + spec.train.eval_batch_size]
                inputs = {k: v.to(device) for k, v in take_inputs(stores, idx).items()}
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    out.append(model(inputs).float())
            logits = torch.cat(out)
        return float(torch.nn.functional.cross_entropy(logits, y[rows].to(device))), logits

    with _Clock(device) as clock:
        for epoch in range(spec.train.epochs):
            model.train()
            order = np.random.default_rng(epoch).permutation(train)
            total = 0.0
            for i in range(0, len(order), spec.train.batch_size):
                idx = order[i:i + spec.train.batch_size]
                inputs = {k: v.to(device) for k, v in take_inputs(stores, idx).items()}
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    loss = torch.nn.functional.cross_entropy(model(inputs), y[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            assert np.isfinite(total / len(order))
            if not evaluate:
                best_state = best_state or {}
                continue
            dev_loss, _ = evaluate_split(dev)
            if dev_loss < best:
                best, best_state = dev_loss, copy.deepcopy(model.state_dict())
        if evaluate:  # the selected model on dev and test, as fairray's final report does
            model.load_state_dict(best_state)
            for rows in (dev, data.indices("test")):
                _, logits = evaluate_split(rows)
                _scores(logits.cpu(), y[rows], n_classes)
    assert best_state is not None
    return clock.wall, clock.cpu


def fairray_loop(data, raw: dict, device: torch.device) -> tuple[float, float]:
    from fairray.train import LocalSession, run_trial

    with tempfile.TemporaryDirectory(prefix="fairray-bench-") as d, _Clock(device) as clock:
        final = run_trial(raw, {}, data, LocalSession(d))
    assert np.isfinite(final["dev/loss"])
    return clock.wall, clock.cpu


def fairray_steps(data, raw: dict, device: torch.device) -> tuple[float, float]:
    """The training steps alone, as ``run_trial`` takes them (its sampler, batches of named inputs gathered on the
    device, the method's loss and ``on_step``, :func:`train_step` and the epoch's training loss), without
    evaluation and checkpoints: what the loop's mechanics cost against the plain loop's steps."""
    from fairray.config import resolve_trial
    from fairray.inputs import specs_of
    from fairray.methods import METHODS, SamplerInput
    from fairray.train.loop import Precision, _Rows, _steps, model_builder, param_groups, train_context, train_step

    spec = resolve_trial(raw, {}).spec
    with _Clock(device) as clock:
        ctx = train_context(data, spec.train.epochs)
        method = METHODS.get("erm")(spec.method.params, ctx)
        module = method.build_model(model_builder(spec, specs_of(data.inputs))).to(device)
        opt = torch.optim.AdamW(param_groups(module, spec.train.lr), lr=spec.train.lr,
                                weight_decay=spec.train.weight_decay)
        precision = Precision(spec.train.precision, device)
        inp = SamplerInput(data.indices("train"), data.y, data.attr, data.stratum, data.group)
        rows = _Rows(data)
        for epoch in range(spec.train.epochs):
            module.train()
            rng, crops = np.random.default_rng([0, epoch]), np.random.default_rng([0, epoch, 1])
            losses = []
            for step in _steps(method.batches(inp, spec.train.batch_size, rng, epoch, "uniform"),
                               spec.train.accumulate):
                losses.append(train_step(module, method, [rows.batch(idx, crops, device) for idx in step], opt,
                                         precision).loss)
            assert np.isfinite(np.mean(losses))
    return clock.wall, clock.cpu


def plain_steps(data, raw: dict, device: torch.device, precision: str) -> tuple[float, float]:
    """The plain loop's training steps alone (no dev evaluation)."""
    return plain_loop(data, raw, device, precision, evaluate=False)


WORKLOADS = ("vector", "waveform")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=30, help="epochs per run (30: the default sweep's)")
    ap.add_argument("--wave-epochs", type=int, default=3, help="epochs per run of the waveform workload")
    ap.add_argument("--repeats", type=int, default=3,
                    help="alternating runs of each loop; the median and the fastest run are shown")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: vector, waveform")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not chosen or set(chosen) - set(WORKLOADS):
        ap.exit(2, f"loop.py: --workloads takes a comma-separated list of {', '.join(WORKLOADS)}; "
                   f"got {args.workloads!r}\n")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # one thread for both: what a Tune trial gets with cpus_per_worker: 1
    workloads = {
        "vector": ("vector MLP (ser3, 88 features)", {"name": "mlp", "hidden": 128, "depth": 2, "dropout": 0.2}, 64,
                   args.epochs),
        "waveform": (f"waveform CNN ({WAVE_SECONDS} s @ 16 kHz)", {"name": "wav_cnn", "channels": 32, "layers": 5,
                                                                  "hidden": 32}, 32, args.wave_epochs),
    }
    load0 = os.getloadavg()
    rows = []
    for kind in chosen:
        label, model, batch_size, epochs = workloads[kind]
        data = _data(kind)
        raw = _raw(model, epochs, batch_size, args.device, args.precision)
        n = epochs * len(data.indices("train"))
        times: dict[str, list[tuple[float, float]]] = {"plain": [], "fairray": [], "plain steps": [],
                                                       "fairray steps": []}
        peaks = {}
        fairray_loop(data, _raw(model, 1, batch_size, args.device, args.precision), device)  # warm-up (imports)
        plain_loop(data, _raw(model, 1, batch_size, args.device, args.precision), device, args.precision)
        for _ in range(args.repeats):  # alternate, so drift hits both alike
            runs = (("plain", lambda d=data, r=raw: plain_loop(d, r, device, args.precision)),
                    ("fairray", lambda d=data, r=raw: fairray_loop(d, r, device)),
                    ("plain steps", lambda d=data, r=raw: plain_steps(d, r, device, args.precision)),
                    ("fairray steps", lambda d=data, r=raw: fairray_steps(d, r, device)))
            for name, fn in runs:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                times[name].append(fn())
                if device.type == "cuda":
                    peaks[name] = torch.cuda.max_memory_allocated() / 2**20
        wall = {k: float(np.median([w for w, _ in v])) for k, v in times.items()}
        cpu = {k: float(np.median([c for _, c in v])) for k, v in times.items()}
        fastest = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in times.items()}  # least disturbed
        p, f, ps, fs = wall["plain"], wall["fairray"], wall["plain steps"], wall["fairray steps"]
        rows.append({"workload": label, "train_samples": n, "plain_samples_per_s": n / p,
                     "fairray_samples_per_s": n / f, "ratio": p / f, "plain_s": p, "fairray_s": f,
                     "ratio_min": fastest["plain"][0] / fastest["fairray"][0],
                     "steps_ratio": ps / fs, "per_epoch_extra_ms": 1e3 * ((f - fs) - (p - ps)) / epochs,
                     "steps_ratio_min": fastest["plain steps"][0] / fastest["fairray steps"][0],
                     "cpu_ratio": cpu["plain"] / cpu["fairray"],
                     "cpu_ratio_min": fastest["plain"][1] / fastest["fairray"][1],
                     "cpu_steps_ratio": cpu["plain steps"] / cpu["fairray steps"],
                     "cpu_steps_ratio_min": fastest["plain steps"][1] / fastest["fairray steps"][1],
                     "cpu_per_epoch_extra_ms": 1e3 * ((cpu["fairray"] - cpu["fairray steps"])
                                                      - (cpu["plain"] - cpu["plain steps"])) / epochs,
                     "runs": {k: [list(t) for t in v] for k, v in times.items()},
                     **({f"peak_mib_{k}": v for k, v in peaks.items()} if peaks else {})})
    print(f"device {args.device}, precision {args.precision}, {args.epochs} epochs (waveform {args.wave_epochs}), "
          f"{args.repeats} alternating runs each, load average before {' '.join(f'{x:.1f}' for x in load0)}, "
          f"after {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{'workload':<36} {'plain samples/s':>16} {'fairray samples/s':>18} {'ratio':>11} {'steps only':>11} "
          f"{'+ms/epoch':>10} {'cpu ratio':>11} {'cpu steps':>11} {'cpu +ms/ep':>11}")
    for r in rows:
        extra = (f"   peak GPU MiB plain {r['peak_mib_plain']:.0f} / fairray {r['peak_mib_fairray']:.0f}"
                 if "peak_mib_plain" in r else "")
        pair = lambda key, r=r: f"{r[key]:.2f}/{r[key + '_min']:.2f}"  # noqa: E731
        print(f"{r['workload']:<36} {r['plain_samples_per_s']:>16.0f} {r['fairray_samples_per_s']:>18.0f} "
              f"{pair('ratio'):>11} {pair('steps_ratio'):>11} {r['per_epoch_extra_ms']:>10.1f} "
              f"{pair('cpu_ratio'):>11} {pair('cpu_steps_ratio'):>11} {r['cpu_per_epoch_extra_ms']:>11.1f}{extra}")
    print("ratio: whole loops (fairray / plain samples/s, wall time), median / fastest run of each; steps only: the "
          "training steps alone; +ms/epoch (medians): what fairray's per-epoch dev report, method hooks and "
          "checkpoints add beyond the plain loop's dev pass; cpu ...: the same from process CPU time (robust to "
          "other jobs on the machine)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
