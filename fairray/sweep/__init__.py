"""Sweeps: Ray Tune + Optuna multi-objective search over the one training loop."""

from fairray.sweep.runner import SweepOutcome, prepare_data, run_sweep, storage_root, tracking_uri

__all__ = ["SweepOutcome", "prepare_data", "run_sweep", "storage_root", "tracking_uri"]
