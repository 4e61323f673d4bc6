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


def test_inferred_groups_on_a_native_corpus_read_speaker_embeddings_from_the_cache(corpora, tmp_path):
    """kmeans groups on a native corpus: the speaker embeddings the group source declares are extracted
    (resemblyzer) through the feature cache next to the features, and rows stay aligned."""
    from fairray.config import CorpusSource, DatasetConfig, NamedParams
    from fairray.data import prepare

    root = _emodb_subset(corpora, tmp_path / "emodb")
    cfg = DatasetConfig(name="corpora", corpora=(CorpusSource("manifest", str(root)),),
                        emotions=("anger", "neutral", "sadness"), languages=("de",), cache=str(tmp_path / "cache"),
                        groups=NamedParams("kmeans", {"K": 2}))
    data = prepare(cfg)
    assert data.X.shape == (60, 88) and data.group.shape == (60,) and set(data.group) <= {0, 1}
    assert {p.parent.name for p in (tmp_path / "cache").rglob("*.npz")} >= {"opensmile_egemaps", "resemblyzer"}
    assert len(set(data.group[data.split == "train"])) == 2

    # rows and embeddings stay aligned: the cache's embeddings equal the shipped ser3 ones of the same clips
    import numpy as np

    from fairray.data import DATASETS
    from fairray.data._dataset import load_corpora

    meta, _, _, aux = load_corpora(cfg)
    shipped_meta, _, _, shipped_aux = DATASETS.get("ser3")()
    rows = shipped_meta.reset_index().set_index("uid").loc[meta["uid"], "index"].to_numpy()
    np.testing.assert_allclose(aux["speaker_emb"], shipped_aux["speaker_emb"][rows], atol=1e-4)
