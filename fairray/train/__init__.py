"""The one training loop and the sessions it runs in (plain process, Tune trial, Ray Train worker).

Its names are imported on first use (PEP 562), so that a light module of this package (``_group``, which a reused
worker group's Tune trial process imports) does not import torch with it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fairray.train._session import GroupSession, LocalSession, Session, TrainSession, TuneSession
    from fairray.train.loop import TrialTracking, headline, model_meta, run_trial

_LAZY = {**dict.fromkeys(["GroupSession", "LocalSession", "Session", "TrainSession", "TuneSession"],
                         "fairray.train._session"),
         **dict.fromkeys(["TrialTracking", "headline", "model_meta", "run_trial"], "fairray.train.loop")}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fairray.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The lazy names too, before their first use (``dir()``, tab completion)."""
    return sorted({*globals(), *_LAZY})


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: ``config`` carries ``raw``, ``params``, ``data``, ``tracking``, ``threads`` and, from a
    sweep, ``keep`` (the metrics its driver reads from Tune: see :class:`TrainSession`)."""
    import torch

    from fairray.train._session import TrainSession
    from fairray.train.loop import run_trial

    torch.set_num_threads(config.get("threads", 1))
    run_trial(config["raw"], config["params"], config["data"], TrainSession(config.get("keep")),
              config.get("tracking"))


__all__ = [
    "GroupSession",
    "LocalSession",
    "Session",
    "TrainSession",
    "TrialTracking",
    "TuneSession",
    "headline",
    "model_meta",
    "run_trial",
    "train_loop_per_worker",
]
