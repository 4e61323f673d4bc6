"""openSMILE extractors: through the cache, real clips give exactly the features shipped in the built-in dataset."""

from __future__ import annotations

import numpy as np
import pytest

from fairray.data import DATASETS
from fairray.data.features import FeatureCache, make_extractor


def test_feature_sets_and_names():
    egemaps, compare = make_extractor("opensmile_egemaps"), make_extractor("opensmile_compare")
    assert (egemaps.dim, compare.dim) == (88, 6373)
    from importlib import resources

    with resources.files("fairray.data").joinpath("builtin", "ser3.npz").open("rb") as fh:
        shipped = np.load(fh)["feature_names"].tolist()
    assert egemaps.feature_names() == shipped  # the set the built-in dataset was made with
    assert len(compare.feature_names()) == 6373 and compare.feature_names()[0].startswith("audspec")
    assert egemaps.fingerprint()["opensmile"]


@pytest.mark.corpora
def test_real_clips_reproduce_the_builtin_dataset(corpora, tmp_path):
    from fairray.data.corpora import CORPORA

    shipped_meta, shipped_X, _, _ = DATASETS.get("ser3")()
    row_of = {uid: i for i, uid in enumerate(shipped_meta["uid"])}
    for corpus in ("ravdess", "emodb", "nemo"):
        table = CORPORA.get("manifest")().load(corpora / corpus).iloc[::200].head(3)
        feats = FeatureCache(tmp_path).get_or_compute(table, corpora / corpus, make_extractor("opensmile_egemaps"),
                                                      progress=False)
        assert feats.report.counts()["ok"] == 3
        expected = shipped_X[[row_of[uid] for uid in feats.uids]]
        np.testing.assert_allclose(feats.X, expected, rtol=1e-5, atol=1e-5)
