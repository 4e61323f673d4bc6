"""Run by test_lff_disent: two gloo workers update LfF's EMA tables from their halves of each batch.

Usage: python _ddp_ema_worker.py OUT_DIR. Writes OUT_DIR/rank{r}.pt with each worker's W and table state.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

WORLD = 2


def steps():
    """Three batches of 9 rows (odd, so the workers' halves differ in size) over a 20-row dataset."""
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        index = torch.randperm(20, generator=g)[:9]
        yield index, index % 2, torch.rand(9, generator=g) * 3, torch.rand(9, generator=g) * 3


def context():
    import numpy as np

    from fairray.methods import TrainContext

    cg = np.array([[5, 5], [5, 5]])
    return TrainContext(classes=("a", "b"), class_counts=cg.sum(1), attr_values=("F", "M"), strata_values=("x",),
                        n_train=20, group_values=("F", "M"), group_counts=cg.sum(0), class_group_counts=cg,
                        group_soft_counts=cg.sum(0) * 1.0, n_rows=20, epochs=1)


def batch(index, y):
    from fairray.methods import Batch

    z = torch.zeros(len(y), dtype=torch.long)
    return Batch(x=torch.zeros(len(y), 1), y=y, attr=z, stratum=z, index=index, group=z,
                 group_prob=torch.ones(len(y), 1))


def worker(rank: int, out: str) -> None:
    from fairray.methods import DifficultyWeights

    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=WORLD)
    weights = DifficultyWeights(context(), alpha=0.7)
    ws = []
    for index, y, loss_b, loss_d in steps():
        part = slice(rank, None, WORLD)  # as the loop splits a batch: idx[rank::world_size]
        w, rows = weights(batch(index[part], y[part]), loss_b[part], loss_d[part])
        weights.commit([rows])  # what LfF.on_step does after the optimiser step
        ws.append(w)
    torch.save({"w": ws, "state": weights.state_dict()}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.multiprocessing.spawn(worker, args=(sys.argv[1],), nprocs=WORLD)
