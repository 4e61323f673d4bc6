"""Speaker embeddings: resemblyzer separates real speakers; ECAPA says what it needs instead of faking vectors.

resemblyzer's first clip in a process compiles librosa's numba kernels (seconds with a warm numba
cache, ~30 s cold): the module-scoped fixture pays that once.
"""

from __future__ import annotations

import numpy as np
import pytest

from fairray.data.features import make_extractor
from fairray.errors import DataError


@pytest.fixture(scope="module")
def resemblyzer(clips):
    extractor = make_extractor("resemblyzer")
    extractor.extract(clips[:1])  # JIT warm-up, once per module
    return extractor


def test_embeddings_are_unit_vectors(resemblyzer, clips):
    X = resemblyzer.extract(clips)
    assert X.shape == (3, 256) and np.isfinite(X).all()
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)


def test_clip_without_detected_voice_is_embedded_whole(resemblyzer):
    noise = (0.01 * np.random.default_rng(0).standard_normal(32000)).astype(np.float32)
    from resemblyzer import preprocess_wav

    assert len(preprocess_wav(noise)) == 0  # the VAD keeps nothing of it
    X = resemblyzer.extract([noise])
    assert np.isfinite(X).all() and np.linalg.norm(X) == pytest.approx(1.0, abs=1e-5)
    silence_embedding = resemblyzer._model[0].embed_utterance(np.zeros(0, np.float32))
    assert not np.allclose(X[0], silence_embedding)


@pytest.mark.corpora
def test_same_speaker_is_closer_than_other_speakers(resemblyzer, corpora):
    from fairray.data.audio import load_audio
    from fairray.data.corpora import CORPORA

    table = CORPORA.get("manifest")().load(corpora / "ravdess")
    picked = table[table["emotion"] == "neutral"].groupby("speaker").head(2).head(8)  # actors 1-4, 2 clips each
    X = resemblyzer.extract([load_audio(corpora / "ravdess" / p) for p in picked["path"]])
    similarity = X @ X.T
    same = picked["speaker"].to_numpy()[:, None] == picked["speaker"].to_numpy()[None, :]
    off_diagonal = ~np.eye(len(picked), dtype=bool)
    assert similarity[same & off_diagonal].mean() > similarity[~same].mean() + 0.05
    for i in range(len(picked)):  # every clip's nearest other clip is its own speaker's
        others = np.where(off_diagonal[i], similarity[i], -np.inf)
        assert same[i, int(np.argmax(others))]


def test_ecapa_fails_with_one_line_naming_the_folder(tmp_path, monkeypatch, clips):
    monkeypatch.delenv("FAIRRAY_ECAPA_PATH", raising=False)
    with pytest.raises(DataError) as err:
        make_extractor("ecapa").extract(clips)
    assert "\n" not in str(err.value) and "FAIRRAY_ECAPA_PATH" in str(err.value)
    assert "spkrec-ecapa-voxceleb" in str(err.value)
    monkeypatch.setenv("FAIRRAY_ECAPA_PATH", str(tmp_path))
    with pytest.raises(DataError, match=r"lacks \['hyperparams.yaml', 'embedding_model.ckpt'\]"):
        make_extractor("ecapa").extract(clips)
    with pytest.raises(DataError, match=r"model folder .*missing does not exist"):
        make_extractor("ecapa", model_path=str(tmp_path / "missing")).extract(clips)
