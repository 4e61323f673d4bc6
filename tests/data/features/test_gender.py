"""hf_voice_gender and the pseudo_hf group source, on tiny random Hugging Face models saved to disk and real clips.

The age-gender checkpoint is written by an independent copy of the classes of audeering's model card, so the
test also checks that the extractor's own definition loads the card's state-dict layout unchanged.
"""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pandas as pd
import pytest

from fairray.data.features import FeatureCache, make_extractor
from fairray.data.features.gender import HFVoiceGender
from fairray.errors import ConfigError, DataError

SR = 16000
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(32, 32, 32),
            conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4), num_conv_pos_embeddings=16, feat_extract_norm="layer",
            do_stable_layer_norm=True)


def _card_classes():
    """ModelHead / AgeGenderModel as the audeering model card defines them (post_init for transformers 5)."""
    import torch
    from torch import nn
    from transformers import Wav2Vec2Model, Wav2Vec2PreTrainedModel

    class ModelHead(nn.Module):
        def __init__(self, config, num_labels):
            super().__init__()
            self.dense = nn.Linear(config.hidden_size, config.hidden_size)
            self.dropout = nn.Dropout(config.final_dropout)
            self.out_proj = nn.Linear(config.hidden_size, num_labels)

        def forward(self, features, **kwargs):
            x = self.dropout(features)
            x = self.dense(x)
            x = torch.tanh(x)
            x = self.dropout(x)
            return self.out_proj(x)

    class AgeGenderModel(Wav2Vec2PreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.config = config
            self.wav2vec2 = Wav2Vec2Model(config)
            self.age = ModelHead(config, 1)
            self.gender = ModelHead(config, 3)
            self.post_init()

        def forward(self, input_values):
            hidden_states = self.wav2vec2(input_values)[0]
            hidden_states = torch.mean(hidden_states, dim=1)
            logits_age = self.age(hidden_states)
            logits_gender = torch.softmax(self.gender(hidden_states), dim=1)
            return hidden_states, logits_age, logits_gender

    return AgeGenderModel


def _feature_extractor():
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=True,
                                    return_attention_mask=True)


@pytest.fixture(scope="module")
def tiny_age_gender(tmp_path_factory) -> str:
    import torch
    from transformers import Wav2Vec2Config

    folder = tmp_path_factory.mktemp("age_gender")
    torch.manual_seed(0)
    model = _card_classes()(Wav2Vec2Config(**TINY))
    with torch.no_grad():  # a random model is nearly indifferent; spread the gender logits so columns differ
        model.gender.out_proj.weight.mul_(50.0)
    model.save_pretrained(folder)
    _feature_extractor().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_auto(tmp_path_factory) -> str:
    """An audio-classification checkpoint whose labels are Male, Female, other (in that order)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    folder = tmp_path_factory.mktemp("auto_gender")
    torch.manual_seed(1)
    config = Wav2Vec2Config(**TINY, id2label={0: "Male", 1: "Female", 2: "other"},
                            label2id={"Male": 0, "Female": 1, "other": 2}, classifier_proj_size=16)
    model = Wav2Vec2ForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.mul_(50.0)
    model.save_pretrained(folder)
    _feature_extractor().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def real_clips(corpora) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Six real clips of different lengths: three RAVDESS, three EmoDB."""
    from fairray.data.audio import load_audio
    from fairray.data.corpora import CORPORA

    tables = []
    for name in ("ravdess", "emodb"):
        table = CORPORA.get("manifest")().load(corpora / name).iloc[::97].head(3)
        tables.append(table.assign(path=[f"{name}/{p}" for p in table["path"]]))
    table = pd.concat(tables, ignore_index=True)
    return table, [load_audio(corpora / p) for p in table["path"]]


def _gender(path: str, **params) -> HFVoiceGender:
    return make_extractor("hf_voice_gender", model_path=path, device="cpu", **params)


def _renormalised(probs: np.ndarray, keep: list[list[int]]) -> np.ndarray:
    out = np.stack([probs[:, idx].sum(axis=1) for idx in keep], axis=1)
    return out / out.sum(axis=1, keepdims=True)


