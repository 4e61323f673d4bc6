"""The shipped features are what the project's own extraction code computes from the real corpora."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fairray.data import DATASETS
from fairray.data._build import build_builtin, read_manifest
from fairray.errors import DataError

pytestmark = pytest.mark.corpora


def _subset(corpora, tmp_path, n=3):
    """A corpora folder of n real clips per corpus (manifests cut, audio symlinked)."""
    for name in ("ravdess", "emodb", "nemo"):
        src = corpora / name
        dst = tmp_path / "corpora" / name
        dst.mkdir(parents=True)
        manifest = pd.read_csv(src / "manifest.csv").iloc[::400].head(n)
        manifest.to_csv(dst / "manifest.csv", index=False)
        for rel in manifest["path"]:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            (dst / rel).symlink_to(src / rel)
    return tmp_path / "corpora"


def test_rebuild_reproduces_the_shipped_features(corpora, tmp_path):
    root = _subset(corpora, tmp_path)
    build_builtin(root, tmp_path / "out", workers=1, progress=False, cache_root=tmp_path / "cache")
    rebuilt = np.load(tmp_path / "out" / "ser3.npz")
    meta = pd.read_csv(tmp_path / "out" / "ser3_meta.csv")
    shipped_meta, shipped_X, _, shipped_aux = DATASETS.get("ser3")()
    rows = shipped_meta.reset_index().set_index("uid").loc[meta["uid"], "index"].to_numpy()
    np.testing.assert_allclose(rebuilt["X"], shipped_X[rows], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rebuilt["speaker_emb"], shipped_aux["speaker_emb"][rows], atol=1e-4)
    # a second build reads everything from the feature cache
    entries = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.npz")}
    build_builtin(root, tmp_path / "out2", workers=1, progress=False, cache_root=tmp_path / "cache")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.npz")} == entries
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_manifest_errors_name_file_row_and_column(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    pd.DataFrame({"path": ["a.wav"], "speaker": ["s"], "gender": ["F"], "language": ["en"]}).to_csv(
        d / "manifest.csv", index=False)
    with pytest.raises(DataError, match=r"manifest.csv: missing column\(s\) \['emotion'\]"):
        read_manifest(d)
    pd.DataFrame({"path": ["a.wav", "b.wav"], "speaker": ["s", "t"], "gender": ["F", None], "language": ["en", "en"],
                  "emotion": ["anger", "anger"]}).to_csv(d / "manifest.csv", index=False)
    with pytest.raises(DataError, match=r"manifest.csv: row 3, column 'gender' is empty"):
        read_manifest(d)
