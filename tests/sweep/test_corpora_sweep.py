"""A sweep on a corpus in its native layout: features extracted once through the cache, a second sweep
over the same data extracts nothing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from fairray.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.corpora]
SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "erm.yaml"


def _emodb_subset(corpora: Path, dst: Path) -> Path:
    """Two real clips per speaker and emotion of EmoDB (anger, neutral, sadness) as a manifest corpus."""
    manifest = pd.read_csv(corpora / "emodb" / "manifest.csv")
    manifest = manifest[manifest["emotion"].isin(["anger", "neutral", "sadness"])]
    manifest = manifest.groupby(["speaker", "emotion"]).head(2)
    dst.mkdir(parents=True)
    for rel in manifest["path"]:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).symlink_to(corpora / "emodb" / rel)
    manifest.to_csv(dst / "manifest.csv", index=False)
    return dst


def test_sweep_on_a_native_corpus_uses_the_feature_cache(corpora, tmp_path):
    root = _emodb_subset(corpora, tmp_path / "emodb")
    raw = yaml.safe_load(SPEC.read_text())
    raw["dataset"] = {"name": "corpora", "corpora": [{"adapter": "manifest", "root": str(root)}],
                      "extractor": {"name": "opensmile_egemaps"}, "emotions": ["anger", "neutral", "sadness"],
                      "languages": ["de"], "cache": str(tmp_path / "cache"), "extract_workers": 2}
    raw["train"]["epochs"] = 2
    raw["budget"].update(num_samples=2)
    raw["storage"]["path"] = str(tmp_path / "runs")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))

    assert main(["sweep", str(spec), "--quiet"]) == 0
    entries = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert any(p.suffix == ".npz" for p in entries)  # one extraction, stored
    assert main(["sweep", str(spec), "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()} == entries

    c = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("erm").experiment_id])
    trials = [r for r in runs if r.data.tags.get("fairray.kind") == "trial"]
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    assert trials[0].data.params["dataset.name"] == "corpora"
    assert trials[0].data.metrics["test/n"] == 12  # one held-out speaker per gender x 3 emotions x 2 clips
