"""The feature-extractor extension point: a batch of clips (or texts) → one float32 row per item.

Lifecycle::

    extractor = make_extractor("hf_ssl", model_path="/models/wavlm-base-plus", layers=(6, 12))
    #  __init__ checks the parameters only: no model is loaded, the instance pickles cheaply
    #  (it is shipped like that to pool processes and Ray tasks).
    extractor.load()          # optional: the first extract() calls it; loads weights, offline only
    X = extractor.extract(items)   # [n, extractor.dim] float32, row i for items[i]
    #  audio items: 1-D float32 arrays at 16 kHz (fairray.data.audio decodes files);
    #  text items: str. Batching is internal (``batch_size`` where the model batches).

A subclass sets ``name`` (registry key), ``version`` (bump it whenever its output changes, so
cached features are recomputed), ``modality`` and ``Params`` (a frozen dataclass), and implements
:meth:`Extractor._load`, :meth:`Extractor._extract` and :attr:`Extractor.dim`. Parameters listed in
``runtime_params`` (batch size, device) do not change the output and stay out of the cache key;
:meth:`Extractor.fingerprint` adds what else determines the output (library version, weights).

Models are never downloaded: a model that is not on disk fails with one :class:`DataError` line
naming the parameter or environment variable to set and what the folder must hold.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import numpy as np

from fairray._local_model import (  # the one local-model loader, shared with the backbone models
    FEATURES_EXTRA,
    folder_digest,
    hf_offline,
    require,
    resolve_device,
    resolve_model_dir,
)
from fairray._registry import Registry
from fairray.errors import ConfigError, DataError

__all__ = ["EXTRACTORS", "Extractor", "FEATURES_EXTRA", "folder_digest", "hf_offline", "make_extractor", "require",
           "resolve_device", "resolve_model_dir"]


class Extractor(ABC):
    """Base class of every feature extractor; see the module docstring for the lifecycle."""

    name: ClassVar[str]
    version: ClassVar[int]
    modality: ClassVar[Literal["audio", "text"]]
    Params: ClassVar[type]
    #: Params fields that do not change the output (kept out of the cache key).
    runtime_params: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: Any = None) -> None:
        if params is None:
            params = self.Params()
        if not isinstance(params, self.Params):
            raise ConfigError(f"extractor {self.name!r}: params must be {self.name}.Params, got {type(params).__name__}")
        self.params = params
        self._model: Any = None
        self._check_params()

    # -- hooks -------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        """Cheap validation at construction (no model loading); raise ConfigError. Default: nothing to check."""
        return None

    @abstractmethod
    def _load(self) -> Any:
        """Load and return the model (anything the extraction needs); DataError if not available."""

    @abstractmethod
    def _extract(self, items: list) -> np.ndarray:
        """Features of a non-empty list of items, [len(items), dim]."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Width D of a feature row."""

    def fingerprint(self) -> dict[str, str]:
        """What besides name, version and params determines the output (library version, weight digest)."""
        return {}

    @classmethod
    def input_meta(cls, params: Any) -> dict[str, Any]:
        """What the layout of a feature row is, from the params alone (no model loading): it becomes the
        ``meta`` of the dataset's vector input spec, which model plugins check. Default: nothing to say."""
        return {}

    # -- template ----------------------------------------------------------------------------------
    def load(self) -> Extractor:
        if self._model is None:
            self._model = self._load()
        return self

    def extract(self, items: list) -> np.ndarray:
        """Features of ``items`` as float32 [len(items), dim], row i for item i."""
        items = list(items)
        for i, item in enumerate(items):
            if self.modality == "text" and not isinstance(item, str):
                raise DataError(f"extractor {self.name!r}: item {i} is {type(item).__name__}; text items are str")
            if self.modality == "audio" and not (isinstance(item, np.ndarray) and item.ndim == 1):
                raise DataError(f"extractor {self.name!r}: item {i} is not a 1-D array; audio items are 16 kHz "
                                "float32 mono signals (see fairray.data.audio.load_audio)")
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        out = np.asarray(self._extract(items), dtype=np.float32)
        if out.shape != (len(items), self.dim):
            raise DataError(f"extractor {self.name!r} returned shape {out.shape}; expected ({len(items)}, {self.dim})")
        return out

    def key_params(self) -> dict[str, Any]:
        """Params that determine the output (everything except ``runtime_params``)."""
        return {k: v for k, v in dataclasses.asdict(self.params).items() if k not in self.runtime_params}

    def __getstate__(self) -> dict:
        # Ship parameters, not weights: a worker loads the model itself.
        state = self.__dict__.copy()
        state["_model"] = None
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


EXTRACTORS: Registry[type[Extractor]] = Registry("extractor")


def make_extractor(name: str, **params: Any) -> Extractor:
    """Build a registered extractor from keyword parameters; unknown keys are refused, lists become tuples."""
    cls = EXTRACTORS.get(name)
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ConfigError(f"extractor {name!r}: unknown parameter(s) {unknown}; valid: {sorted(fields)}")
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return cls(cls.Params(**params))


