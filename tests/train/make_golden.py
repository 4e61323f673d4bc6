"""Golden final metrics of a few short sweep trials, for ``test_regression.py``.

``golden_metrics.json`` freezes what the training loop computes (``fairray.train.run_trial`` with every
method of ``search_spaces/minmaxgap.yaml`` and ``search_spaces/idi.yaml``, 4 epochs each) so that a rewrite
of the loop, methods or models can be shown not to change any sweep's results.

The committed golden file was produced from commit f62375f8f41a05c0f279f54290613fdadedafcfe (the sha is also
stored in the file), with ``PYTHONPATH`` pointing to a git worktree of that commit:

    git worktree add /tmp/golden-wt <sha>
    PYTHONPATH=/tmp/golden-wt .venv/bin/python tests/train/make_golden.py    # writes tests/train/golden_metrics.json

Only regenerate it on purpose (a deliberate change of results), never to make the regression test pass.

Each configuration is one trial as a sweep runs it: the spec with ``--set`` overrides (``train.epochs=4``)
as ``raw``, the sampled values of its search space as ``params``, the dataset prepared from the trial's
resolved ``dataset`` section, a :class:`~fairray.train.LocalSession` in a temporary folder, no Ray and no
MLflow (``tracking=None``), one torch thread (as ``tests/conftest.py`` sets for every test).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden_metrics.json"
EPOCHS = 4

# (name, spec file, sampled params): values from each spec's search space (honouring its `when:` conditions)
CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    # minmaxgap.yaml searches only minmaxgap's knobs (method.name is not a dimension; erm rejects the
    # method section's p/lambda0/... keys), so both configurations are minmaxgap.
    ("minmaxgap_p1_lmax2", "minmaxgap.yaml",
     {"method.lambda_max": 2.0, "method.eps": 0.02, "method.eta": 2.0, "method.p": 1, "train.lr": 0.001,
      "model.hidden": 128}),
    ("minmaxgap_p2_lmax15", "minmaxgap.yaml",
     {"method.lambda_max": 15.0, "method.eps": 0.05, "method.eta": 5.0, "method.p": 2, "train.lr": 0.002,
      "model.hidden": 64}),
    ("idi_erm", "idi.yaml", {"method.name": "erm", "train.lr": 0.0005}),
    ("idi_rw", "idi.yaml", {"method.name": "rw", "dataset.groups.name": "attribute", "train.lr": 0.0005}),
    ("idi_ds", "idi.yaml", {"method.name": "ds", "dataset.groups.name": "attribute", "train.lr": 0.001}),
    ("idi_gdro", "idi.yaml",
     {"method.name": "gdro", "dataset.groups.name": "attribute", "method.eta_q": 0.1, "train.lr": 0.0005}),
    ("idi_gadro", "idi.yaml",
     {"method.name": "gadro", "dataset.groups.name": "attribute", "method.eta_q": 0.05, "method.C": 2,
      "train.lr": 0.0005}),
    ("idi_pgdro_pseudo", "idi.yaml",
     {"method.name": "pgdro", "dataset.groups.name": "pseudo", "method.eta_q": 0.05, "method.C": 2,
      "train.lr": 0.0005}),
    ("idi_gdro_kmeans4", "idi.yaml",
     {"method.name": "gdro", "dataset.groups.name": "kmeans", "dataset.groups.params.K": 4, "method.eta_q": 0.1,
      "train.lr": 0.0005}),
    ("idi_lff", "idi.yaml", {"method.name": "lff", "method.q": 0.7, "method.ema_alpha": 0.7, "train.lr": 0.0005}),
    ("idi_disent", "idi.yaml",
     {"method.name": "disent", "method.q": 0.7, "method.ema_alpha": 0.9, "method.lambda_dis": 2,
      "method.lambda_swap": 0.5, "train.lr": 0.0005}),
]

_UTILITIES = ("weighted_f1", "macro_f1", "acc", "uar")
_LANGUAGES = ("en", "de", "pl")


def specs_dir() -> Path:
    """``search_spaces/`` of the checkout whose fairray is imported (the golden worktree, or the code under
    test), else the one beside this file."""
    import fairray

    beside = Path(fairray.__file__).resolve().parents[1] / "search_spaces"
    return beside if beside.is_dir() else HERE.parents[1] / "search_spaces"


def spec_digest(spec_file: str) -> str:
    return hashlib.sha256((specs_dir() / spec_file).read_bytes()).hexdigest()


def metric_keys(final: Mapping[str, float]) -> list[str]:
    """The recorded subset of a trial's final metrics (only keys the trial returned)."""
    keys = ["dev/loss", "test/loss", "selected_epoch"]
    for split in ("dev", "test"):
        keys += [f"{split}/{u}" for u in _UTILITIES]
        keys += [f"{split}/{u}/language:{lang}" for u in ("weighted_f1", "macro_f1") for lang in _LANGUAGES]
        for gap in ("tpr_gap", "weighted_f1_gap", "dp_gap", "acc_gap"):
            keys += [f"{split}/{gap}/gender", f"{split}/{gap}/gender/worst:language",
                     f"{split}/{gap}/gender/mean:language"]
        keys += [f"{split}/tpr_gap/gender/language:{lang}" for lang in _LANGUAGES]
        keys += [f"{split}/n", f"{split}/n_excluded/gender"]
    keys += sorted(k for k in final if k.startswith("groups/"))
    return [k for k in keys if k in final]


