"""Sweeps: Ray Tune + Optuna multi-objective search over the one training loop.

Its names are imported on first use (PEP 562): a Tune trial process that unpickles a light trainable of this
package (``_group_trial``) does not import the runner, torch and the training stack with it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fairray.sweep.runner import SweepOutcome, prepare_data, run_sweep, storage_root, tracking_uri

__all__ = ["SweepOutcome", "prepare_data", "run_sweep", "storage_root", "tracking_uri"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'fairray.sweep' has no attribute {name!r}")
    value = getattr(importlib.import_module("fairray.sweep.runner"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The lazy names too, before their first use (``dir()``, tab completion)."""
    return sorted({*globals(), *__all__})
