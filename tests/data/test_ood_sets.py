"""``dataset.ood``: GEAR's OOD test subsets (METHODS 4.3) as extra test splits, drawn once when the data is
prepared and evaluated and logged by the loop like ``test``."""

from __future__ import annotations

import numpy as np
import pytest

from fairray.config import build_spec
from fairray.data import prepare
from fairray.errors import ConfigError
from fairray.train import LocalSession, run_trial

OOD = {"modalities": {"audio": "features"}, "label": {"column": "emotion", "positive": ["anger"]}, "k": 4,
       "moves": 3000, "seed": 1}


def raw(ood=OOD, epochs=1):
    return {"name": "t", "dataset": {"name": "ser3", "ood": ood}, "method": {"name": "erm"},
            "model": {"name": "mlp", "hidden": 16}, "train": {"epochs": epochs},
            "search": {"objectives": [{"metric": "dev/weighted_f1", "direction": "max"}]}}


@pytest.fixture(scope="module")
def data():
    return prepare(build_spec(raw(), "t").dataset)


def test_ood_sets_are_half_of_test_at_its_label_rate_with_a_larger_label_shift(data):
    assert list(data.test_sets) == ["test_ood_audio"]
    rows = data.test_sets["test_ood_audio"]
    test = data.indices("test")
    assert set(rows) <= set(test) and len(rows) == round(0.5 * len(test)) and np.all(np.diff(rows) > 0)
    anger = data.classes.index("anger")
    assert (data.y[rows] == anger).sum() == round((data.y[test] == anger).sum() * len(rows) / len(test))
    info = data.test_set_info
    assert info["test_ood_audio/label_shift"] > info["test_ood_audio/label_shift_initial"] > 0
    again = prepare(build_spec(raw(), "t").dataset)  # seeded: the same subset
    np.testing.assert_array_equal(again.test_sets["test_ood_audio"], rows)


def test_the_loop_logs_each_ood_set_like_test(data, tmp_path):
    final = run_trial(raw(), {}, data, LocalSession(tmp_path))
    n = len(data.test_sets["test_ood_audio"])
    assert final["test_ood_audio/n"] == n and np.isfinite(final["test_ood_audio/weighted_f1"])
    assert np.isfinite(final["test_ood_audio/loss"]) and final["test/n"] == len(data.indices("test"))
    assert final["data/test_ood_audio/label_shift"] == data.test_set_info["test_ood_audio/label_shift"]


@pytest.mark.parametrize(("ood", "match"), [
    ({**OOD, "modalities": {"audio": "waveform"}},
     r"dataset.ood.modalities.audio: input 'waveform' is not among the dataset's inputs \(features: vector"),
    ({**OOD, "modalities": {"joint": "features"}}, r"dataset.ood.modalities.joint: 'joint' names the set"),
    ({**OOD, "fraction": 1.0}, r"dataset.ood.fraction"),
    ({**OOD, "label": {"column": "emotion", "positive": []}}, r"dataset.ood.label.*positive"),
])
def test_bad_ood_sections_are_refused_at_load_time_in_one_line(ood, match):
    with pytest.raises(ConfigError, match=match) as err:
        build_spec(raw(ood), "spec.yaml")
    assert "\n" not in str(err.value)
