"""Fixtures of the sweep tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def meld_dialogues(corpora, tmp_path_factory) -> Callable[[Mapping[str, int]], Path]:
    """``make({split: n})``: a MELD folder holding the first ``n`` dialogues of each split of the real CSVs."""
    root = corpora / "meld"
    if not (root / "train_sent_emo.csv").is_file():
        pytest.skip(f"no MELD CSVs under {root}")

    def make(dialogues: Mapping[str, int]) -> Path:
        dst = tmp_path_factory.mktemp("meld")
        for split, n in dialogues.items():
            table = pd.read_csv(root / f"{split}_sent_emo.csv", dtype=str, keep_default_na=False)
            table[table["Dialogue_ID"].astype(int) < n].to_csv(dst / f"{split}_sent_emo.csv", index=False)
        return dst

    return make
