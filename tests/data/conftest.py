"""Fixtures of the data tests: small real corpora subsets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

#: The emotions of the RAVDESS subsets (4 of its 8).
SUBSET_EMOTIONS = ("anger", "happiness", "neutral", "sadness")


@pytest.fixture(scope="session")
def ravdess_subset(corpora) -> Callable[..., Path]:
    """``make(dst, actors=8, per_cell=2)``: ``actors`` RAVDESS actors (half F, half M) x 4 emotions x ``per_cell``
    real clips, symlinked into ``dst`` as a manifest corpus."""

    def make(dst: Path, actors: int = 8, per_cell: int = 2) -> Path:
        manifest = pd.read_csv(corpora / "ravdess" / "manifest.csv", dtype=str, keep_default_na=False)
        speakers = {g: sorted(manifest.loc[manifest["gender"] == g, "speaker"].unique())[:actors // 2] for g in "FM"}
        manifest = manifest[manifest["speaker"].isin(speakers["F"] + speakers["M"])
                            & manifest["emotion"].isin(SUBSET_EMOTIONS)]
        manifest = manifest.groupby(["speaker", "emotion"]).head(per_cell)
        dst.mkdir(parents=True)
        for rel in manifest["path"]:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            (dst / rel).symlink_to(corpora / "ravdess" / rel)
        manifest.to_csv(dst / "manifest.csv", index=False)
        return dst

    return make
