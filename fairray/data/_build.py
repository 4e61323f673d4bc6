"""Rebuild the built-in dataset from the real corpora.

The built-in dataset ``ser3`` ships inside the package: openSMILE eGeMAPSv02
functionals (88 features per clip) of every clip of RAVDESS (en), EmoDB (de)
and nEMO (pl), with speaker, gender, age, language and emotion. This module
is the code that produced it::

    fairray data build-builtin --corpora /path/to/corpora

``/path/to/corpora`` holds one folder per corpus with a ``manifest.csv``
(``path`` relative to that folder, ``speaker``, ``gender``, ``language``,
``emotion`` ...) and the audio it names. Extraction runs in a process pool
with a progress bar; the outputs are written atomically, so an interrupted
build never leaves a half-written dataset behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
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
REQUIRED_MANIFEST_COLUMNS = ("path", "speaker", "gender", "language", "emotion")

_SMILE = None


def _smile():
    global _SMILE
    if _SMILE is None:
        try:
            import opensmile
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise DataError(
                "openSMILE is not installed: rebuilding the built-in dataset needs "
                "`pip install 'fairray[features]'` and `pip install --no-deps resemblyzer==0.1.4`"
            ) from exc
        _SMILE = opensmile.Smile(
            feature_set=opensmile.FeatureSet.eGeMAPSv02,
            feature_level=opensmile.FeatureLevel.Functionals,
        )
    return _SMILE


def _extract_one(path: str) -> np.ndarray:
    import soundfile as sf

    signal, sr = sf.read(path, dtype="float32", always_2d=True)
    if signal.shape[0] == 0:
        raise DataError(f"{path}: empty audio file; remove it from the manifest or replace it")
    signal = signal.mean(axis=1)
    frame = _smile().process_signal(signal, sr)
    return frame.to_numpy(dtype=np.float32).reshape(-1)


def feature_names() -> list[str]:
    """Names of the 88 eGeMAPSv02 functionals, in column order."""
    return list(_smile().feature_names)


def read_manifest(corpus_dir: Path) -> pd.DataFrame:
    """Read ``corpus_dir/manifest.csv`` and check the columns fairray needs."""
    manifest = corpus_dir / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{manifest}: no manifest.csv; each corpus folder needs one (see `fairray data --help`)")
    df = pd.read_csv(manifest, dtype={"speaker": str})
    missing = [c for c in REQUIRED_MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{manifest}: missing column(s) {missing}; expected at least {list(REQUIRED_MANIFEST_COLUMNS)}")
    for column in ("gender", "language", "emotion", "speaker"):
        empty = df[column].isna()
        if empty.any():
            row = int(np.flatnonzero(empty)[0]) + 2  # header is line 1
            raise DataError(f"{manifest}: line {row}, column {column!r} is empty; fill it in or drop the row")
    if "corpus" not in df.columns:
        df["corpus"] = corpus_dir.name
    if "age" not in df.columns:
        df["age"] = np.nan
    if "duration_s" not in df.columns:
        df["duration_s"] = np.nan
    df["uid"] = df["corpus"].astype(str) + "/" + df["path"].astype(str)
    return df


def _fingerprint(corpus_dirs: list[Path]) -> str:
    """Content key of the inputs: manifests plus each audio file's name and size."""
    digest = hashlib.sha256()
    for corpus_dir in corpus_dirs:
        digest.update((corpus_dir / "manifest.csv").read_bytes())
        for rel in sorted(pd.read_csv(corpus_dir / "manifest.csv")["path"]):
            digest.update(f"{rel}:{(corpus_dir / rel).stat().st_size}".encode())
    return digest.hexdigest()


def build_builtin(
    corpora_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    corpora: tuple[str, ...] = BUILTIN_CORPORA,
    workers: int = 2,
    progress: bool = True,
) -> Path:
    """Extract eGeMAPSv02 functionals for every clip and write the dataset files.

    Returns the path of the written ``.npz``. Files written: ``ser3.npz``
    (``X`` float32 [N, 88], ``feature_names``, ``speaker_emb`` float32 [N, 256]), ``ser3_meta.csv`` and
    ``ser3.json`` (provenance: extractor, versions, input fingerprint).
    """
    from tqdm import tqdm

    root = Path(corpora_root)
    corpus_dirs = [root / name for name in corpora]
    for d in corpus_dirs:
        if not d.is_dir():
            raise DataError(f"{d}: corpus folder not found; pass --corpora pointing at the folder holding {list(corpora)}")
    meta = pd.concat([read_manifest(d) for d in corpus_dirs], ignore_index=True)
    paths = [str(root / c / p) for c, p in zip(meta["corpus"], meta["path"], strict=True)]
    for p in paths:
        if not os.path.isfile(p):
            raise DataError(f"{p}: audio file named in a manifest does not exist")

    with ProcessPoolExecutor(max_workers=workers) as pool:
        rows = list(tqdm(pool.map(_extract_one, paths, chunksize=16), total=len(paths),
                         desc="eGeMAPSv02", unit="clip", disable=not progress))
    features = np.stack(rows).astype(np.float32)
    if not np.isfinite(features).all():
        bad = int(np.flatnonzero(~np.isfinite(features).all(axis=1))[0])
        raise DataError(f"{paths[bad]}: openSMILE returned non-finite features; check the audio")

    speaker_emb = _speaker_embeddings(paths, progress)

    import opensmile

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = meta[list(META_COLUMNS)]
    buf = _npz_bytes(X=features, feature_names=np.array(feature_names()), speaker_emb=speaker_emb)
    atomic_write_bytes(out / "ser3.npz", buf)
    atomic_write_bytes(out / "ser3_meta.csv", meta.to_csv(index=False).encode())
    provenance = {
        "name": "ser3",
        "extractor": "opensmile.eGeMAPSv02.Functionals",
        "opensmile_version": opensmile.__version__,
        "speaker_extractor": "resemblyzer (GE2E, 256-d, L2-normalised)",
        "corpora": list(corpora),
        "n_clips": int(len(meta)),
        "n_features": int(features.shape[1]),
        "input_fingerprint": _fingerprint(corpus_dirs),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_bytes(out / "ser3.json", (json.dumps(provenance, indent=2) + "\n").encode())
    return out / "ser3.npz"


def _speaker_embeddings(paths: list[str], progress: bool, batch: int = 64) -> np.ndarray:
    """resemblyzer GE2E speaker embeddings [N, 256] of every clip (for k-means / pseudo-label groups)."""
    from tqdm import tqdm

    from fairray.data.audio import load_audio
    from fairray.data.features import make_extractor

    extractor = make_extractor("resemblyzer").load()
    rows = []
    for start in tqdm(range(0, len(paths), batch), desc="resemblyzer", unit="batch", disable=not progress):
        rows.append(extractor.extract([load_audio(p) for p in paths[start:start + batch]]))
    return np.concatenate(rows).astype(np.float32)


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()