@pytest.mark.corpora
def test_age_gender_model_card_probabilities_renormalised(tiny_age_gender, real_clips):
    import torch

    _, clips = real_clips
    extractor = _gender(tiny_age_gender, batch_size=4)
    assert extractor.columns == ("F", "M") and extractor.dim == 2
    X = extractor.extract(clips)
    assert X.shape == (6, 2) and X.dtype == np.float32
    np.testing.assert_allclose(X.sum(axis=1), 1.0, atol=1e-6)
    # the card's own inference, one clip at a time: softmax over (female, male, child), child dropped
    card = _card_classes().from_pretrained(tiny_age_gender).eval()
    processor = _feature_extractor()
    with torch.no_grad():
        probs = np.concatenate([card(torch.from_numpy(processor(x, sampling_rate=SR)["input_values"][0][None]))[2]
                                .numpy() for x in clips])
    np.testing.assert_allclose(X, _renormalised(probs, [[0], [1]]), atol=1e-5)
    assert (probs[:, 2] > 1e-3).any()  # the dropped child output did carry mass: renormalisation mattered
    assert len({tuple(np.round(r, 4)) for r in X}) > 1
    # padding does not leak between clips of a batch; the instance ships without weights
    alone = np.concatenate([_gender(tiny_age_gender, batch_size=1).extract([x]) for x in clips])
    np.testing.assert_allclose(X, alone, atol=1e-5)
    clone = pickle.loads(pickle.dumps(extractor))
    assert clone._model is None and clone.params == extractor.params
    np.testing.assert_allclose(clone.extract(clips[:2]), X[:2], atol=1e-6)
    assert extractor.extract([]).shape == (0, 2)


@pytest.mark.corpora
def test_auto_model_labels_are_mapped_case_insensitively(tiny_auto, real_clips):
    import torch
    from transformers import AutoModelForAudioClassification

    _, clips = real_clips
    model = AutoModelForAudioClassification.from_pretrained(tiny_auto).eval()
    with torch.no_grad():
        probs = np.concatenate([torch.softmax(model(torch.from_numpy(
            _feature_extractor()(x, sampling_rate=SR)["input_values"][0][None])).logits, dim=1).numpy()
            for x in clips])
    # labels Male, Female, other: "other" not named → dropped, the rest renormalised
    X = _gender(tiny_auto, architecture="auto", label_map={"female": "F", "MALE": "M"}).extract(clips)
    np.testing.assert_allclose(X, _renormalised(probs, [[1], [0]]), atol=1e-5)
    np.testing.assert_allclose(X.sum(axis=1), 1.0, atol=1e-6)
    # several labels onto one value are summed; null drops a label explicitly
    X = _gender(tiny_auto, architecture="auto", label_map={"Female": "F", "other": "F", "Male": "M"}).extract(clips)
    np.testing.assert_allclose(X, probs[:, [1, 0]] + np.c_[probs[:, 2], np.zeros(6)], atol=1e-5)
    X = _gender(tiny_auto, architecture="auto", label_map={"female": "F", "male": "M", "other": None},
                batch_size=1).extract(clips)
    np.testing.assert_allclose(X, _renormalised(probs, [[1], [0]]), atol=1e-5)


@pytest.mark.corpora
def test_feature_cache_runs_the_model_once_per_clip(tiny_age_gender, real_clips, corpora, tmp_path, monkeypatch):
    table, _ = real_clips
    calls = []
    extract = HFVoiceGender._extract
    monkeypatch.setattr(HFVoiceGender, "_extract", lambda self, items: calls.append(len(items)) or extract(self, items))
    cache = FeatureCache(tmp_path / "cache")
    first = cache.get_or_compute(table, corpora, _gender(tiny_age_gender), progress=False)
    assert not first.hit and sum(calls) == 6 and first.X.shape == (6, 2)
    second = cache.get_or_compute(table, corpora, _gender(tiny_age_gender, batch_size=2), progress=False)
    assert second.hit and sum(calls) == 6 and second.key == first.key  # batch size and device stay out of the key
    np.testing.assert_array_equal(second.X, first.X)
    other = cache.get_or_compute(table, corpora, _gender(tiny_age_gender, label_map={"female": "F", "male": "M",
                                                                                      "child": "M"}), progress=False)
    assert not other.hit and other.key != first.key and sum(calls) == 12  # the label map is part of the key


