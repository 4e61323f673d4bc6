"""Search quality: hypervolume of the dev Pareto front after N trials, per Optuna sampler, same seeds.

Every sampler runs the same spec (search_spaces/minmaxgap.yaml) with the same budget and seeds through
`fairray sweep`; the hypervolume is read back from MLflow by the same code as `fairray frontier`
(reference point: weighted-F1 0, worst-language TPR gap 1). The test-split hypervolume of the same
trials is printed beside it for reporting (selection never looks at test).

    python benchmarks/search_quality.py [--trials 24] [--epochs 15] [--seeds 0 1] [--samplers tpe nsga2 random gp]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

SPEC = Path(__file__).resolve().parents[1] / "search_spaces" / "minmaxgap.yaml"


def run(tmp: Path, sampler: str, seed: int, trials: int, epochs: int) -> tuple[float, float, float, int]:
    from fairray.config import load_spec
    from fairray.frontier.query import fronts, load_sweep
    from fairray.sweep import run_sweep

    name = f"{sampler}-s{seed}"
    raw = yaml.safe_load(SPEC.read_text())
    raw.update(name=name)
    raw["tracking"]["experiment"] = name
    raw["train"]["epochs"] = epochs
    raw["search"]["sampler"] = sampler
    raw["budget"].update(num_samples=trials, seed=seed)
    raw["train"]["seed"] = seed
    raw["storage"]["path"] = str(tmp / "runs")
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    t0 = time.perf_counter()
    out = run_sweep(load_spec(path), verbose=0)
    wall = time.perf_counter() - t0
    sweep = load_sweep(out.tracking_uri, out.experiment, out.sweep_run_id)
    dev = fronts(sweep)[0]
    test = fronts(sweep, split="test")[0]
    return dev.hypervolume, test.hypervolume, wall, int(dev.on_front.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--samplers", nargs="+", default=["tpe", "nsga2", "random", "gp"])
    args = ap.parse_args()
    results: dict[str, list[tuple[float, float, float, int]]] = {}
    with tempfile.TemporaryDirectory() as d:
        for seed in args.seeds:
            for sampler in args.samplers:
                results.setdefault(sampler, []).append(run(Path(d), sampler, seed, args.trials, args.epochs))
                print(sampler, seed, results[sampler][-1], flush=True)
    base = statistics.mean(r[0] for r in results["random"]) if "random" in results else None
    print(f"\nhypervolume of the dev front after {args.trials} trials x {args.epochs} epochs, seeds {args.seeds} "
          "(objectives: dev weighted-F1 max, dev worst-language TPR gap min; reference point 0, 1)")
    print(f"{'sampler':<8} {'dev HV mean':>11} {'per seed':>24} {'vs random':>9} {'test HV':>8} {'front':>6} "
          f"{'wall s':>7}")
    for sampler, rs in results.items():
        dev = [r[0] for r in rs]
        mean = statistics.mean(dev)
        ratio = f"{mean / base:.3f}" if base else "-"
        print(f"{sampler:<8} {mean:>11.4f} {' '.join(f'{v:.4f}' for v in dev):>24} {ratio:>9} "
              f"{statistics.mean(r[1] for r in rs):>8.4f} {statistics.mean(r[3] for r in rs):>6.1f} "
              f"{statistics.mean(r[2] for r in rs):>7.0f}")


if __name__ == "__main__":
    main()
