"""Model plugins: a registered ``nn.Module`` factory with typed ``Params``."""

from fairray.models._base import MODELS, ModelPlugin, build_model
from fairray.models.layer_weighted import LayerWeighted, LayerWeightedSum
from fairray.models.mlp import MLP

__all__ = ["MLP", "MODELS", "LayerWeighted", "LayerWeightedSum", "ModelPlugin", "build_model"]
