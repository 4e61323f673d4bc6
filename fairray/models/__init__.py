"""Model plugins: registered ``nn.Module`` factories with typed ``Params``, built from input specs."""

from fairray.models._base import MODELS, ModelPlugin, as_specs, build_model, check_model, select_input
from fairray.models.fusion import Encoder, Fusion, FusionModel
from fairray.models.layer_weighted import LayerWeighted, LayerWeightedSum
from fairray.models.mlp import MLP, VectorMLP
from fairray.models.modalities import Modalities
from fairray.models.qwen2_audio import Qwen2Audio, Qwen2AudioClassifier
from fairray.models.sequence import LSTMHead, PooledHead, SequenceLSTM, SequencePool, WaveformCNN, WaveformModel
from fairray.models.ssl import SSLClassifier, SSLModel
from fairray.models.text import TextEncoder, TextModel

__all__ = ["MLP", "MODELS", "Encoder", "Fusion", "FusionModel", "LSTMHead", "LayerWeighted", "LayerWeightedSum",
           "Modalities", "ModelPlugin", "PooledHead", "Qwen2Audio", "Qwen2AudioClassifier", "SSLClassifier", "SSLModel",
           "SequenceLSTM", "SequencePool",
           "TextEncoder", "TextModel", "VectorMLP", "WaveformCNN", "WaveformModel", "as_specs", "build_model",
           "check_model", "select_input"]
