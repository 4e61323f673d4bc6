"""An MLP classification head over utterance-level features (the built-in dataset's model)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from fairray.models._base import MODELS


@MODELS.register("mlp")
class MLP:
    @dataclass(frozen=True)
    class Params:
        #: Width of each hidden layer.
        hidden: int = field(default=128, metadata={"ge": 1})
        #: Number of hidden layers (0 = logistic regression).
        depth: int = field(default=2, metadata={"ge": 0})
        dropout: float = field(default=0.2, metadata={"ge": 0, "lt": 1})

    @classmethod
    def build(cls, params: Params, n_features: int, n_classes: int) -> nn.Module:
        layers: list[nn.Module] = []
        width = n_features
        for _ in range(params.depth):
            layers += [nn.Linear(width, params.hidden), nn.GELU(), nn.Dropout(params.dropout)]
            width = params.hidden
        layers.append(nn.Linear(width, n_classes))
        return nn.Sequential(*layers)
