"""The one training loop and the sessions it runs in (plain process, Tune trial, Ray Train worker)."""

from fairray.train._session import GroupSession, LocalSession, Session, TrainSession, TuneSession
from fairray.train.loop import TrialTracking, headline, model_meta, run_trial


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: ``config`` carries ``raw``, ``params``, ``data``, ``tracking``, ``threads`` and, from a
    sweep, ``keep`` (the metrics its driver reads from Tune: see :class:`TrainSession`)."""
    import torch

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
