"""Per-epoch cost of GEAR's components against ERM on the same data, side by side in one run.

Every arm trains the same model plugin section on the same training rows with the same batches (the loop's
``train_step``: forward, method loss, backward, AdamW step), timed over whole epochs after one warm-up epoch;
the dev evaluation of the inference net is timed separately. Arms:

  * ``erm``: the trial's model as it is (one encoder per modality, its own head);
  * ``gear``: robust + biased encoder per modality, biased heads (GCE), IPW, swap on (swap_epochs 0), one
    Transformer layer in the fusion block; and GEAR with one component changed: ``w/o swap``, ``w/o gce``,
    ``w/o ipw``, ``no transformer`` (fusion_layers 0), ``IFL_LS`` (fusion_branches).

Data: the spec's dataset (default ``search_spaces/gear.yaml``: MELD's MiniLM features, extracted once into
``--cache``; minutes on two cores the first time), or the built-in data with ``--builtin`` (88 eGeMAPS features,
no download, seconds), or ``--mosi-synthetic N``: ``search_spaces/gear_mosi_sequences.yaml`` (an LSTM pair per
modality over MOSI's aligned sequences, regression: ERM and the robust prediction with L1) on a MulT-layout
pickle this script writes into a temporary folder with MOSI's shapes (50 aligned steps; GloVe 300, COVAREP 5,
FACET 20 per step; N training segments, dev and test a fifth of that; random frames, so only the cost means
anything). Prints one table: ms per training epoch, x ERM, ms per dev evaluation, trainable parameters.

    python benchmarks/gear_cost.py [--builtin] [--cache fairray_runs/gear_repro/features] [--epochs 3]
    python benchmarks/gear_cost.py --mosi-synthetic 1284     # MOSI's training size
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import numpy as np
import torch
import yaml

SPEC = Path(__file__).resolve().parents[1] / "search_spaces" / "gear.yaml"
MOSI_SPEC = SPEC.with_name("gear_mosi_sequences.yaml")
#: MulT's aligned MOSI: steps per segment, and features per step by modality.
MOSI_STEPS, MOSI_DIMS = 50, {"text": 300, "audio": 5, "vision": 20}
ARMS = {
    "erm": {"name": "erm", "loss": "ce"},
    "gear": {"name": "gear", "swap_epochs": 0},
    "gear w/o swap": {"name": "gear", "swap": False},
    "gear w/o gce": {"name": "gear", "swap_epochs": 0, "gce": False},
    "gear w/o ipw": {"name": "gear", "swap_epochs": 0, "ipw": False},
    "gear no transformer": {"name": "gear", "swap_epochs": 0, "fusion_layers": 0},
    "gear IFL_LS": {"name": "gear", "swap_epochs": 0, "fusion_branches": True},
}


class Arm:
    """One arm's method, training module and optimiser, built as the loop builds them."""

    def __init__(self, raw: dict, data, epochs: int) -> None:
        from fairray.config import build_spec
        from fairray.inputs import specs_of
        from fairray.methods import METHODS, SamplerInput
        from fairray.train.loop import Precision, model_builder, param_groups, train_context

        spec = build_spec(raw, "gear_cost")
        self.t, self.data, self.stores = spec.train, data, data.inputs
        torch.manual_seed(0)
        self.method = METHODS.get(spec.method.name)(spec.method.params, train_context(data, epochs + 1))
        self.module = self.method.build_model(model_builder(spec, specs_of(self.stores)))
        self.optimizer = torch.optim.AdamW(param_groups(self.module, self.t.lr), lr=self.t.lr,
                                           weight_decay=self.t.weight_decay)
        self.precision = Precision("fp32", torch.device("cpu"))
        self.sampler_input = SamplerInput(data.indices("train"), data.y, data.attr, data.stratum, data.group)
        self.params = sum(p.numel() for p in self.module.parameters() if p.requires_grad)

    def epoch(self, epoch: int) -> float:
        """Seconds of one training epoch's steps (batches assembled beforehand, outside the timing)."""
        from fairray.train.loop import _batch, _steps, train_step

        rng = np.random.default_rng([0, epoch])
        order = self.method.batches(self.sampler_input, self.t.batch_size, rng, epoch, self.method.sampler)
        batches = [_batch(self.data, idx, self.stores, rng) for step in _steps(order, 1) for idx in step]
        self.module.train()
        start = time.perf_counter()
        for b in batches:
            train_step(self.module, self.method, [b], self.optimizer, self.precision)
        return time.perf_counter() - start

    def dev(self) -> float:
        from fairray.train.loop import infer

        start = time.perf_counter()
        infer(self.method.inference_model(self.module), self.stores, self.data.indices("dev"), self.t.eval_batch_size,
              torch.device("cpu"))
        return time.perf_counter() - start


