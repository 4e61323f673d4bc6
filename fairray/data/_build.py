"""Rebuild the built-in dataset from the real corpora, through the data layer.

The built-in dataset ``ser3`` ships inside the package: openSMILE eGeMAPSv02 functionals (88 per clip)
and resemblyzer speaker embeddings (256 per clip) of every clip of RAVDESS (en), EmoDB (de) and nEMO
(pl), with speaker, gender, age, language and emotion. This module is the code that produced it::

    fairray data build-builtin --corpora /path/to/corpora

``/path/to/corpora`` holds one folder per corpus in the ``manifest`` layout (``manifest.csv`` with
``path`` relative to that folder, ``speaker``, ``gender``, ``language``, ``emotion`` ...) and the audio
it names. Corpora are read by the ``manifest`` adapter and features come from the registered extractors
through the feature cache (a rebuild after an interruption resumes from what is cached); the outputs are
written atomically, and a clip the audio scan would skip is an error here: the built-in dataset is
complete or not written at all.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from fairray._atomic import atomic_write_bytes
from fairray.errors import DataError

#: Corpora of the built-in dataset, in the order they are stacked.
BUILTIN_CORPORA = ("ravdess", "emodb", "nemo")
#: Manifest columns the builder keeps (everything a trial or a report reads).
META_COLUMNS = ("uid", "corpus", "speaker", "gender", "age", "language", "emotion", "duration_s", "path")


def read_manifest(corpus_dir: str | os.PathLike) -> pd.DataFrame:
    """A corpus folder in the manifest layout, read and validated by the ``manifest`` adapter."""
    from fairray.data.corpora import CORPORA

    return CORPORA.get("manifest")().load(corpus_dir)


def _features(table: pd.DataFrame, root: Path, extractor, cache, workers: int, progress: bool,
              keys: list[str]) -> np.ndarray:
    cached = cache.get_or_compute(table, root, extractor, progress=progress, num_workers=workers)
    keys.append(cached.key)
    if cached.report.skipped:
        raise DataError(f"{root}: the built-in dataset must be complete, but the audio scan skips clips: "
                        f"{cached.report.format(max_listed=5)}")
    order = pd.Index(cached.uids).get_indexer(table["uid"])
    return np.asarray(cached.X, dtype=np.float32)[order]


def build_builtin(
    corpora_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    corpora: tuple[str, ...] = BUILTIN_CORPORA,
    workers: int = 2,
    progress: bool = True,
    cache_root: str | os.PathLike | None = None,
) -> Path:
    """Extract features for every clip and write the dataset files.

    Returns the path of the written ``.npz``. Files written: ``ser3.npz``
    (``X`` float32 [N, 88], ``feature_names``, ``speaker_emb`` float32 [N, 256]), ``ser3_meta.csv`` and
    ``ser3.json`` (provenance: extractors, versions, cache keys of the inputs).
    """
    from fairray.data.features import FeatureCache, make_extractor

    root = Path(corpora_root)
    for name in corpora:
        if not (root / name).is_dir():
            raise DataError(f"{root / name}: corpus folder not found; pass --corpora pointing at the folder "
                            f"holding {list(corpora)}")
    cache = FeatureCache(cache_root or Path("fairray_runs") / "features")
    egemaps = make_extractor("opensmile_egemaps")
    speaker = make_extractor("resemblyzer")
    tables, X, emb, keys = [], [], [], []
    for name in corpora:
        table = read_manifest(root / name)
        tables.append(table)
        X.append(_features(table, root / name, egemaps, cache, workers, progress, keys))
        emb.append(_features(table, root / name, speaker, cache, 1, progress, keys))
    meta = pd.concat(tables, ignore_index=True)[list(META_COLUMNS)]
    features, speaker_emb = np.concatenate(X), np.concatenate(emb)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, X=features, feature_names=np.array(egemaps.feature_names()), speaker_emb=speaker_emb)
    atomic_write_bytes(out / "ser3.npz", buf.getvalue())
    atomic_write_bytes(out / "ser3_meta.csv", meta.to_csv(index=False).encode())
    provenance = {
        "name": "ser3",
        "extractor": "opensmile.eGeMAPSv02.Functionals",
        "extractor_fingerprint": egemaps.fingerprint(),
        "speaker_extractor": "resemblyzer (GE2E, 256-d, L2-normalised)",
        "corpora": list(corpora),
        "n_clips": int(len(meta)),
        "n_features": int(features.shape[1]),
        # content keys of the inputs (audio heads + sizes, extractor and parameters), from the feature cache
        "input_fingerprint": hashlib.sha256("".join(keys).encode()).hexdigest(),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_bytes(out / "ser3.json", (json.dumps(provenance, indent=2, default=str) + "\n").encode())
    return out / "ser3.npz"
