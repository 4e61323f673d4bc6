"""Models over variable-length inputs (seq_pool, wav_cnn) and the input checks every model gets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fairray.errors import ConfigError
from fairray.inputs import InputSpec, SequenceStore
from fairray.models import MODELS, build_model, check_model


def _params(name, **kw):
    return MODELS.get(name).Params(**kw)


@pytest.mark.parametrize("name,kind,rows", [
    ("seq_pool", "sequence", [np.random.default_rng(i).standard_normal((n, 4)).astype(np.float32)
                              for i, n in enumerate((7, 30, 3))]),
    ("wav_cnn", "waveform", [np.random.default_rng(i).standard_normal(n).astype(np.float32)
                             for i, n in enumerate((900, 4000, 500))]),
])
def test_padding_does_not_change_a_clips_logits(name, kind, rows):
    store = SequenceStore.from_rows("in", kind, rows)
    torch.manual_seed(0)
    params = _params(name, dropout=0.0) if name == "seq_pool" else _params(name, channels=8, dropout=0.0)
    model = build_model(name, params, {"in": store.spec}, 3).eval()
    together = model({"in": store.take(np.arange(3))})
    for i in range(3):
        alone = model({"in": store.take(np.array([i]))})
        torch.testing.assert_close(alone[0], together[i], rtol=1e-4, atol=1e-5)
    # the check can fail: zeroing the mask of valid frames changes the output
    padded = store.take(np.arange(3))
    padded.mask[0, : padded.lengths[0] // 2] = False
    assert (model({"in": padded})[0] - together[0]).abs().max() > 1e-4


def test_wav_cnn_learns_a_frequency_from_raw_samples():
    """Two classes of 16 kHz tones (200 Hz vs 2 kHz) in noise: a few hundred steps separate them."""
    rng = np.random.default_rng(0)
    t = np.arange(1600) / 16_000
    y = rng.integers(0, 2, 64)
    clips = [np.sin(2 * np.pi * (200 if c == 0 else 2000) * t + rng.uniform(0, 6)) + 0.3 * rng.standard_normal(1600)
             for c in y]
    store = SequenceStore.from_rows("audio", "waveform", [c.astype(np.float32) for c in clips])
    torch.manual_seed(0)
    model = build_model("wav_cnn", _params("wav_cnn", channels=16, layers=3, hidden=16, dropout=0.0),
                        {"audio": store.spec}, 2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch, target = store.take(np.arange(64)), torch.as_tensor(y)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model({"audio": batch}), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    accuracy = float((model({"audio": batch}).argmax(1) == target).float().mean())
    assert accuracy > 0.9, accuracy


def test_a_model_is_refused_for_inputs_it_cannot_read():
    audio = {"audio": InputSpec("audio", "waveform")}
    with pytest.raises(ConfigError, match=r"model mlp accepts vector inputs, but the dataset provides audio: "
                                          r"waveform\[16 kHz\]; models for these inputs: (\w+, )*wav_cnn"):
        check_model("mlp", _params("mlp"), audio)
    two = {"a": InputSpec("a", "vector", dim=3), "b": InputSpec("b", "vector", dim=5)}
    with pytest.raises(ConfigError, match=r"model mlp reads one vector input but 2 are in the dataset .* set model.input"):
        build_model("mlp", _params("mlp"), two, 2)
    assert build_model("mlp", _params("mlp", input="b"), two, 2)[0].in_features == 5
    with pytest.raises(ConfigError, match=r"model mlp: input 'c' is not among the dataset's inputs \(a: vector\[3\]"):
        build_model("mlp", _params("mlp", input="c"), two, 2)


def test_every_registered_model_says_what_it_accepts():
    from fairray.inputs import KINDS

    for name in MODELS.names():
        plugin = MODELS.get(name)
        assert plugin.accepts and set(plugin.accepts) <= set(KINDS) and plugin.summary