def write_mosi(folder: Path, n_train: int, seed: int = 0) -> Path:
    """A MulT-layout ``mosi_data.pkl`` with MOSI's shapes and random frames (front zero-padded to 50 steps)."""
    import pickle

    rng = np.random.default_rng(seed)
    data = {}
    for split, n in (("train", n_train), ("valid", max(n_train // 5, 8)), ("test", max(n_train // 5, 8))):
        lengths = rng.integers(5, MOSI_STEPS + 1, size=n)
        arrays = {}
        for modality, dim in MOSI_DIMS.items():
            values = rng.normal(size=(n, MOSI_STEPS, dim)).astype(np.float32)
            values[np.arange(MOSI_STEPS)[None, :] < (MOSI_STEPS - lengths)[:, None]] = 0.0
            arrays[modality] = values
        videos = [f"{split}{i // 10:03d}" for i in range(n)]
        arrays["labels"] = np.clip(rng.normal(size=(n, 1, 1)), -3, 3).astype(np.float32)
        arrays["id"] = np.array([[v, str(i), str(i + 1)] for i, v in enumerate(videos)], dtype=object)
        data[split] = arrays
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "mosi_data.pkl", "wb") as handle:
        pickle.dump(data, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--builtin", action="store_true", help="the built-in ser3 data instead of the spec's")
    parser.add_argument("--spec", default=str(SPEC))
    parser.add_argument("--cache", default="fairray_runs/gear_repro/features", help="feature cache of the spec's data")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per arm (after one warm-up epoch)")
    parser.add_argument("--mosi-synthetic", type=int, metavar="N", default=0,
                        help="GEAR's LSTMs over MOSI-shaped sequences (N training segments), written to a temp folder")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import tempfile

    from fairray.config import build_spec
    from fairray.data import prepare

    tmp = tempfile.TemporaryDirectory(prefix="gear_cost_")
    spec_path = MOSI_SPEC if args.mosi_synthetic else Path(args.spec)
    raw = yaml.safe_load(spec_path.read_text())
    raw.pop("ablations", None)
    raw["search"]["space"] = {}  # fixed arms, no sampling
    raw["dataset"].pop("ood", None)  # the OOD sets change no training cost
    if args.builtin:
        raw["dataset"] = {"name": "ser3"}
    elif args.mosi_synthetic:
        root = write_mosi(Path(tmp.name) / "mosi", args.mosi_synthetic)
        raw["dataset"]["corpora"] = [{"adapter": "mosi", "root": str(root), "options": {"sequences": True}}]
        raw["dataset"]["cache"] = str(Path(tmp.name) / "cache")
    else:
        raw["dataset"]["cache"] = args.cache
    data = prepare(build_spec(raw, str(spec_path)).dataset)
    regression = data.task == "regression"
    n_train = len(data.indices("train"))
    print(f"data: {'ser3 (built-in)' if args.builtin else raw['dataset']['corpora'][0]['adapter']}, {n_train} training "
          f"rows, inputs {', '.join(s.spec.describe() for s in data.inputs.values())}; batch "
          f"{raw['train']['batch_size']}, 1 CPU thread, median of {args.epochs} epochs per arm, interleaved; dev: best of 3")
    arms = {}
    for arm, method in ARMS.items():
        arm_raw = copy.deepcopy(raw)
        arm_raw["method"] = {**method, **({"loss": "l1"} if regression else {})}
        arms[arm] = Arm(arm_raw, data, args.epochs)
    # epochs interleaved across the arms (epoch 0 warms up): a change of machine load hits every arm alike
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    for epoch in range(args.epochs + 1):
        for arm, a in arms.items():
            seconds = a.epoch(epoch)
            if epoch:
                times[arm].append(seconds)
    rows = {arm: {"epoch_ms": 1000 * float(np.median(times[arm])), "dev_ms": 1000 * min(a.dev() for _ in range(3)),
                  "params": float(a.params)} for arm, a in arms.items()}
    base = rows["erm"]["epoch_ms"]
    print("load average (1, 5, 15 min): " + ", ".join(f"{v:.1f}" for v in os.getloadavg()) + f" on {os.cpu_count()} CPUs")
    print(f"{'arm':<22}{'ms/epoch':>10}{'x ERM':>8}{'dev ms':>9}{'params':>10}")
    for arm, r in rows.items():
        print(f"{arm:<22}{r['epoch_ms']:>10.0f}{r['epoch_ms'] / base:>8.2f}{r['dev_ms']:>9.0f}{int(r['params']):>10}")


if __name__ == "__main__":
    main()