def _plain(value: Any) -> Any:
    v = float(value)
    return None if math.isnan(v) else v  # JSON has no NaN: null stands for it


def load_data(spec_file: str, params: Mapping[str, Any], cache: dict | None = None):
    """The trial's dataset as a sweep prepares it (one per distinct resolved ``dataset`` section)."""
    from fairray.config import load_spec, resolve_trial, to_plain
    from fairray.data import prepare

    loaded = load_spec(specs_dir() / spec_file, [f"train.epochs={EPOCHS}"])
    dataset = resolve_trial(loaded.raw, params, source=spec_file).spec.dataset
    key = json.dumps(to_plain(dataset), sort_keys=True, default=str)
    if cache is not None and key in cache:
        return loaded.raw, cache[key]
    data = prepare(dataset)  # no cache root: group sources are computed, never read from an old cache
    if cache is not None:
        cache[key] = data
    return loaded.raw, data


def run_config(spec_file: str, params: Mapping[str, Any], data_cache: dict | None = None) -> dict[str, Any]:
    """Run one configuration with the importable fairray and return what the golden file records."""
    import torch

    from fairray.train import LocalSession, run_trial

    torch.set_num_threads(1)
    raw, data = load_data(spec_file, params, data_cache)
    epochs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fairray-golden-") as d:
        final = run_trial(raw, dict(params), data, LocalSession(d), None, on_epoch=epochs.append)
    return {
        "metrics": {k: _plain(final[k]) for k in metric_keys(final)},
        # per-epoch what a sweep reports and logs: train/dev loss and the method's own logs (e.g. λ, q)
        "epochs": [{k: _plain(v) for k, v in sorted(m.items())
                    if k in ("train/loss", "dev/loss") or k.startswith("method/")} for m in epochs],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=GOLDEN)
    args = parser.parse_args(argv)
    import fairray

    src = Path(fairray.__file__).resolve().parents[1]
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "fairray"], cwd=src, capture_output=True,
                           text=True, check=True).stdout.strip()
    if dirty:
        sys.exit(f"fairray at {src} has uncommitted changes; produce goldens from a clean checkout:\n{dirty}")
    import torch

    out: dict[str, Any] = {"commit": sha, "torch": torch.__version__, "epochs": EPOCHS,
                           "configs": {}}
    cache: dict = {}
    for name, spec_file, params in CONFIGS:
        t = time.perf_counter()
        result = run_config(spec_file, params, cache)
        out["configs"][name] = {"spec": spec_file, "spec_sha256": spec_digest(spec_file), "params": params, **result}
        print(f"{name}: {time.perf_counter() - t:.1f}s  selected_epoch={result['metrics']['selected_epoch']:.0f} "
              f"dev/loss={result['metrics']['dev/loss']:.4f}", flush=True)
    args.out.write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")
    print(f"wrote {args.out} ({len(CONFIGS)} configurations, fairray {src} @ {sha[:7]})")


if __name__ == "__main__":
    main()
