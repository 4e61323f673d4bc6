"""Wall time of a sweep on native corpora with a cold feature cache vs a warm one, side by side in one run.

The same sweep (search_spaces/erm.yaml on real corpora read by the `manifest` adapter, eGeMAPS features)
runs twice against one cache folder: the first run extracts every clip (what every sweep would pay
without a cache), the second reads the cache. The benchmark checks that the second run extracted nothing
(cache files unchanged) and prints the ratio.

    python benchmarks/cache_sweep.py [--corpora emodb nemo] [--trials 4] [--epochs 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", nargs="+", default=["emodb", "nemo"])
    ap.add_argument("--root", default=os.environ.get("FAIRRAY_CORPORA", str(REPO.parent / "shared" / "corpora")))
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    from fairray.config import load_spec
    from fairray.data.corpora import CORPORA
    from fairray.sweep import run_sweep

    languages = sorted({str(CORPORA.get("manifest")().load(Path(args.root) / c)["language"].iloc[0])
                        for c in args.corpora})
    n_clips = sum(len(CORPORA.get("manifest")().load(Path(args.root) / c)) for c in args.corpora)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        raw = yaml.safe_load((REPO / "search_spaces" / "erm.yaml").read_text())
        raw["dataset"] = {"name": "corpora", "corpora": [{"adapter": "manifest", "root": str(Path(args.root) / c)}
                                                         for c in args.corpora],
                          "extractor": {"name": "opensmile_egemaps"}, "languages": languages,
                          "cache": str(tmp / "cache"), "extract_workers": args.workers}
        raw["train"]["epochs"] = args.epochs
        raw["budget"].update(num_samples=args.trials)
        raw["storage"]["path"] = str(tmp / "runs")
        spec = tmp / "spec.yaml"
        spec.write_text(yaml.safe_dump(raw))

        walls = []
        for _ in range(2):
            t0 = time.perf_counter()
            out = run_sweep(load_spec(spec), verbose=0)
            walls.append(time.perf_counter() - t0)
            assert out.n_finished == args.trials, out
            if len(walls) == 1:
                cached = {p: p.stat().st_mtime_ns for p in (tmp / "cache").rglob("*.npz")}
        unchanged = {p: p.stat().st_mtime_ns for p in (tmp / "cache").rglob("*.npz")} == cached
    print(f"\n{n_clips} clips ({', '.join(args.corpora)}), {args.trials} trials x {args.epochs} epochs, "
          f"eGeMAPS with {args.workers} extraction workers")
    print(f"sweep, cold cache (extracts every clip): {walls[0]:6.1f} s")
    print(f"sweep, warm cache (reads the cache):     {walls[1]:6.1f} s   ratio cold/warm {walls[0] / walls[1]:.2f}x")
    print(f"second sweep extracted nothing (cache entries unchanged): {unchanged}")


if __name__ == "__main__":
    main()
