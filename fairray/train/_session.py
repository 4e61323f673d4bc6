"""Where the one training loop runs: a plain process, a Tune function trial, or a Ray Train worker.

A session only reports metrics with an optional checkpoint folder and hands back the latest
checkpoint on restart; the loop itself is identical in all three.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn


@contextlib.contextmanager
def _as_directory(checkpoint) -> Iterator[str | None]:
    """A Ray (Tune or Train) checkpoint as a local folder for the duration of the block; None if absent."""
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as d:
        yield d


class Session(Protocol):
    world_rank: int
    world_size: int

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None: ...

    def latest_checkpoint(self) -> contextlib.AbstractContextManager[str | None]: ...

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def cuda_device(self) -> torch.device: ...


def _first_visible_gpu() -> torch.device:
    """The worker's GPU: Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned, so it is device 0."""
    return torch.device("cuda", 0)


class LocalSession:
    """``fairray train`` and benchmarks: no Ray; keeps the latest checkpoint in ``root``."""

    world_rank = 0
    world_size = 1

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Keep ``checkpoint_dir`` as the latest checkpoint. The folder is the loop's to give away: it is
        moved into place (no copy) when it lies on the same file system, copied otherwise."""
        if checkpoint_dir is not None:
            from fairray._atomic import atomic_publish_dir

            target = self.root / "checkpoint"
            staged = self.root / ".checkpoint.staged"
            shutil.rmtree(staged, ignore_errors=True)
            try:
                os.rename(checkpoint_dir, staged)
            except OSError:
                shutil.copytree(checkpoint_dir, staged)
            old = self.root / ".checkpoint.old"
            shutil.rmtree(old, ignore_errors=True)
            if target.exists():
                target.rename(old)
            atomic_publish_dir(staged, target)
            shutil.rmtree(old, ignore_errors=True)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        target = self.root / "checkpoint"
        yield str(target) if target.is_dir() else None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def cuda_device(self) -> torch.device:
        return _first_visible_gpu()


class TuneSession:
    """The loop runs directly inside a Tune function trainable (single worker, no Train start-up)."""

    world_rank = 0
    world_size = 1

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        from ray import tune

        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)

    def latest_checkpoint(self) -> contextlib.AbstractContextManager[str | None]:
        from ray import tune

        return _as_directory(tune.get_checkpoint())

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def cuda_device(self) -> torch.device:
        return _first_visible_gpu()


class TrainSession:
    """The loop is a Ray Train ``train_loop_per_worker`` (DDP across ``world_size`` workers).

    Parameters
    ----------
    keep
        In a sweep (``backend: train``), the metrics its driver reads
        (:func:`fairray.sweep.runner.tune_keys`): each report then goes to Ray Train, and through
        ``TuneReportCallback`` to Tune, as :func:`fairray.sweep.runner.for_tune` of it, i.e. without the final
        evaluation's per-group breakdown, which the trial logs to MLflow itself. None: every key (a Train run
        outside a sweep).
    """

    def __init__(self, keep: frozenset[str] | None = None) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.world_rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.keep = keep

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        if self.keep is not None:
            from fairray.sweep.runner import for_tune  # the one rule of what a trial's report gives Tune

            metrics = for_tune(metrics, self.keep)
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def latest_checkpoint(self) -> contextlib.AbstractContextManager[str | None]:
        import ray.train

        return _as_directory(ray.train.get_checkpoint())

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return model
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def cuda_device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()


class GroupSession:
    """The loop runs on a worker of a group kept across trials (``resources.reuse_workers``,
    :mod:`fairray.train._group`): DDP across ``world_size`` workers as under :class:`TrainSession`, rank 0's
    reports handed to ``outbox`` (which returns once the trial's Tune side took them, with whether Tune asked the
    trial to stop).

    Every worker reports at the same points of the loop; at each report rank 0 broadcasts the stop decision, so
    that all workers leave the trial at the same report instead of some waiting in a collective.

    Parameters
    ----------
    outbox
        ``outbox(metrics, checkpoint archive or None) -> stop``, called on rank 0 only.
    stop
        Set when the trial is to end at its next report (checked on rank 0).
    checkpoint_dir
        The trial's latest checkpoint (a retry resuming), unpacked on this worker; None: a fresh start.
    keep
        The metrics the sweep's driver reads (:func:`fairray.sweep.runner.tune_keys`), as for :class:`TrainSession`.
    backend
        torch.distributed's backend (``gloo``, ``nccl``); None with one worker.
    """

    def __init__(self, world_rank: int, world_size: int, outbox, stop, checkpoint_dir: str | None,
                 keep: frozenset[str] | None, backend: str | None) -> None:
        self.world_rank, self.world_size = world_rank, world_size
        self.outbox, self.stop, self.checkpoint_dir = outbox, stop, checkpoint_dir
        self.keep, self.backend = keep, backend

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        from fairray.train._group import _Stopped, pack_dir

        stop = False
        if self.world_rank == 0:
            if self.keep is not None:
                from fairray.sweep.runner import for_tune  # the one rule of what a trial's report gives Tune

                metrics = for_tune(metrics, self.keep)
            stop = self.outbox(metrics, pack_dir(checkpoint_dir) if checkpoint_dir else None) or self.stop.is_set()
        if self.world_size > 1:
            flag = torch.tensor([1.0 if stop else 0.0],
                                device=self.cuda_device() if self.backend == "nccl" else torch.device("cpu"))
            torch.distributed.broadcast(flag, src=0)
            stop = bool(flag.item() > 0)
        if stop:
            raise _Stopped(0)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        yield self.checkpoint_dir

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """DDP across the group's workers (what ``ray.train.torch.prepare_model`` does for a Ray Train worker)."""
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def cuda_device(self) -> torch.device:
        return _first_visible_gpu()
