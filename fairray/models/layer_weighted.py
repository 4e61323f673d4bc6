"""A learnable softmax-weighted sum of SSL hidden-state layers, then an MLP head (SUPERB / EMO-SUPERB).

Input layout: the ``hf_ssl`` extractor with ``weighted_sum: true`` puts the mean-pooled vectors of the
selected hidden states side by side, layer-major, so a row of X is ``[layer_0 | layer_1 | ... ]`` and
``x.reshape(n, n_layers, D)[:, j]`` is the ``j``-th *selected* layer (``layers[j]``; with ``layers: all``
hidden state ``j``, where 0 is the input to the first transformer block). ``n_layers`` must be the number
of selected layers: ``len(layers)``, or ``num_hidden_layers + 1`` for ``layers: all`` (13 for WavLM
Base / Base+, 25 for WavLM Large). X carries no feature names, so the layer count cannot be read off the
data; a width that is not a multiple of ``n_layers`` is refused when the model is built.

Weighted sum, as s3prl's ``Featurizer``: a vector of ``n_layers`` logits initialised to zeros (uniform
weights); ``softmax(logits)`` weighs the layer vectors; with ``layer_norm`` each layer vector is first
normalised over its D features (``F.layer_norm`` without affine parameters, s3prl's ``normalize``; s3prl
normalises each frame before pooling, here the pooled vector). :meth:`LayerWeightedSum.layer_weights`
returns the normalised weights for logging.

Head: :class:`~fairray.models.mlp.MLP` over the D-dimensional weighted sum. The default ``depth=1`` is
IDI's "WavLM Base+ upstream (frozen, layer-weighted features) + two linear layers": Linear(D, hidden) →
GELU → Dropout → Linear(hidden, n_classes).

Standardisation: the data pipeline z-scores every column of X with the train mean / std (kept in the
checkpoint as ``feature_mean`` / ``feature_std``), so each layer's features enter the sum already at
unit scale per column. A weighted sum of standardised columns is still a linear combination of the
layers (the per-column affine map is absorbed by the head), so this changes which weights are learned,
not what the model can express; it also equalises the very different norms of SSL layers, which
``layer_norm`` would otherwise be needed for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fairray.errors import ConfigError
from fairray.inputs import InputSpec
from fairray.models._base import MODELS, select_input, vector_input
from fairray.models.mlp import mlp_layers


class LayerWeightedSum(nn.Module):
    """``head(sum_j softmax(weights)_j * layer_j(x))`` over a layer-major input [n, n_layers * dim]."""

    def __init__(self, n_layers: int, dim: int, head: nn.Module, layer_norm: bool = False, key: str = "features"
                 ) -> None:
        super().__init__()
        self.n_layers, self.dim, self.layer_norm, self.key = n_layers, dim, layer_norm, key
        #: Pre-softmax layer logits; zeros = uniform weights (s3prl's Featurizer ``weights``).
        self.weights = nn.Parameter(torch.zeros(n_layers))
        self.head = head

    def layer_weights(self) -> torch.Tensor:
        """The normalised layer weights (softmax of the logits, sums to 1), detached, [n_layers]."""
        return F.softmax(self.weights.detach(), dim=-1)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The weighted sum of the layer vectors of ``x`` [n, n_layers * dim] → [n, dim]."""
        h = x.reshape(x.shape[0], self.n_layers, self.dim)
        if self.layer_norm:
            h = F.layer_norm(h, (self.dim,))
        return torch.einsum("nld,l->nd", h, F.softmax(self.weights, dim=-1))

    def forward(self, inputs) -> torch.Tensor:
        """Class logits of the vector input ``key`` of the input mapping (or of a bare tensor)."""
        return self.head(self.pool(vector_input(inputs, self.key)))

    def extra_repr(self) -> str:
        return f"n_layers={self.n_layers}, dim={self.dim}, layer_norm={self.layer_norm}"


@MODELS.register("layer_weighted")
class LayerWeighted:
    accepts = ("vector",)
    summary = "softmax-weighted sum of stacked SSL layers (hf_ssl weighted_sum: true) + MLP head (SUPERB, IDI)"

    @dataclass(frozen=True)
    class Params:
        #: Number of stacked layers in X (the hf_ssl ``layers`` count, with ``weighted_sum: true``).
        n_layers: int = field(metadata={"ge": 1})
        #: Width of each hidden layer of the head.
        hidden: int = field(default=256, metadata={"ge": 1})
        #: Hidden layers of the head after the weighted sum (1 = IDI's two linear layers; 0 = linear probe).
        depth: int = field(default=1, metadata={"ge": 0})
        dropout: float = field(default=0.2, metadata={"ge": 0, "lt": 1})
        #: Normalise each layer vector (layer norm over its features, no affine) before weighting.
        layer_norm: bool = False
        #: The vector input to read; null = the dataset's only vector input.
        input: str | None = None

    @classmethod
    def check(cls, params: Params, inputs: Mapping[str, InputSpec]) -> None:
        """The input must hold stacked layers (``meta["stacked_layers"]``, set by hf_ssl with weighted_sum:
        true) and, where the count is known, exactly ``n_layers`` of them; its width must divide by n_layers."""
        spec = select_input("layer_weighted", params, inputs, cls.accepts)
        stacked = spec.meta.get("stacked_layers")
        if stacked is False:
            raise ConfigError(f"model layer_weighted needs the per-layer vectors side by side, but input {spec.name!r} "
                              "holds one pooled vector; set dataset.extractor.params.weighted_sum: true")
        if isinstance(stacked, int) and not isinstance(stacked, bool) and stacked != params.n_layers:
            raise ConfigError(f"model.n_layers: {params.n_layers} does not match the {stacked} layers input "
                              f"{spec.name!r} stacks (the hf_ssl layers)")
        if spec.dim is not None and spec.dim % params.n_layers:
            raise ConfigError(
                f"model layer_weighted: n_features={spec.dim} is not divisible by n_layers={params.n_layers}; "
                "set model.n_layers to the number of layers the hf_ssl extractor was asked for "
                "(len(layers), or num_hidden_layers + 1 for layers: all) and use weighted_sum: true"
            )

    @classmethod
    def build(cls, params: Params, inputs: Mapping[str, InputSpec], n_out: int) -> LayerWeightedSum:
        cls.check(params, inputs)
        spec = select_input("layer_weighted", params, inputs, cls.accepts)
        dim = spec.dim // params.n_layers
        head = nn.Sequential(*mlp_layers(dim, params.hidden, params.depth, params.dropout, n_out))
        return LayerWeightedSum(params.n_layers, dim, head, layer_norm=params.layer_norm, key=spec.name)
