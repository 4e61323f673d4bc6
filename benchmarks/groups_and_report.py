"""Two costs of the IDI workflow, each measured side by side in one run and printed as ratios.

1. Group inference (METHODS §3.3) with the result cache cold vs warm: `prepare` of the built-in data under
   IDI's 1:20 imbalance with k-means (K = 16) and with leave-one-corpus-out pseudo-labels, first into an
   empty cache folder (fits the source), then again (reads the stored result). Both runs must give
   identical groups.
2. Bootstrap intervals of an ablation report: one shared speaker resample for all trials
   (`replicate_matrix`, what `fairray report` does) vs the same intervals computed per row with
   `speaker_bootstrap` plus one `paired_difference` per row against ERM (every trial's report is recomputed
   for each use). The predictions are real: models trained in-process on the built-in data.

    python benchmarks/groups_and_report.py [--n-boot 200] [--seeds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _imbalanced(groups: dict):
    from fairray.config import DatasetConfig, NamedParams

    majority = {"anger": "M", "neutral": "M", "fear": "F", "happiness": "F", "sadness": "F"}
    return DatasetConfig(resample=NamedParams("imbalance_1to20", {"label": "emotion", "majority": majority}),
                         groups=NamedParams(groups["name"], groups.get("params", {})))


def bench_groups() -> None:
    from fairray.data import prepare

    print("1. group inference, result cache cold vs warm (prepare of ser3 under 1:20 imbalance)")
    for groups in ({"name": "kmeans", "params": {"K": 16}}, {"name": "pseudo"}):
        with tempfile.TemporaryDirectory() as cache:
            cfg = _imbalanced(groups)
            t0 = time.perf_counter()
            cold = prepare(cfg, cache_root=cache)
            t1 = time.perf_counter()
            warm = prepare(cfg, cache_root=cache)
            t2 = time.perf_counter()
            same = np.array_equal(cold.group, warm.group) and np.array_equal(cold.group_prob, warm.group_prob)
            base = time.perf_counter()
            prepare(_imbalanced({"name": "attribute"}))
            t_attr = time.perf_counter() - base
            print(f"   {groups['name']:<7} cold {t1 - t0:6.2f} s   warm {t2 - t1:6.2f} s   ratio {(t1 - t0) / (t2 - t1):5.1f}x"
                  f"   (prepare with true groups: {t_attr:.2f} s; identical groups: {same})")


def _trained_predictions(seeds: int):
    """Test predictions of ERM and DS/RW/GDRO (true groups) trained for a few epochs, `seeds` seeds each."""
    import yaml

    from fairray.config import resolve_trial
    from fairray.data import prepare
    from fairray.train import LocalSession, run_trial

    raw = yaml.safe_load(REPO.joinpath("search_spaces", "idi.yaml").read_text())
    raw.pop("ablations")
    raw["train"]["epochs"] = 5
    data = prepare(resolve_trial(raw, {}).spec.dataset)
    out = {}
    for method in ("erm", "ds", "rw", "gdro"):
        preds = []
        for seed in range(seeds):
            with tempfile.TemporaryDirectory() as d:
                session = LocalSession(d)
                run_trial(raw, {"method.name": method, "train.seed": seed}, data, session)
                preds.append(_predictions_of(session, data))
        out[method] = preds
    return out


def _predictions_of(session, data):
    import torch

    from fairray.export._predict import load_export
    from fairray.metrics import Predictions, decide

    with session.latest_checkpoint() as ckpt:
        model, _, _ = load_export(ckpt)
    idx = data.indices("test")
    with torch.no_grad():
        prob = torch.softmax(model(torch.as_tensor(data.X[idx])), dim=1).numpy()
    meta_rows = data.meta.iloc[idx]
    return Predictions(uid=meta_rows["uid"].astype(str).to_numpy(), speaker=meta_rows["speaker"].astype(str).to_numpy(),
                       groups=data.groups_frame("test"), y_true=data.y[idx], y_pred=decide(prob, "single"),
                       prob=prob, classes=data.classes, attribute=data.attribute, stratum=data.stratum_name)


def bench_bootstrap(n_boot: int, seeds: int) -> None:
    from fairray.metrics import interval, paired_difference, replicate_matrix, speaker_bootstrap

    print(f"\n2. ablation intervals, {n_boot} replicates, 4 methods x {seeds} seeds of real test predictions")
    preds = _trained_predictions(seeds)
    keys = ["test/macro_f1", "test/acc", "test/tpr_gap/gender", "test/dp_gap/gender"]
    flat = [p for ps in preds.values() for p in ps]

    t0 = time.perf_counter()
    full, reps = replicate_matrix(flat, keys, n_boot=n_boot, seed=0)
    shared = {}
    for i, method in enumerate(preds):
        rows = slice(i * seeds, (i + 1) * seeds)
        shared[method] = [interval(full[rows].mean(0)[j], reps[rows].mean(0)[:, j]) for j in range(len(keys))]
        if method != "erm":
            d = reps[rows].mean(0) - reps[:seeds].mean(0)
            shared[method + "-erm"] = [interval(full[rows].mean(0)[j] - full[:seeds].mean(0)[j], d[:, j])
                                       for j in range(len(keys))]
    t_shared = time.perf_counter() - t0

    t0 = time.perf_counter()  # per row: one bootstrap per seed, one paired difference per seed and key vs ERM
    for method, ps in preds.items():
        for p in ps:
            speaker_bootstrap(p, keys, n_boot=n_boot, seed=0)
        if method != "erm":
            for p, e in zip(ps, preds["erm"], strict=True):
                for key in keys:
                    paired_difference(p, e, key, n_boot=n_boot, seed=0)
    t_naive = time.perf_counter() - t0
    print(f"   shared resample {t_shared:6.2f} s   per-row calls {t_naive:6.2f} s   ratio {t_naive / t_shared:5.1f}x")
    erm = shared["erm"][2]
    print(f"   e.g. ERM test TPR gap {erm.estimate:.3f} [{erm.lo:.3f}, {erm.hi:.3f}]; DS - ERM "
          f"{shared['ds-erm'][2].estimate:+.3f} [{shared['ds-erm'][2].lo:+.3f}, {shared['ds-erm'][2].hi:+.3f}]")
    print("   (per-row calls give intervals per seed, not of the seed mean: the shared resample is also the only "
          "way to get the latter)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    bench_groups()
    bench_bootstrap(args.n_boot, args.seeds)


if __name__ == "__main__":
    main()
