"""Model plugins: a registered ``nn.Module`` factory with typed ``Params``."""

from fairray.models._base import MODELS, ModelPlugin, build_model
from fairray.models.mlp import MLP

__all__ = ["MLP", "MODELS", "ModelPlugin", "build_model"]