def test_missing_model_is_one_clear_line(tmp_path, monkeypatch, clips, tiny_age_gender):
    monkeypatch.delenv("FAIRRAY_GENDER_PATH", raising=False)
    with pytest.raises(DataError) as err:
        make_extractor("hf_voice_gender").extract(clips)
    message = str(err.value)
    assert "\n" not in message and "FAIRRAY_GENDER_PATH" in message and "params.model_path" in message
    assert "never downloaded" in message and "audeering/wav2vec2-large-robust-24-ft-age-gender" in message
    with pytest.raises(DataError, match="model folder audeering/wav2vec2-large-robust-24-ft-age-gender does not exist"):
        _gender("audeering/wav2vec2-large-robust-24-ft-age-gender").extract(clips)  # a hub id is no download
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DataError, match=r"lacks \['preprocessor_config.json'\]"):
        _gender(str(tmp_path)).extract(clips)
    monkeypatch.setenv("FAIRRAY_GENDER_PATH", tiny_age_gender)
    assert make_extractor("hf_voice_gender", device="cpu").extract(clips[:1]).shape == (1, 2)


def test_a_checkpoint_without_the_heads_is_refused(tmp_path, clips):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    Wav2Vec2Model(Wav2Vec2Config(**TINY)).save_pretrained(tmp_path)
    _feature_extractor().save_pretrained(tmp_path)
    with pytest.raises(DataError, match=r"lacks weights of architecture 'age_gender' \(8, e.g. \['age.dense.bias'") as err:
        _gender(str(tmp_path)).extract(clips)
    assert "\n" not in str(err.value)


def test_label_map_errors_name_the_key_and_value(tiny_age_gender, tiny_auto, clips):
    with pytest.raises(ConfigError, match=r"label_map key 'woman' \(-> 'F'\) is not a label of the model in .*; "
                                          r"its labels: female, male, child"):
        _gender(tiny_age_gender, label_map={"woman": "F", "male": "M"}).extract(clips)
    with pytest.raises(ConfigError, match=r"label_map key 'man' \(-> 'M'\) is not a label .*its labels: Male, "
                                          r"Female, other"):
        _gender(tiny_auto, architecture="auto", label_map={"female": "F", "man": "M"}).extract(clips)
    with pytest.raises(ConfigError, match="at least two attribute values"):
        _gender(tiny_age_gender, label_map={"female": "F", "male": "F"})
    with pytest.raises(ConfigError, match="label_map keys 'male' and 'Male' name the same label"):
        _gender(tiny_age_gender, label_map={"female": "F", "male": "M", "Male": "M"})
    with pytest.raises(ConfigError, match=r"label_map\['male'\] = 3"):
        _gender(tiny_age_gender, label_map={"female": "F", "male": 3})
    with pytest.raises(ConfigError, match="architecture must be one of"):
        _gender(tiny_age_gender, architecture="wav2vec2")
    with pytest.raises(ConfigError, match="unknown parameter"):
        make_extractor("hf_voice_gender", path=tiny_age_gender)


def test_params_from_a_yaml_spec_are_plain_and_picklable(tiny_age_gender):
    from fairray._typed import Where, build

    params = build(HFVoiceGender.Params, {"model_path": tiny_age_gender, "label_map": {"female": "F", "male": "M",
                                                                                        "child": None}},
                   Where("spec", "dataset.extractor.params"))
    assert type(params.label_map) is dict and params.label_map["child"] is None
    extractor = HFVoiceGender(params)
    assert pickle.loads(pickle.dumps(extractor)).params == params and extractor.columns == ("F", "M")


# -- the pseudo_hf group source end to end: real clips, the feature cache, prepare -------------------------------

