"""Fixtures of the feature tests: synthetic speech-like clips, audio files in tmp, tiny random HF speech models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

SR = 16000


def voiced(seconds: float, f0: float = 140.0, seed: int = 0, sr: int = SR) -> np.ndarray:
    """A harmonic, amplitude-modulated tone with a little noise: a stand-in for a voiced clip."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2)
    return (0.2 * x + 0.005 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="session")
def clips() -> list[np.ndarray]:
    """Three clips of different lengths (1.0, 0.55 and 0.8 s)."""
    return [voiced(1.0, 120, 0), voiced(0.55, 210, 1), voiced(0.8, 160, 2)]


def write_table(folder, clips_by_uid: dict, *, sr: int = SR, fmt: str = "FLAC", **columns) -> pd.DataFrame:
    """Write each clip to ``folder/<uid>.<fmt>`` and return the utterance table (``path`` relative to folder)."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for uid, x in clips_by_uid.items():
        rel = f"{uid}.{fmt.lower()}"
        sf.write(folder / rel, x, sr, format=fmt)
        rows.append({"uid": uid, "path": rel})
    table = pd.DataFrame(rows)
    for name, values in columns.items():
        table[name] = values
    return table


def _tiny_wavlm(folder, norm: str) -> str:
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    torch.manual_seed(0)
    config = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(32, 32, 32), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
                         num_conv_pos_embeddings=16, feat_extract_norm=norm, do_stable_layer_norm=norm == "layer")
    WavLMModel(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_wavlm(tmp_path_factory) -> str:
    """A random WavLM (hidden 32, 2 layers) with layer-normalised convolutions (WavLM Large style)."""
    return _tiny_wavlm(tmp_path_factory.mktemp("wavlm_layer"), "layer")


@pytest.fixture(scope="session")
def tiny_wavlm_group(tmp_path_factory) -> str:
    """The same with a group-normalised first convolution (WavLM Base/Base+ style)."""
    return _tiny_wavlm(tmp_path_factory.mktemp("wavlm_group"), "group")


@pytest.fixture(scope="session")
def tone():
    """:func:`voiced` (test modules cannot import conftest under importlib mode)."""
    return voiced


@pytest.fixture(scope="session")
def make_table():
    """:func:`write_table`."""
    return write_table
