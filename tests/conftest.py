"""Shared fixtures. The real corpora come from one setting: FAIRRAY_CORPORA (default ../shared/corpora
beside the checkout). Tests that need them skip with a reason when absent, unless
FAIRRAY_REQUIRE_CORPORA=1 (CI), where their absence is an error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "search_spaces"


def corpora_root() -> Path:
    return Path(os.environ.get("FAIRRAY_CORPORA", REPO.parent / "shared" / "corpora")).resolve()


@pytest.fixture(scope="session")
def corpora() -> Path:
    root = corpora_root()
    if not (root / "ravdess" / "manifest.csv").is_file():
        if os.environ.get("FAIRRAY_REQUIRE_CORPORA") == "1":
            pytest.fail(f"FAIRRAY_REQUIRE_CORPORA=1 but no corpora at {root} (set FAIRRAY_CORPORA)")
        pytest.skip(f"real corpora not found at {root}; set FAIRRAY_CORPORA to run this test")
    return root


@pytest.fixture(autouse=True)
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)
