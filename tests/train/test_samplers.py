from __future__ import annotations

import numpy as np

from fairray.train import SAMPLERS


def _data(n=103, seed=0):
    rng = np.random.default_rng(seed)
    return np.arange(n), rng.integers(0, 2, n), rng.integers(0, 3, n)


def test_uniform_visits_every_index_once():
    idx, attr, stratum = _data()
    batches = list(SAMPLERS.get("uniform")(idx, attr, stratum, 16, np.random.default_rng(0)))
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == idx.tolist()
    assert all(len(b) >= 2 for b in batches)


def test_stratified_cells_gives_each_cell_its_quota():
    idx, attr, stratum = _data()
    attr[:3] = -1  # unknown group: never sampled by a cell quota
    batches = list(SAMPLERS.get("stratified_cells")(idx, attr, stratum, 24, np.random.default_rng(0)))
    assert len(batches) == int(np.ceil(len(idx) / 24))
    for b in batches:
        assert len(b) == 24 and len(set(b.tolist())) == 24
        cells = stratum[b] * 2 + attr[b]
        assert np.bincount(cells, minlength=6).tolist() == [4] * 6


def test_stratified_cells_cycles_small_cells():
    idx = np.arange(12)
    attr = np.array([0] * 10 + [1] * 2)
    stratum = np.zeros(12, dtype=int)
    batches = list(SAMPLERS.get("stratified_cells")(idx, attr, stratum, 8, np.random.default_rng(1)))
    minority = np.concatenate([b[attr[b] == 1] for b in batches])
    assert len(minority) == 4 * len(batches) and set(minority.tolist()) == {10, 11}
