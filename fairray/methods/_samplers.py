"""Batch composition (METHODS 3.0 samplers); methods pick one by name (``Method.batches``), the loop just
iterates. A leaf of the methods package: it imports nothing of fairray but the registry."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from fairray._registry import Registry


@dataclass(frozen=True)
class SamplerInput:
    """What batch samplers see: training row indices and, per dataset row, label and group codes."""

    indices: np.ndarray
    y: np.ndarray
    attr: np.ndarray
    stratum: np.ndarray
    group: np.ndarray
    #: Dialogue code per dataset row (-1 = none), when the dataset has dialogue context; else None.
    dialogue: np.ndarray | None = None

#: name -> fn(SamplerInput, batch_size, rng) -> iterator of index arrays (one epoch)
SAMPLERS: Registry[Callable[..., Iterator[np.ndarray]]] = Registry("sampler")


@SAMPLERS.register("uniform")
def uniform(inp: SamplerInput, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Shuffle, then consecutive batches (the last one may be smaller, never below 2 samples)."""
    order = rng.permutation(inp.indices)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        if len(batch) >= 2:
            yield batch


@SAMPLERS.register("stratified_cells")
def stratified_cells(inp: SamplerInput, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """A fixed quota per stratum x attribute cell in every batch (``batch_size // n_cells`` each).

    An epoch has ``ceil(N / batch_size)`` batches; each cell is drawn without replacement from its own
    shuffled queue, reshuffled when it runs out, so small cells are revisited more often. The batch
    size is ``quota * n_cells`` (the remainder of ``batch_size`` is dropped).
    """
    indices, attr, stratum = inp.indices, inp.attr, inp.stratum
    cells = stratum[indices] * (attr.max() + 1) + attr[indices]
    known = (attr[indices] >= 0) & (stratum[indices] >= 0)
    members = [indices[(cells == c) & known] for c in np.unique(cells[known])]
    quota = max(1, batch_size // len(members))
    queues = [rng.permutation(m) for m in members]
    positions = [0] * len(members)
    for _ in range(math.ceil(len(indices) / batch_size)):
        batch = []
        for k, member in enumerate(members):
            take, got = [], 0
            while got < quota:
                if positions[k] == len(queues[k]):
                    # reshuffle; samples already in this batch go last, so a batch repeats a sample
                    # only when its cell is smaller than the quota
                    taken = np.concatenate(take) if take else np.empty(0, dtype=member.dtype)
                    fresh = rng.permutation(np.setdiff1d(member, taken))
                    queues[k], positions[k] = np.concatenate([fresh, rng.permutation(taken)]), 0
                n = min(quota - got, len(queues[k]) - positions[k])
                take.append(queues[k][positions[k]:positions[k] + n])
                positions[k] += n
                got += n
            batch.append(np.concatenate(take))
        yield rng.permutation(np.concatenate(batch))


def _weighted(inp: SamplerInput, codes: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Draw with replacement, each sample with probability proportional to 1 / (size of its code)."""
    idx = inp.indices
    c = codes[idx]
    known = c >= 0
    counts = np.bincount(c[known])
    weight = np.where(known, 1.0 / np.maximum(counts[np.maximum(c, 0)], 1), 0.0)
    if weight.sum() == 0:
        weight = np.ones(len(idx))
    p = weight / weight.sum()
    for _ in range(math.ceil(len(idx) / batch_size)):
        yield rng.choice(idx, size=batch_size, replace=True, p=p)


@SAMPLERS.register("group_balanced")
def group_balanced(inp: SamplerInput, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Each training group equally likely per draw (``p_i ∝ 1/n_{g_i}``, with replacement; Sagawa's runs)."""
    return _weighted(inp, inp.group, batch_size, rng)


@SAMPLERS.register("class_balanced")
def class_balanced(inp: SamplerInput, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Each class equally likely per draw (``p_i ∝ 1/n_{c_i}``, with replacement)."""
    return _weighted(inp, inp.y, batch_size, rng)


@SAMPLERS.register("dialogues")
def dialogues(inp: SamplerInput, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Whole dialogues in random order, packed into batches of about ``batch_size`` utterances (a batch closes
    once it reaches ``batch_size``; a dialogue is never split). Rows without a dialogue (code -1, or data
    without dialogue context) are dialogues of one utterance."""
    idx = np.asarray(inp.indices)
    if inp.dialogue is None:
        codes = -1 - np.arange(len(idx))
    else:
        d = np.asarray(inp.dialogue)[idx]
        codes = np.where(d >= 0, d, -1 - np.arange(len(idx)))
    uniq, inverse = np.unique(codes, return_inverse=True)
    members = [[] for _ in uniq]
    for row, k in zip(idx, inverse, strict=True):
        members[k].append(row)
    batch: list[int] = []
    for k in rng.permutation(len(uniq)):
        batch.extend(members[k])
        if len(batch) >= batch_size:
            yield np.asarray(batch)
            batch = []
    if len(batch) >= 2:
        yield np.asarray(batch)
