"""Export Pareto-optimal checkpoints with model cards; apply them (``predict``)."""

from fairray.export._export import Exported, export_front
from fairray.export._predict import load_export, predict, write_predictions

__all__ = ["Exported", "export_front", "load_export", "predict", "write_predictions"]
