"""An MLP classification head over a vector input (utterance-level features: the built-in dataset's model)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from fairray.inputs import InputSpec
from fairray.models._base import MODELS, select_input, vector_input


def mlp_layers(width: int, hidden: int, depth: int, dropout: float, n_out: int) -> list[nn.Module]:
    """``depth`` x (Linear → GELU → Dropout), then Linear(…, n_out): the head every model here ends with."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return layers


def head_embed(head: nn.Sequential, x):
    """What the head's final linear layer reads: ``x`` through every layer but the last (the embedding an
    encoder gives :mod:`fairray.models.fusion`)."""
    for layer in list(head)[:-1]:
        x = layer(x)
    return x


def drop_classifier(head: nn.Sequential) -> None:
    """Replace the head's final linear layer by the identity (early fusion puts its own head on top)."""
    head[len(head) - 1] = nn.Identity()


class PooledEncoder(nn.Module):
    """A model whose ``pool(inputs) -> [B, D]`` feeds an MLP ``head``: its logits, the embedding the fusion
    encoder protocol asks for (:mod:`fairray.models.fusion`) and the head without its classifier, written once."""

    head: nn.Sequential

    def pool(self, inputs) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, inputs) -> torch.Tensor:
        return self.head(self.pool(inputs))

    def embed(self, inputs) -> torch.Tensor:
        return head_embed(self.head, self.pool(inputs))

    def drop_classifier(self) -> None:
        drop_classifier(self.head)


class VectorMLP(nn.Sequential):
    """The MLP over the vector input ``key`` of the batch's input mapping (or a bare ``[B, D]`` tensor).
    An encoder of :mod:`fairray.models.fusion`: ``embed`` is the last hidden layer (the input with depth 0)."""

    def __init__(self, key: str, layers: list[nn.Module]) -> None:
        super().__init__(*layers)
        self.key = key
        self.embed_dim = layers[-1].in_features

    def forward(self, inputs):
        return super().forward(vector_input(inputs, self.key))

    def embed(self, inputs):
        return head_embed(self, vector_input(inputs, self.key))

    def drop_classifier(self) -> None:
        drop_classifier(self)


@MODELS.register("mlp")
class MLP:
    accepts = ("vector",)
    summary = "MLP over fixed utterance features (openSMILE functionals, pooled SSL vectors)"

    @dataclass(frozen=True)
    class Params:
        #: Width of each hidden layer.
        hidden: int = field(default=128, metadata={"ge": 1})
        #: Number of hidden layers (0 = logistic regression).
        depth: int = field(default=2, metadata={"ge": 0})
        dropout: float = field(default=0.2, metadata={"ge": 0, "lt": 1})
        #: The vector input to read; null = the dataset's only vector input.
        input: str | None = None

    @classmethod
    def build(cls, params: Params, inputs: Mapping[str, InputSpec], n_out: int) -> VectorMLP:
        spec = select_input("mlp", params, inputs, cls.accepts)
        return VectorMLP(spec.name, mlp_layers(spec.dim, params.hidden, params.depth, params.dropout, n_out))
