"""Feature extraction throughput and the feature cache, side by side in one run on the real shared corpora.

For each extractor: model load time, a cold pass through :class:`FeatureCache` (decode + check +
extract + write; clips/s), then a warm pass from a fresh cache object with the in-process file-digest
memo cleared (what another process or trial sees: table fingerprint + read of the entry). The warm
pass must be all hits with zero extractions; the ratio is cold/warm wall time.

Clips: ``--limit`` clips spread evenly over RAVDESS (en), EmoDB (de) and nEMO (pl); ``minilm``
embeds their transcripts. ``hf_ssl`` runs a tiny *random* WavLM (hidden 32, 2 layers): its
throughput says nothing about a real WavLM Base+ (95 M parameters), which is far slower.

    python benchmarks/extraction.py [--limit 200] [--corpora PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

CORPORA = ("ravdess", "emodb", "nemo")


def _table(root: Path, limit: int) -> pd.DataFrame:
    from fairray.data.corpora import CORPORA as ADAPTERS

    per = [limit // len(CORPORA) + (i < limit % len(CORPORA)) for i in range(len(CORPORA))]
    parts = []
    for name, n in zip(CORPORA, per, strict=True):
        table = ADAPTERS.get("manifest")().load(root / name)
        picked = table.iloc[np.linspace(0, len(table) - 1, n).round().astype(int)].copy()
        picked["path"] = name + "/" + picked["path"]  # relative to the corpora root
        parts.append(picked[["uid", "corpus", "path", "language", "text"]])
    return pd.concat(parts, ignore_index=True)


def _tiny_wavlm(folder: Path) -> str:
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    torch.manual_seed(0)
    config = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(32, 32, 32), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
                         num_conv_pos_embeddings=16, feat_extract_norm="layer", do_stable_layer_norm=True)
    WavLMModel(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True,
                             return_attention_mask=True).save_pretrained(folder)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200, help="clips (spread over the three corpora)")
    parser.add_argument("--corpora", default=os.environ.get("FAIRRAY_CORPORA",
                                                            str(Path(__file__).resolve().parents[2] / "shared" / "corpora")))
    args = parser.parse_args()

    root = Path(args.corpora)
    table = _table(root, args.limit)
    with tempfile.TemporaryDirectory(prefix="fairray-bench-") as tmp:
        _run(root, table, Path(tmp))


def _run(root: Path, table: pd.DataFrame, tmp: Path) -> None:
    import torch

    from fairray.data import audio
    from fairray.data.features import FeatureCache, make_extractor
    from fairray.data.features import _cache as cache_module

    torch.set_num_threads(1)
    print(f"{len(table)} clips ({', '.join(f'{c} {k}' for c, k in table['corpus'].value_counts().items())}) "
          f"from {root}; {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch threads 1")
    t0 = time.perf_counter()
    report = audio.scan_audio(table, root)
    scan_s = time.perf_counter() - t0
    seconds = sum(e.duration_s or 0 for e in report.entries)
    print(f"audio scan (decode + checks only): {scan_s:.2f} s = {len(table) / scan_s:.0f} clips/s; "
          f"{seconds / 60:.1f} min of audio")
    print(report.format(max_listed=10))

    wavlm = _tiny_wavlm(tmp / "tiny-wavlm")
    runs = [
        ("opensmile_egemaps", {}, 1, ""),
        ("opensmile_egemaps", {}, 2, "2 processes"),
        ("opensmile_compare", {}, 1, ""),
        ("resemblyzer", {}, 1, "after JIT warm-up"),
        ("hf_ssl", {"model_path": wavlm, "layers": "all", "weighted_sum": True, "device": "cpu"}, 1,
         "TINY RANDOM WavLM (32-d, 2 layers), not WavLM Base+"),
        ("minilm", {"device": "cpu"}, 1, "on the clips' transcripts"),
    ]
    rows = []
    for name, params, workers, note in runs:
        extractor = make_extractor(name, **params)
        t0 = time.perf_counter()
        extractor.load()
        load_s = time.perf_counter() - t0
        warmup_s = None
        if name == "resemblyzer":
            t0 = time.perf_counter()
            extractor.extract([audio.load_audio(root / table["path"].iloc[0])])
            warmup_s = time.perf_counter() - t0
        cache_dir = tmp / f"cache-{name}-{workers}"
        cold_cache = FeatureCache(cache_dir)
        t0 = time.perf_counter()
        cold = cold_cache.get_or_compute(table, root, extractor, progress=False, num_workers=workers)
        cold_s = time.perf_counter() - t0
        cache_module._DIGESTS.clear()  # the warm pass re-reads file heads, as another process would
        warm_cache = FeatureCache(cache_dir)
        t0 = time.perf_counter()
        warm = warm_cache.get_or_compute(table, root, make_extractor(name, **params), progress=False)
        warm_s = time.perf_counter() - t0
        assert warm.hit and warm_cache.stats.extractions == 0 and np.array_equal(warm.X, cold.X, equal_nan=True)
        stats = warm_cache.stats
        rows.append({
            "extractor": name + (f" ×{workers}" if workers > 1 else ""),
            "dim": cold.X.shape[1],
            "load s": round(load_s, 2),
            "warm-up s": "-" if warmup_s is None else round(warmup_s, 2),
            "cold s": round(cold_s, 2),
            "clips/s": round(len(table) / cold_s, 1),
            "extracted": cold_cache.stats.extractions,
            "warm s": round(warm_s, 3),
            "hit rate": f"{100 * stats.hits / (stats.hits + stats.misses):.0f}%",
            "warm extractions": stats.extractions,
            "cold/warm": round(cold_s / warm_s),
            "note": note,
        })
        print(f"  done {rows[-1]['extractor']}: {rows[-1]['clips/s']} clips/s", flush=True)
    print()
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
