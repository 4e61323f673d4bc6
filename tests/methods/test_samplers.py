from __future__ import annotations

import numpy as np

from fairray.methods import SAMPLERS, SamplerInput


def _data(n=103, seed=0):
    rng = np.random.default_rng(seed)
    return np.arange(n), rng.integers(0, 2, n), rng.integers(0, 3, n)


def _inp(idx, attr, stratum, y=None, group=None):
    return SamplerInput(idx, np.zeros(len(idx), dtype=int) if y is None else y, attr, stratum,
                        attr if group is None else group)


def test_uniform_visits_every_index_once():
    idx, attr, stratum = _data()
    batches = list(SAMPLERS.get("uniform")(_inp(idx, attr, stratum), 16, np.random.default_rng(0)))
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == idx.tolist()
    assert all(len(b) >= 2 for b in batches)


def test_stratified_cells_gives_each_cell_its_quota():
    idx, attr, stratum = _data()
    attr[:3] = -1  # unknown group: never sampled by a cell quota
    batches = list(SAMPLERS.get("stratified_cells")(_inp(idx, attr, stratum), 24, np.random.default_rng(0)))
    assert len(batches) == int(np.ceil(len(idx) / 24))
    for b in batches:
        assert len(b) == 24 and len(set(b.tolist())) == 24
        cells = stratum[b] * 2 + attr[b]
        assert np.bincount(cells, minlength=6).tolist() == [4] * 6


def test_stratified_cells_cycles_small_cells():
    idx = np.arange(12)
    attr = np.array([0] * 10 + [1] * 2)
    stratum = np.zeros(12, dtype=int)
    batches = list(SAMPLERS.get("stratified_cells")(_inp(idx, attr, stratum), 8, np.random.default_rng(1)))
    minority = np.concatenate([b[attr[b] == 1] for b in batches])
    assert len(minority) == 4 * len(batches) and set(minority.tolist()) == {10, 11}


def test_group_balanced_draws_each_group_equally_often():
    idx = np.arange(1000)
    group = np.array([0] * 950 + [1] * 50)
    inp = _inp(idx, group, np.zeros(1000, dtype=int), group=group)
    drawn = np.concatenate(list(SAMPLERS.get("group_balanced")(inp, 50, np.random.default_rng(0))))
    share = (group[drawn] == 1).mean()
    assert len(drawn) == 1000 and 0.45 < share < 0.55  # 5 % of the data, half of the draws


def test_class_balanced_ignores_groups_and_balances_labels():
    idx = np.arange(400)
    y = np.array([0] * 300 + [1] * 100)
    inp = _inp(idx, np.zeros(400, dtype=int), np.zeros(400, dtype=int), y=y)
    drawn = np.concatenate(list(SAMPLERS.get("class_balanced")(inp, 40, np.random.default_rng(0))))
    assert 0.42 < (y[drawn] == 1).mean() < 0.58
