"""The built-in dataset, speaker-independent splits and preparation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fairray.config import DatasetConfig
from fairray.data import DATASETS, prepare, speaker_split
from fairray.errors import DataError


def test_builtin_is_real_and_complete():
    meta, X, provenance, _ = DATASETS.get("ser3")()
    assert X.shape == (3489, 88) and X.dtype == np.float32 and np.isfinite(X).all()
    assert meta.groupby("corpus").size().to_dict() == {"emodb": 535, "nemo": 1514, "ravdess": 1440}
    assert set(meta["language"]) == {"en", "de", "pl"}
    assert meta.groupby("language")["speaker"].nunique().to_dict() == {"de": 10, "en": 24, "pl": 9}
    assert provenance["extractor"] == "opensmile.eGeMAPSv02.Functionals"
    # No placeholder rows: the only identical feature rows are two RAVDESS files whose audio is
    # byte-identical in the source copy (same md5), both of speaker 07, so they never straddle splits.
    dup = pd.DataFrame(X).duplicated(keep=False).to_numpy()
    assert sorted(meta.loc[dup, "uid"]) == ["ravdess/audio/Actor_07/03-01-03-01-02-01-07.flac",
                                            "ravdess/audio/Actor_07/03-01-03-01-02-02-07.flac"]


def test_split_is_speaker_independent_and_covers_every_cell():
    data = prepare(DatasetConfig())
    speakers = {s: set(data.meta.loc[data.split == s, "speaker"]) for s in ("train", "dev", "test")}
    assert not (speakers["train"] & speakers["dev"]) and not (speakers["train"] & speakers["test"])
    assert not (speakers["dev"] & speakers["test"])
    cells = data.meta.groupby(["split", "language", "gender"])["speaker"].nunique()
    for split in ("train", "dev", "test"):
        for lang in ("en", "de", "pl"):
            for g in ("F", "M"):
                assert cells[(split, lang, g)] >= 1


def test_split_is_deterministic_and_seeded():
    meta = DATASETS.get("ser3")()[0]
    a = speaker_split(meta, "gender", "language", 0.15, 0.25, seed=0)
    b = speaker_split(meta.sample(frac=1.0, random_state=3), "gender", "language", 0.15, 0.25, seed=0)
    assert (pd.Series(a, index=meta.index) == pd.Series(b, index=meta.sample(frac=1.0, random_state=3).index)
            .reindex(meta.index)).all()
    c = speaker_split(meta, "gender", "language", 0.15, 0.25, seed=1)
    assert (a != c).any()


def test_too_few_speakers_is_a_clear_error():
    meta = pd.DataFrame({"speaker": ["s1", "s2"], "gender": ["F", "F"], "language": ["xx", "xx"]})
    with pytest.raises(DataError, match=r"language=xx, gender=F: only 2 speaker"):
        speaker_split(meta, "gender", "language", 0.2, 0.2, seed=0)


def test_prepare_filters_and_standardises_on_train():
    data = prepare(DatasetConfig(emotions=("anger", "sadness"), languages=("de", "pl")))
    assert set(data.meta["emotion"]) == {"anger", "sadness"} and set(data.meta["language"]) == {"de", "pl"}
    train = data.X[data.split == "train"]
    assert np.abs(train.mean(axis=0)).max() < 1e-4
    assert data.classes == ("anger", "sadness")
    assert data.y.max() == 1 and data.attr_values == ("F", "M")
    assert data.groups_frame("dev").columns.tolist() == ["gender", "language"]


def test_unknown_emotion_or_language_is_rejected():
    with pytest.raises(DataError, match="'joy'"):
        prepare(DatasetConfig(emotions=("anger", "joy")))
    with pytest.raises(DataError, match="'fr'"):
        prepare(DatasetConfig(languages=("en", "fr")))