def _subset(corpora, root) -> tuple:
    """Per corpus 3 female + 3 male speakers x (one anger, one neutral clip): 12 real clips (audio symlinked)."""
    from fairray.config import CorpusSource

    sources = []
    for name in ("ravdess", "emodb"):
        manifest = pd.read_csv(corpora / name / "manifest.csv", dtype=str, keep_default_na=False)
        manifest = manifest[manifest["emotion"].isin(["anger", "neutral"])]
        speakers = manifest.drop_duplicates("speaker").groupby("gender").head(3)["speaker"]
        manifest = manifest[manifest["speaker"].isin(speakers)].groupby(["speaker", "emotion"]).head(1)
        dst = root / name
        dst.mkdir(parents=True)
        manifest.to_csv(dst / "manifest.csv", index=False)
        for rel in manifest["path"]:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            (dst / rel).symlink_to(corpora / name / rel)
        sources.append(CorpusSource("manifest", str(dst)))
    return tuple(sources)


@pytest.mark.corpora
def test_pseudo_hf_groups_on_real_clips(tiny_age_gender, corpora, tmp_path, monkeypatch):
    from fairray.config import DatasetConfig, NamedParams
    from fairray.data import groups as groups_module
    from fairray.data import prepare
    from fairray.data.audio import load_audio

    calls = {"model": 0, "source": 0}
    extract, source = HFVoiceGender._extract, groups_module.GROUP_SOURCES.get("pseudo_hf")

    def counted_extract(self, items):
        calls["model"] += len(items)
        return extract(self, items)

    def counted_source(inp, params):
        calls["source"] += 1
        return source(inp, params)

    counted_source.__dict__.update(source.__dict__)
    monkeypatch.setattr(HFVoiceGender, "_extract", counted_extract)
    monkeypatch.setitem(groups_module.GROUP_SOURCES._items, "pseudo_hf", counted_source)
    cfg = DatasetConfig(name="corpora", corpora=_subset(corpora, tmp_path / "corpora"), emotions=("anger", "neutral"),
                        languages=("en", "de"), cache=str(tmp_path / "cache"),
                        groups=NamedParams("pseudo_hf", {"model_path": tiny_age_gender, "device": "cpu"}))
    data = prepare(cfg)
    assert calls == {"model": 24, "source": 1}
    assert data.group.shape == (24,) and data.group_values == ("F", "M") and data.group_prob.shape == (24, 2)
    np.testing.assert_allclose(data.group_prob.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(data.group, data.group_prob.argmax(axis=1))
    # accuracy against the true attribute, per corpus and overall (a random model: whatever it is)
    assert data.attr_values == ("F", "M") and (data.attr >= 0).all()
    corpus = data.meta["corpus"].to_numpy()
    assert set(data.group_info) == {"pseudo_acc", "pseudo_acc/emodb", "pseudo_acc/ravdess"}
    assert data.group_info["pseudo_acc"] == pytest.approx(float(np.mean(data.group == data.attr)))
    for name in ("emodb", "ravdess"):
        rows = corpus == name
        assert data.group_info[f"pseudo_acc/{name}"] == pytest.approx(float(np.mean(data.group[rows] ==
                                                                                  data.attr[rows])))
    # the probabilities are the model's, in the attribute's order, row-aligned with the table
    direct = _gender(tiny_age_gender).extract([load_audio(corpora / c / p)
                                               for c, p in zip(corpus, data.meta["path"], strict=True)])
    np.testing.assert_allclose(data.group_prob, direct, atol=1e-5)
    assert list((tmp_path / "cache" / "groups" / "pseudo_hf").glob("*.json"))

    # a second preparation reads both the probabilities and the groups from the cache
    calls.update(model=0, source=0)
    again = prepare(cfg)
    assert calls == {"model": 0, "source": 0}
    np.testing.assert_array_equal(again.group, data.group)
    np.testing.assert_array_equal(again.group_prob, data.group_prob)
    assert again.group_info == data.group_info and again.group_values == data.group_values

    # an attribute value no model label maps to is a one-line error naming the key and the value
    bad = NamedParams("pseudo_hf", {"model_path": tiny_age_gender, "device": "cpu",
                                    "label_map": {"female": "W", "male": "M"}})
    with pytest.raises(ConfigError, match=r"label_map maps 'female' to 'W', which is not a value of the protected "
                                          r"attribute \(its values: F, M\)"):
        prepare(dataclasses.replace(cfg, groups=bad))
