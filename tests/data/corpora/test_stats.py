"""Corpus statistics: hand-counted tables, durations from a column or from audio headers, both output formats."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from fairray.data.corpora.manifest import ManifestAdapter
from fairray.data.corpora.stats import corpus_stats, format_stats
from fairray.errors import DataError


def _table(**extra):
    return pd.DataFrame({
        "path": [f"{i}.wav" for i in range(6)],
        "speaker": ["a", "a", "b", "c", "d", "d"],
        "gender": ["F", "F", "M", "F", "M", "U"],
        "language": ["en", "en", "en", "de", "de", "de"],
        "emotion": ["anger", "sadness", "anger", "anger", "neutral", "neutral"],
        **extra,
    })


def test_counts_and_speakers():
    stats = corpus_stats(_table())
    assert set(stats) == {"counts", "speakers"}  # no duration_s and no root: durations left out
    counts = stats["counts"]
    assert counts.loc[("en", "F")].to_dict() == {"anger": 1, "neutral": 0, "sadness": 1, "total": 2}
    assert counts.loc[("de", "M"), "neutral"] == 1 and counts.loc[("de", "U"), "neutral"] == 1
    assert counts["total"].sum() == 6
    assert stats["speakers"].to_dict("index") == {"de": {"F": 1, "M": 1, "U": 1, "total": 2},
                                                  "en": {"F": 1, "M": 1, "U": 0, "total": 2}}


def test_durations_from_column():
    stats = corpus_stats(_table(duration_s=[1.0, 2.0, 3.0, 3600.0, 0.5, 0.5]))
    d = stats["durations"]
    assert d.loc["en"].to_dict() == {"clips": 3, "hours": pytest.approx(6 / 3600), "mean_s": 2.0, "min_s": 1.0,
                                     "max_s": 3.0}
    assert d.loc["de", "hours"] == pytest.approx(3601 / 3600) and d.loc["de", "min_s"] == 0.5


def test_durations_from_audio_headers(tmp_path):
    for i, seconds in enumerate([0.25, 0.5, 1.0, 0.2, 0.2, 0.1]):
        sf.write(tmp_path / f"{i}.wav", np.zeros(int(16000 * seconds)), 16000, subtype="PCM_16")
    d = corpus_stats(_table(), root=tmp_path)["durations"]
    assert d.loc["en", "mean_s"] == pytest.approx(1.75 / 3) and d.loc["en", "max_s"] == pytest.approx(1.0)
    assert d.loc["de", "hours"] == pytest.approx(0.5 / 3600) and d.loc["de", "clips"] == 3
    (tmp_path / "5.wav").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"5.wav: cannot read the audio header"):
        corpus_stats(_table(), root=tmp_path)


def test_formats():
    stats = corpus_stats(_table(duration_s=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    records = json.loads(format_stats(stats, "json"))
    assert records["counts"][0] == {"language": "de", "gender": "F", "anger": 1, "neutral": 0, "sadness": 0,
                                    "total": 1}
    assert records["durations"][1] == {"language": "en", "clips": 3, "hours": round(6 / 3600, 6), "mean_s": 2.0,
                                       "min_s": 1.0, "max_s": 3.0}
    text = format_stats(stats)
    assert text.startswith("clips per language × gender × emotion") and "durations per language" in text
    with pytest.raises(DataError, match=r"unknown stats format 'csv'"):
        format_stats(stats, "csv")


def test_bad_input():
    with pytest.raises(DataError, match=r"missing column\(s\) \['speaker'\]"):
        corpus_stats(_table().drop(columns="speaker"))
    with pytest.raises(DataError, match=r"row 4, column 'duration_s' is 'long'"):
        corpus_stats(_table(duration_s=["1", "2", "long", "1", "1", "1"]))


@pytest.mark.corpora
def test_real_corpora(corpora):
    tables = [ManifestAdapter().load(corpora / c) for c in ("ravdess", "emodb", "nemo")]
    stats = corpus_stats(pd.concat(tables, ignore_index=True))
    assert stats["counts"]["total"].to_dict() == {("de", "F"): 302, ("de", "M"): 233, ("en", "F"): 720,
                                                  ("en", "M"): 720, ("pl", "F"): 690, ("pl", "M"): 824}
    assert stats["counts"].loc[("en", "M"), "neutral"] == 48 and stats["counts"].loc[("pl", "F"), "surprise"] == 90
    assert stats["speakers"].to_dict("index") == {"de": {"F": 5, "M": 5, "total": 10},
                                                  "en": {"F": 12, "M": 12, "total": 24},
                                                  "pl": {"F": 4, "M": 5, "total": 9}}
    hours = stats["durations"]["hours"].round(2).to_dict()
    assert hours == {"de": 0.30, "en": 1.48, "pl": 0.82}


@pytest.mark.corpora
def test_real_audio_headers_match_manifest_durations(corpora):
    table = ManifestAdapter().load(corpora / "nemo")
    from_column = corpus_stats(table)["durations"]
    from_audio = corpus_stats(table.drop(columns="duration_s"), root=corpora / "nemo")["durations"]
    np.testing.assert_allclose(from_audio.to_numpy(), from_column.to_numpy(), rtol=1e-3)
