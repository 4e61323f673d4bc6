"""hf_ssl on tiny random WavLM models saved to disk: layout, padding, normalisation, offline-only loading."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fairray.data.features import make_extractor
from fairray.errors import ConfigError, DataError


def _ssl(path, **params):
    return make_extractor("hf_ssl", model_path=path, device="cpu", **params)


def test_shapes_and_layer_layout(tiny_wavlm, clips):
    mean_all = _ssl(tiny_wavlm).extract(clips)
    assert mean_all.shape == (3, 32) and np.isfinite(mean_all).all()
    stacked = _ssl(tiny_wavlm, weighted_sum=True).extract(clips)
    assert stacked.shape == (3, 3 * 32)  # hidden states 0, 1, 2 side by side
    per_layer = stacked.reshape(3, 3, 32)
    np.testing.assert_allclose(per_layer.mean(axis=1), mean_all, atol=1e-5)  # documented layout
    last = _ssl(tiny_wavlm, layers=(2,)).extract(clips)
    np.testing.assert_allclose(last, per_layer[:, 2], atol=1e-5)
    two = _ssl(tiny_wavlm, layers=(0, 2), weighted_sum=True)
    assert two.dim == 64
    np.testing.assert_allclose(two.extract(clips).reshape(3, 2, 32), per_layer[:, [0, 2]], atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_wavlm", "tiny_wavlm_group"])
def test_padding_does_not_change_a_clip(fixture, request, clips):
    path = request.getfixturevalue(fixture)
    batched = _ssl(path, batch_size=3, weighted_sum=True).extract(clips)
    alone = np.stack([_ssl(path, batch_size=1, weighted_sum=True).extract([x])[0] for x in clips])
    np.testing.assert_allclose(batched, alone, atol=1e-4)


def test_group_norm_models_batch_only_equal_lengths(tiny_wavlm, tiny_wavlm_group):
    lengths = [16000, 8000, 16000, 12000, 8000]
    group = _ssl(tiny_wavlm_group, batch_size=4).load()
    assert group._batches(lengths) == [[1, 4], [3], [0, 2]]
    layer = _ssl(tiny_wavlm, batch_size=4).load()
    assert layer._batches(lengths) == [[1, 4, 3, 0], [2]]


def test_inputs_are_normalised_per_clip(tiny_wavlm, clips):
    ssl = _ssl(tiny_wavlm)
    np.testing.assert_allclose(ssl.extract([clips[0] * 5.0])[0], ssl.extract([clips[0]])[0], atol=1e-4)


def test_parameters_are_checked(tiny_wavlm):
    with pytest.raises(ConfigError, match=r"layers \[7\] out of range; the model has hidden states 0\.\.2"):
        _ssl(tiny_wavlm, layers=(1, 7)).dim  # noqa: B018
    with pytest.raises(ConfigError, match="pooling must be one of"):
        _ssl(tiny_wavlm, pooling="attention")
    with pytest.raises(ConfigError, match="layers must be"):
        _ssl(tiny_wavlm, layers="last")


def test_missing_model_is_one_clear_line(tmp_path, monkeypatch, clips, tiny_wavlm):
    monkeypatch.delenv("FAIRRAY_SSL_PATH", raising=False)
    with pytest.raises(DataError) as err:
        make_extractor("hf_ssl").extract(clips)
    message = str(err.value)
    assert "\n" not in message and "FAIRRAY_SSL_PATH" in message and "never downloaded" in message
    with pytest.raises(DataError, match="model folder microsoft/wavlm-base-plus does not exist"):
        _ssl("microsoft/wavlm-base-plus").extract(clips)  # a hub id is not a download request
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DataError, match=r"hf_ssl: cannot load .*; it must hold config.json") as err:
        _ssl(str(tmp_path)).extract(clips)
    assert "\n" not in str(err.value)
    monkeypatch.setenv("FAIRRAY_SSL_PATH", tiny_wavlm)
    assert make_extractor("hf_ssl", device="cpu").extract(clips[:1]).shape == (1, 32)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_weights_are_part_of_the_identity(tiny_wavlm, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    copy = tmp_path / "copy"
    shutil.copytree(tiny_wavlm, copy)
    assert _ssl(str(copy)).fingerprint() == _ssl(tiny_wavlm).fingerprint()
    weights = load_file(copy / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1.0
    save_file(weights, copy / "model.safetensors")
    assert _ssl(str(copy)).fingerprint() != _ssl(tiny_wavlm).fingerprint()


@pytest.mark.parametrize("family", ["wav2vec2", "hubert"])
def test_other_ssl_families_load_through_automodel(family, tmp_path, clips):
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config_cls, model_cls = {"wav2vec2": (Wav2Vec2Config, Wav2Vec2Model), "hubert": (HubertConfig, HubertModel)}[family]
    torch.manual_seed(0)
    config = config_cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        conv_dim=(32, 32, 32), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
                        num_conv_pos_embeddings=16, feat_extract_norm="layer", do_stable_layer_norm=True)
    model_cls(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(tmp_path)
    batched = _ssl(str(tmp_path), batch_size=3).extract(clips)
    assert batched.shape == (3, 32) and np.isfinite(batched).all()
    alone = np.stack([_ssl(str(tmp_path), batch_size=1).extract([x])[0] for x in clips])
    np.testing.assert_allclose(batched, alone, atol=1e-4)
