"""Batch sums that see the whole optimiser step: across data-parallel workers and accumulated micro-batches.

Every reduction over the samples of a batch that a loss is not simply the mean of (group sums and
counts, soft group masses) goes through :func:`batch_sum`. Under data parallelism it all-reduces, with a
differentiable all-reduce so every worker's samples receive the gradient of the global statistic (METHODS
3.0). Under gradient accumulation (``train.accumulate``) the loop first runs the step's micro-batches
without gradients while :func:`recording`, then each micro-batch with gradients while :func:`replaying`:
the ``k``-th ``batch_sum`` of micro-batch ``m`` then returns

    S = s_m + (1/w_m - 1) (s_m - sg(s_m)) + sum_{m' != m} sg(s_m')   (the value of the whole step's sum)

with the gradient of ``s_m`` scaled by ``1 / w_m``, where ``w_m = n_m / N`` is the weight the loop gives the
micro-batch's loss. Summed over the micro-batches, the gradients of ``f(S)`` and of per-sample means are
then exactly those of the whole batch (the same argument as the all-reduce under DDP).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch


class Accumulation:
    """The batch sums of one optimiser step's micro-batches (``records[m][k]``: the k-th sum of micro-batch m)."""

    def __init__(self, n_micro: int) -> None:
        self.records: list[list[torch.Tensor]] = [[] for _ in range(n_micro)]
        self.mode: str = "off"
        self.micro = 0
        self.scale = 1.0
        self.calls = 0

    @property
    def used(self) -> bool:
        """Whether the recorded pass made any batch sum."""
        return any(self.records)

    def combine(self, t: torch.Tensor) -> torch.Tensor:
        if self.mode == "record":
            self.records[self.micro].append(t.detach())
            return t
        k = self.calls
        self.calls += 1
        others = [r[k] for m, r in enumerate(self.records) if m != self.micro]
        if any(len(r) <= k for r in self.records) or any(o.shape != t.shape for o in others):
            raise RuntimeError("a batch sum in the accumulated step does not match the recorded pass (a loss whose "
                               "reductions depend on the micro-batch); set train.accumulate: 1")
        rest = torch.stack(others).sum(dim=0) if others else torch.zeros_like(t)
        # value exactly t + rest (t - sg(t) is exactly 0, so counts stay integers), gradient scale * dt
        return t + (self.scale - 1.0) * (t - t.detach()) + rest.to(t.dtype)


_ACTIVE: contextvars.ContextVar[Accumulation | None] = contextvars.ContextVar("fairray_accumulation", default=None)
_FORBIDDEN: contextvars.ContextVar[str | None] = contextvars.ContextVar("fairray_batch_sum_forbidden", default=None)


@contextlib.contextmanager
def _active(acc: Accumulation) -> Iterator[None]:
    token = _ACTIVE.set(acc)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def recording(acc: Accumulation, micro: int) -> contextlib.AbstractContextManager[None]:
    """Micro-batch ``micro`` without gradients: its batch sums are recorded."""
    acc.mode, acc.micro = "record", micro
    return _active(acc)


def replaying(acc: Accumulation, micro: int, weight: float) -> contextlib.AbstractContextManager[None]:
    """Micro-batch ``micro`` with gradients; its loss enters the step with ``weight`` (``n_m / N``)."""
    acc.mode, acc.micro, acc.scale, acc.calls = "replay", micro, 1.0 / weight, 0
    return _active(acc)


@contextlib.contextmanager
def forbidden(reason: str) -> Iterator[None]:
    """Make :func:`batch_sum` an error (a method that declared ``batch_statistics = False`` under accumulation)."""
    token = _FORBIDDEN.set(reason)
    try:
        yield
    finally:
        _FORBIDDEN.reset(token)


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(t)
    return t


def batch_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` (a sum over this worker's samples of the current micro-batch) as the sum over the whole step:
    all workers and, under accumulation, all micro-batches. Differentiable. Compute ``t`` in float32 (see
    :func:`fairray.methods._groups.group_means`): group sums in bf16 would move gaps and q by their own size."""
    reason = _FORBIDDEN.get()
    if reason is not None:
        raise RuntimeError(reason)
    t = _all_reduce_sum(t)
    acc = _ACTIVE.get()
    return t if acc is None else acc.combine(t)
