"""Audio loading: real broken files are skipped with their reason, odd rates and channels are normalised."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from fairray.data.audio import MIN_DURATION_S, SILENCE_PEAK, AudioReport, load_audio, load_checked, scan_audio
from fairray.errors import DataError


@pytest.fixture(scope="module")
def broken(tmp_path_factory, tone):
    """One file per case, written with soundfile/numpy; returns (root, table, expected status/reason)."""
    root = tmp_path_factory.mktemp("audio")
    x = tone(1.0)
    cases = {}

    def write(uid, name, data, sr, fmt, status, reason):
        sf.write(root / name, data, sr, format=fmt)
        cases[uid] = (name, status, reason)

    write("good_flac", "good.flac", x, 16000, "FLAC", "ok", "")
    write("good_ogg", "good.ogg", x, 16000, "OGG", "ok", "")
    write("rate_44k", "r44.wav", tone(1.0, sr=44100), 44100, "WAV", "resampled", "44100 Hz")
    write("rate_8k", "r8.wav", tone(1.0, sr=8000), 8000, "WAV", "resampled", "8000 Hz")
    write("stereo", "stereo.wav", np.stack([x, 0.5 * x], axis=1), 16000, "WAV", "ok", "")
    write("zeros", "zeros.flac", np.zeros(16000, np.float32), 16000, "FLAC", "skipped", "silent")
    write("short", "short.wav", x[:800], 16000, "WAV", "skipped", "too short")
    write("no_frames", "noframes.wav", np.zeros(0, np.float32), 16000, "WAV", "skipped", "empty: no audio frames")
    for uid, name, fmt in (("cut_flac", "cut.flac", "FLAC"), ("cut_wav", "cut.wav", "WAV")):
        write(uid, name, x, 16000, fmt, "skipped", "")
        data = (root / name).read_bytes()
        (root / name).write_bytes(data[: len(data) // 2])
    cases["cut_flac"] = ("cut.flac", "skipped", "unreadable")
    cases["cut_wav"] = ("cut.wav", "skipped", "truncated WAV")
    (root / "zero_bytes.flac").write_bytes(b"")
    cases["zero_bytes"] = ("zero_bytes.flac", "skipped", "empty: zero-byte file")
    (root / "text.wav").write_bytes(b"this is not audio at all" * 50)
    cases["not_audio"] = ("text.wav", "skipped", "unreadable")
    cases["missing"] = ("nowhere.flac", "skipped", "missing file")
    table = pd.DataFrame({"uid": list(cases), "path": [c[0] for c in cases.values()]})
    return root, table, cases


def test_scan_reports_every_file_with_its_verdict(broken):
    root, table, cases = broken
    report = scan_audio(table, root)
    assert [e.uid for e in report.entries] == list(table["uid"])  # table order, nothing dropped
    for entry in report.entries:
        _, status, reason = cases[entry.uid]
        assert entry.status == status, (entry.uid, entry)
        assert reason in entry.reason, (entry.uid, entry.reason)
    counts = report.counts()
    assert counts == {"ok": 3, "resampled": 2, "skipped": 8}
    assert report.ok_mask.tolist() == [cases[u][1] != "skipped" for u in table["uid"]]
    text = report.format()
    assert text.splitlines()[0] == "13 clips: 3 ok, 2 resampled, 8 skipped"
    assert "8000 Hz ×1" in text and "44100 Hz ×1" in text
    for entry in report.skipped:
        assert f"skipped {entry.uid}: {entry.reason}" in text
    assert "more skipped" in report.format(max_listed=2)
    assert AudioReport.from_records(report.to_records()) == report


def test_resampling_and_channel_average(broken, tone):
    root, _, _ = broken
    x44 = load_audio(root / "r44.wav")
    assert x44.dtype == np.float32 and x44.shape == (16000,)
    # torchaudio's sinc resampler against an independent band-limited one (scipy's polyphase Kaiser filter):
    # the two filters differ only near the 8 kHz cut-off, far above this tone's harmonics
    reference = resample_poly(sf.read(root / "r44.wav", dtype="float32")[0], 160, 441)
    np.testing.assert_allclose(x44, reference, atol=5e-3)
    assert np.corrcoef(x44, reference)[0, 1] > 0.9999
    assert load_audio(root / "r8.wav").shape == (16000,)
    stereo = load_audio(root / "stereo.wav")
    left = sf.read(root / "stereo.wav", dtype="float32")[0][:, 0]
    np.testing.assert_allclose(stereo, 0.75 * left, atol=1e-4)
    assert load_audio(root / "r44.wav", target_sr=44100).shape == (44100,)


def test_silence_and_length_thresholds(tmp_path, tone):
    x = tone(1.0)
    quiet = x / np.abs(x).max() * SILENCE_PEAK * 0.5
    sf.write(tmp_path / "quiet.wav", quiet, 16000, subtype="FLOAT")
    sf.write(tmp_path / "audible.wav", quiet * 4, 16000, subtype="FLOAT")
    sf.write(tmp_path / "edge.wav", x[: int(MIN_DURATION_S * 16000)], 16000)
    assert load_checked(tmp_path / "quiet.wav", "q")[0].status == "skipped"
    assert load_checked(tmp_path / "audible.wav", "a")[0].status == "ok"
    entry, signal = load_checked(tmp_path / "edge.wav", "e")
    assert entry.status == "ok" and signal.shape == (1600,) and entry.duration_s == pytest.approx(0.1)


def test_strict_loader_names_the_file(broken):
    root, _, _ = broken
    with pytest.raises(DataError, match=r"cut\.wav: corrupt: truncated WAV"):
        load_audio(root / "cut.wav")
    with pytest.raises(DataError, match=r"zero_bytes\.flac: empty"):
        load_audio(root / "zero_bytes.flac")
    with pytest.raises(DataError, match="missing column"):
        scan_audio(pd.DataFrame({"uid": ["a"]}), root)


@pytest.mark.corpora
def test_real_shared_clips(corpora):
    from fairray.data.corpora import CORPORA

    table = CORPORA.get("manifest")().load(corpora / "ravdess").iloc[[0, 700, 1439]]
    report = scan_audio(table, corpora / "ravdess")
    assert report.counts() == {"ok": 3, "resampled": 0, "skipped": 0}
    for entry, duration in zip(report.entries, table["duration_s"], strict=True):
        assert entry.sample_rate == 16000 and entry.duration_s == pytest.approx(duration, abs=1e-3)
    x = load_audio(corpora / "ravdess" / table["path"].iloc[0])
    assert x.dtype == np.float32 and x.ndim == 1 and 0.01 < np.abs(x).max() <= 1.0
