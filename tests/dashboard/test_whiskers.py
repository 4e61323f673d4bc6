"""The dashboard's whiskers computed for all fronts together (one resample and one report per replicate per trial,
however many fronts it is Pareto-optimal on) are :func:`neighbour_noise` front by front, on the real tiny sweep."""

from __future__ import annotations

import math

import pytest

from fairray.dashboard import _data
from fairray.dashboard._data import Cache, shared_noise, sweep_fronts
from fairray.frontier.query import load_sweep, neighbour_noise

pytestmark = pytest.mark.slow

N_BOOT = 30


def _fronts(tiny_sweep):
    sweep = load_sweep(tiny_sweep.uri, tiny_sweep.experiment, ablation=tiny_sweep.ablation)
    return sweep, sweep_fronts(sweep, "language")


def _assert_same_interval(a, b, where) -> None:
    assert a.n_boot_valid == b.n_boot_valid, where
    for name in ("estimate", "lo", "hi"):
        x, y = getattr(a, name), getattr(b, name)
        assert (math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-9, (where, name, x, y)


def assert_same_noise(got: dict, want: dict, where: str) -> None:
    assert list(got) == list(want), where  # the same trials, in the same order along the first objective
    for trial, entry in want.items():
        assert got[trial].keys() == entry.keys(), (where, trial)
        assert got[trial].get("next") == entry.get("next"), (where, trial)
        assert got[trial]["ci"].keys() == entry["ci"].keys()
        for key, ci in entry["ci"].items():
            _assert_same_interval(got[trial]["ci"][key], ci, (where, trial, "ci", key))
        for key in (k for k in entry if k not in ("ci", "next")):
            _assert_same_interval(got[trial][key], entry[key], (where, trial, key))


def test_shared_whiskers_are_each_fronts_own(tiny_sweep):
    sweep, fronts = _fronts(tiny_sweep)
    assert len(fronts) == 6
    # the tiny sweep's two trials are each Pareto-optimal on several panels: they are shared
    assert sum(int(f.on_front.sum()) for f in fronts) > len({t.run_id for f in fronts
                                                              for t, o in zip(f.trials, f.on_front, strict=True) if o})
    shared = shared_noise(sweep, fronts, N_BOOT)
    assert sorted(shared) == list(range(len(fronts)))  # every front served by the one resample
    for i, front in enumerate(fronts):
        assert_same_noise(shared[i], neighbour_noise(sweep, front, n_boot=N_BOOT), front.title)


def test_the_page_takes_its_whiskers_from_the_shared_resample(tiny_sweep, monkeypatch):
    """Were the shared computation to fall back front by front (silently slower), this fails."""
    sweep, fronts = _fronts(tiny_sweep)

    def refuse(*args, **kwargs):
        raise AssertionError("neighbour_noise called")

    monkeypatch.setattr(_data, "neighbour_noise", refuse)
    notes: list[str] = []
    panels = _data._panels(sweep, fronts, N_BOOT, Cache(), notes)
    assert len(panels) == len(fronts) and notes == []


def test_a_front_whose_resample_differs_gets_its_own(tiny_sweep, monkeypatch):
    """The check behind the sharing: where the union of the fronts' trials would draw other replicates than a
    front's own trials (here: pretended), that front is computed alone, with the same result as before."""
    sweep, fronts = _fronts(tiny_sweep)
    real = _data._resample
    calls = []

    def differs_for_the_first_front(preds, n_boot):
        calls.append(len(preds))
        digest = real(preds, n_boot)
        return digest + b"x" if len(calls) == 2 else digest  # call 1: the union; call 2: the first front

    monkeypatch.setattr(_data, "_resample", differs_for_the_first_front)
    shared = shared_noise(sweep, fronts, N_BOOT)
    assert 0 not in shared and sorted(shared) == list(range(1, len(fronts)))
    monkeypatch.setattr(_data, "_resample", real)
    cache = Cache()
    _data._panels(sweep, fronts, N_BOOT, cache, [])
    for front in fronts:
        got = cache.noise[_data._noise_key(sweep, front, N_BOOT)]
        assert_same_noise(got, neighbour_noise(sweep, front, n_boot=N_BOOT), front.title)


def test_a_refresh_recomputes_only_the_fronts_not_cached(tiny_sweep, monkeypatch):
    sweep, fronts = _fronts(tiny_sweep)
    cache = Cache()
    _data._panels(sweep, fronts, N_BOOT, cache, [])
    assert len(cache.noise) == len(fronts)
    seen = []
    real = _data.shared_noise
    monkeypatch.setattr(_data, "shared_noise", lambda s, f, n: seen.append(len(f)) or real(s, f, n))
    del cache.noise[_data._noise_key(sweep, fronts[3], N_BOOT)]
    _data._panels(sweep, fronts, N_BOOT, cache, [])
    assert seen == [1]
    assert_same_noise(cache.noise[_data._noise_key(sweep, fronts[3], N_BOOT)],
                      neighbour_noise(sweep, fronts[3], n_boot=N_BOOT), fronts[3].title)
