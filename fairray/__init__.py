"""fairray: fairness-aware speech emotion recognition sweeps on Ray Tune, Optuna and MLflow."""

__version__ = "0.1.0"
