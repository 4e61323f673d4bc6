"""Group sources: true attribute, k-means over speaker embeddings, leave-one-corpus-out pseudo-labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fairray.data.groups import GROUP_SOURCES, GroupInput
from fairray.errors import ConfigError, DataError


def _input(emb, attr, corpus=None, split=None):
    n = len(attr)
    meta = pd.DataFrame({"corpus": corpus if corpus is not None else ["c"] * n})
    return GroupInput(meta, np.asarray(attr), ("F", "M"), np.asarray(split if split is not None else ["train"] * n,
                                                                      dtype=object), {"speaker_emb": emb})


def test_attribute_is_the_truth_with_unknowns_kept_unknown():
    g = GROUP_SOURCES.get("attribute")(_input(np.zeros((3, 2)), [0, 1, -1]), {})
    assert g.ids.tolist() == [0, 1, -1] and g.prob.tolist() == [[1, 0], [0, 1], [0, 0]]
    with pytest.raises(ConfigError, match="unknown parameter"):
        GROUP_SOURCES.get("attribute")(_input(np.zeros((1, 2)), [0]), {"K": 2})


def test_kmeans_recovers_separated_speakers_and_fits_on_train_only():
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:3] * 5
    emb = np.concatenate([c + 0.05 * rng.standard_normal((40, 8)) for c in centres])
    split = np.array(["train"] * 120, dtype=object)
    split[::10] = "test"
    g = GROUP_SOURCES.get("kmeans")(_input(emb, [0] * 120, split=split), {"K": 3})
    blocks = g.ids.reshape(3, 40)
    assert all(len(set(b)) == 1 for b in blocks) and len({b[0] for b in blocks}) == 3
    assert np.allclose(g.prob.sum(axis=1), 1.0) and g.values == ("km0", "km1", "km2")
    assert g.info["min_cluster_train"] == 36  # 40 per speaker minus the 4 test rows
    with pytest.raises(ConfigError, match="K must be >= 2"):
        GROUP_SOURCES.get("kmeans")(_input(emb, [0] * 120), {"K": 1})


def test_pseudo_labels_come_from_the_other_corpora():
    rng = np.random.default_rng(1)
    attr = np.tile([0, 1], 60)
    emb = rng.standard_normal((120, 6))
    emb[:, 0] += np.where(attr == 1, 3.0, -3.0)  # gender direction shared by both corpora
    corpus = np.repeat(["a", "b"], 60)
    emb[corpus == "b", 1] += 10.0  # a corpus shift the classifier must not need
    g = GROUP_SOURCES.get("pseudo")(_input(emb, attr, corpus=corpus), {})
    assert g.info["pseudo_acc/a"] > 0.95 and g.info["pseudo_acc/b"] > 0.95
    assert g.info["pseudo_acc"] == pytest.approx((g.ids == attr).mean())
    assert np.allclose(g.prob.sum(axis=1), 1.0, atol=1e-6)


def test_pseudo_needs_another_corpus_and_embeddings():
    with pytest.raises(DataError, match="other corpora"):
        GROUP_SOURCES.get("pseudo")(_input(np.zeros((4, 2)), [0, 1, 0, 1]), {})
    inp = GroupInput(pd.DataFrame({"corpus": ["a"]}), np.array([0]), ("F", "M"), np.array(["train"]), {})
    with pytest.raises(DataError, match="speaker embeddings"):
        GROUP_SOURCES.get("kmeans")(inp, {})


def test_inferred_groups_on_the_builtin_data():
    """Real speaker embeddings (resemblyzer, shipped with ser3): pseudo gender from the other corpora and
    k-means clusters; a method trains on them while every fairness metric keeps the true attribute."""
    import tempfile

    from fairray.config import DatasetConfig, NamedParams, build_spec
    from fairray.data import prepare
    from fairray.train import LocalSession, run_trial

    pseudo = prepare(DatasetConfig(groups=NamedParams("pseudo")))
    assert pseudo.group_info["pseudo_acc"] > 0.95  # measured 0.982 (emodb 0.990, nemo 0.971, ravdess 0.995)
    assert set(pseudo.group_info) == {"pseudo_acc", "pseudo_acc/emodb", "pseudo_acc/nemo", "pseudo_acc/ravdess"}

    km = prepare(DatasetConfig(groups=NamedParams("kmeans", {"K": 16})))
    train = km.split == "train"
    purity = sum(max(((km.group[train] == k) & (km.attr[train] == a)).sum() for a in (0, 1))
                 for k in range(16)) / train.sum()
    assert purity > 0.95 and len(km.group_values) == 16  # 16 clusters of a few speakers split by gender

    raw = {"name": "g", "method": {"name": "gdro"}, "model": {"hidden": 16}, "train": {"epochs": 3},
           "dataset": {"groups": {"name": "kmeans", "params": {"K": 4}}},
           "search": {"objectives": [{"metric": "dev/macro_f1", "direction": "max"}]}}
    data = prepare(build_spec(raw, "g").dataset)
    with tempfile.TemporaryDirectory() as d:
        final = run_trial(raw, {}, data, LocalSession(d))
    assert "test/tpr_gap/gender" in final and final["groups/min_cluster_train"] > 0


def test_group_sources_declare_the_arrays_they_read():
    from fairray.data.groups import AUX_EXTRACTORS, needs

    assert needs("attribute") == () and needs("kmeans") == needs("pseudo") == ("speaker_emb",)
    assert set(needs("kmeans")) <= set(AUX_EXTRACTORS)
