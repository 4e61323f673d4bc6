"""Per-epoch cost of each CBERL component against ERM on the same data, side by side in one run.

Every row is one epoch of :func:`fairray.train.run_trial` (the one loop, in a :class:`LocalSession`: training
steps, the dev report, a checkpoint) on the same MELD rows with MiniLM embeddings (``search_spaces/cberl.yaml``):

  * ``erm`` / ``erm focal``: an MLP (one hidden layer of 256) over the MiniLM vector, uniform batches;
  * ``cberl core``: every switch off (no GAN, concatenation instead of DJVAE, no Bi-LSTM, rho = 0, one head):
    the dialogue batches and the two-layer GCN alone;
  * ``+ djvae``, ``+ bilstm``, ``+ masking (rho 0.2)``, ``+ adaboost (5 heads)``, ``+ gan (r 1.0)``: the core
    plus one component; ``cberl full``: all of them (METHODS §3.12 defaults, synthetic rows from the first
    step: ``gan_warmup_epochs: 0``, so the clones' cost is in the epoch).

Seconds per epoch are the median of ``--repeats`` one-epoch trials; ``x erm`` divides by ERM's. With ``--dialogues
N`` only the first N dialogues of each split are kept (the same rows for every row of the table).

    python benchmarks/cberl_cost.py [--corpora ../shared/corpora] [--cache /tmp/features] [--dialogues 0]
                                    [--repeats 1] [--batch-size 64] [--rows "erm,cberl full"] [--dense]
                                    [--threads 1]

``--dense`` times every CBERL row twice, alternating per repeat: on the sparse window graph (an edge list, what
the method runs) and on the dense ``[B, B]`` adjacency of the first version (``CBERLNets.dense_graph``).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

SPEC = Path(__file__).resolve().parents[1] / "search_spaces" / "cberl.yaml"
CORE = {"augment_ratio": 0.0, "djvae": False, "context_lstm": False, "masking_rate": 0.0, "heads": 1}
ROWS: list[tuple[str, dict]] = [
    ("erm", {"method": {"name": "erm", "loss": "ce"}, "model.depth": 1}),
    ("erm focal", {"method": {"name": "erm", "loss": "focal"}, "model.depth": 1}),
    ("cberl core", {"method": {"name": "cberl", **CORE}}),
    ("+ djvae", {"method": {"name": "cberl", **CORE, "djvae": True}}),
    ("+ bilstm", {"method": {"name": "cberl", **CORE, "context_lstm": True}}),
    ("+ masking (rho 0.2)", {"method": {"name": "cberl", **CORE, "masking_rate": 0.2}}),
    ("+ adaboost (5 heads)", {"method": {"name": "cberl", **CORE, "heads": 5}}),
    ("+ gan (r 1.0)", {"method": {"name": "cberl", **CORE, "augment_ratio": 1.0, "gan_warmup_epochs": 0}}),
    ("cberl full", {"method": {"name": "cberl", "gan_warmup_epochs": 0}}),
]


def _subset(root: Path, dialogues: int, dst: Path) -> Path:
    for split in ("train", "dev", "test"):
        table = pd.read_csv(root / f"{split}_sent_emo.csv", dtype=str, keep_default_na=False)
        table[table["Dialogue_ID"].astype(int) < dialogues].to_csv(dst / f"{split}_sent_emo.csv", index=False)
    return dst


def _raw(base: dict, change: dict, batch_size: int) -> dict:
    raw = copy.deepcopy(base)
    raw["method"] = dict(change["method"])
    raw["model"]["depth"] = change.get("model.depth", raw["model"]["depth"])
    raw["train"].update(epochs=1, batch_size=batch_size, s_min=1)
    raw["search"] = {"objectives": [{"metric": "dev/weighted_f1", "direction": "max"}]}
    return raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", default=str(Path(__file__).resolve().parents[2] / "shared" / "corpora"))
    ap.add_argument("--cache", default=None, help="feature cache folder (MiniLM embeddings are computed once)")
    ap.add_argument("--dialogues", type=int, default=0, help="keep the first N dialogues per split (0 = all)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rows", default="", help="comma-separated labels of the rows to time (default: all)")
    ap.add_argument("--dense", action="store_true", help="also time each CBERL row on the dense [B, B] window "
                    "graph (the first version's path), alternating with the edge list, side by side")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: what a sweep trial with "
                    "resources.cpus_per_worker 1 uses; torch's default, one per core, competes with the machine's "
                    "other processes)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    from fairray.config import build_spec
    from fairray.methods.cberl import CBERLNets
    from fairray.sweep import prepare_data
    from fairray.train import LocalSession, run_trial

    root = Path(args.corpora) / "meld"
    with tempfile.TemporaryDirectory(prefix="cberl-cost-") as tmp:
        if args.dialogues:
            root = _subset(root, args.dialogues, Path(tmp))
        base = yaml.safe_load(SPEC.read_text())
        base["dataset"]["corpora"] = [{"adapter": "meld", "root": str(root), "options": {"metadata_only": True}}]
        base["dataset"]["cache"] = args.cache or str(Path(tmp) / "features")
        base["storage"]["path"] = str(Path(tmp) / "runs")
        data = prepare_data(build_spec(base, str(SPEC), check_space=False))
        n_train = len(data.indices("train"))
        print(f"MELD text (MiniLM 384-d): {n_train} training utterances, {len(data.indices('dev'))} dev; "
              f"batch size {args.batch_size}; median of {args.repeats} one-epoch trial(s)")
        print(f"{'configuration':<24}{'s / epoch':>10}{'x erm':>8}{'dev W-F1 (1 epoch)':>20}"
              + (f"{'dense s / epoch':>17}{'dense / edges':>15}" if args.dense else ""), flush=True)
        wanted = {r.strip() for r in args.rows.split(",") if r.strip()}
        with tempfile.TemporaryDirectory(prefix="warmup-") as d:  # untimed: the process's first trial pays the
            run_trial(_raw(base, ROWS[0][1], args.batch_size), {}, data, LocalSession(d))  # lazy imports, not ERM
        erm = None
        for label, change in ROWS:
            if wanted and label not in wanted and label != "erm":  # ERM is the unit of every ratio
                continue
            raw = _raw(base, change, args.batch_size)
            graphs = (False, True) if args.dense and change["method"]["name"] == "cberl" else (False,)
            times: dict[bool, list[float]] = {g: [] for g in graphs}
            for _ in range(args.repeats):
                for dense in graphs:  # alternating, so a load change hits both paths alike
                    CBERLNets.dense_graph = dense
                    with tempfile.TemporaryDirectory(prefix="trial-") as d:
                        t0 = time.perf_counter()
                        out = run_trial(raw, {}, data, LocalSession(d))
                        times[dense].append(time.perf_counter() - t0)
                    if not dense:  # the table's dev W-F1: the edge-list run's
                        final = out
            CBERLNets.dense_graph = False
            seconds = statistics.median(times[False])
            erm = erm or seconds  # the first row is ERM
            line = f"{label:<24}{seconds:>10.2f}{seconds / erm:>8.1f}{final['dev/weighted_f1']:>20.3f}"
            if True in times:
                dense_s = statistics.median(times[True])
                line += f"{dense_s:>17.2f}{dense_s / seconds:>15.2f}"
            print(line, flush=True)
        print(f"load average (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

if __name__ == "__main__":
    main()
