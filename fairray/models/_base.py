"""Model extension point."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from torch import nn

from fairray._registry import Registry


class ModelPlugin(Protocol):
    """A model plugin: ``Params`` (frozen dataclass) and ``build(params, n_features, n_classes)``."""

    Params: ClassVar[type]

    @classmethod
    def build(cls, params: Any, n_features: int, n_classes: int) -> nn.Module: ...


MODELS: Registry[type[ModelPlugin]] = Registry("model")


def build_model(name: str, params: Any, n_features: int, n_classes: int) -> nn.Module:
    return MODELS.get(name).build(params, n_features, n_classes)
