"""openSMILE functionals: eGeMAPSv02 (88 features) and ComParE_2016 (6373 features), one row per clip.

The library ships its own binary and configuration files, so both run offline. Clip-level
functionals are computed per clip (openSMILE has no batch call); throughput is a few tens of
clips per second per process for eGeMAPS and lower for ComParE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fairray.data.audio import TARGET_SR
from fairray.data.features._base import EXTRACTORS, Extractor, require


def make_smile(feature_set: str) -> Any:
    """An ``opensmile.Smile`` computing clip-level functionals of ``feature_set`` (a ``FeatureSet`` name)."""
    opensmile = require("opensmile", "openSMILE features", "pip install 'fairray[build]'")
    return opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, feature_set),
                           feature_level=opensmile.FeatureLevel.Functionals)


class _OpenSmile(Extractor):
    modality = "audio"
    version = 1
    feature_set: ClassVar[str]
    n_features: ClassVar[int]

    @dataclass(frozen=True)
    class Params:
        """No parameters: the feature set is fixed by the extractor's name."""

    @property
    def dim(self) -> int:
        return self.n_features

    def fingerprint(self) -> dict[str, str]:
        return {"opensmile": require("opensmile", "openSMILE features", "pip install 'fairray[build]'").__version__}

    def feature_names(self) -> list[str]:
        return list(self.load()._model.feature_names)

    def _load(self) -> Any:
        return make_smile(self.feature_set)

    def _extract(self, items: list) -> np.ndarray:
        return np.stack([self._model.process_signal(x, TARGET_SR).to_numpy(dtype=np.float32).reshape(-1)
                         for x in items])


@EXTRACTORS.register("opensmile_egemaps")
class EGeMAPS(_OpenSmile):
    """eGeMAPSv02 functionals (Eyben et al. 2016): 88 prosodic, spectral and voice-quality statistics."""

    name = "opensmile_egemaps"
    feature_set = "eGeMAPSv02"
    n_features = 88


@EXTRACTORS.register("opensmile_compare")
class ComParE(_OpenSmile):
    """ComParE_2016 functionals (Interspeech computational paralinguistics challenge set): 6373 statistics."""

    name = "opensmile_compare"
    feature_set = "ComParE_2016"
    n_features = 6373
