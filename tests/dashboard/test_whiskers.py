"""The dashboard's whiskers computed for all fronts together (one resample and one report per replicate per trial,
however many fronts it is Pareto-optimal on) are each front's own, on the real tiny sweep: those of
:func:`neighbour_noise` front by front (the frontier command's), and those of the definition (the front's own trials'
logged predictions resampled alone). The rules of the sharing are tested without MLflow in tests/frontier/test_noise.py."""

from __future__ import annotations

import pytest

import fairray.metrics
from fairray.dashboard import _data
from fairray.dashboard._data import WHISKER_LEVEL, WHISKER_SEED, Cache, sweep_fronts
from fairray.frontier import query
from fairray.frontier.query import load_predictions, load_sweep, neighbour_noise
from tests.frontier.test_noise import assert_same_noise, reference_noise

pytestmark = pytest.mark.slow

N_BOOT = 30


def _fronts(tiny_sweep):
    sweep = load_sweep(tiny_sweep.uri, tiny_sweep.experiment, ablation=tiny_sweep.ablation)
    return sweep, sweep_fronts(sweep, "language")


def _own(sweep, front) -> dict:
    """The definition (``reference_noise``) on the front's logged predictions, at the page's seed and level."""
    on = [t for t, pareto in zip(front.trials, front.on_front, strict=True) if pareto]
    preds = dict(zip((t.run_id for t in on), load_predictions(sweep, on, "dev"), strict=True))
    return reference_noise(front, preds, n_boot=N_BOOT, seed=WHISKER_SEED, level=WHISKER_LEVEL)


def _page_noise(sweep, fronts, cache=None) -> list[dict]:
    cache = Cache() if cache is None else cache
    notes: list[str] = []
    _data._panels(sweep, fronts, N_BOOT, cache, notes)
    assert notes == []
    return [cache.noise[_data._noise_key(sweep, front, N_BOOT)] for front in fronts]


def test_shared_whiskers_are_each_fronts_own(tiny_sweep):
    sweep, fronts = _fronts(tiny_sweep)
    assert len(fronts) == 6
    # the tiny sweep's two trials are each Pareto-optimal on several panels: they are shared
    assert sum(int(f.on_front.sum()) for f in fronts) > len({t.run_id for f in fronts
                                                              for t, o in zip(f.trials, f.on_front, strict=True) if o})
    for front, noise in zip(fronts, _page_noise(sweep, fronts), strict=True):
        assert noise
        assert_same_noise(noise, neighbour_noise(sweep, front, n_boot=N_BOOT), front.title)
        assert_same_noise(noise, _own(sweep, front), front.title)


def test_the_page_resamples_once_and_reads_each_trials_predictions_once(tiny_sweep, monkeypatch):
    """Were the page to resample front by front (silently slower: six resamples of the same trials), this fails."""
    sweep, fronts = _fronts(tiny_sweep)
    resamples, reads = [], []
    real_matrix, real_load = fairray.metrics.replicate_matrix, query.load_predictions
    monkeypatch.setattr(fairray.metrics, "replicate_matrix",
                        lambda preds, keys, **kw: resamples.append(len(preds)) or real_matrix(preds, keys, **kw))
    monkeypatch.setattr(query, "load_predictions",
                        lambda s, trials, split: reads.extend(t.run_id for t in trials) or real_load(s, trials, split))
    _page_noise(sweep, fronts)
    distinct = {t.run_id for f in fronts for t, o in zip(f.trials, f.on_front, strict=True) if o}
    assert resamples == [len(distinct)]
    assert sorted(reads) == sorted(distinct)


def test_a_refresh_recomputes_only_the_fronts_not_cached(tiny_sweep, monkeypatch):
    sweep, fronts = _fronts(tiny_sweep)
    cache = Cache()
    _data._panels(sweep, fronts, N_BOOT, cache, [])
    assert len(cache.noise) == len(fronts)
    seen = []
    real = _data.shared_neighbour_noise
    monkeypatch.setattr(_data, "shared_neighbour_noise", lambda s, f, **kw: seen.append(len(f)) or real(s, f, **kw))
    del cache.noise[_data._noise_key(sweep, fronts[3], N_BOOT)]
    _data._panels(sweep, fronts, N_BOOT, cache, [])
    assert seen == [1]
    assert_same_noise(cache.noise[_data._noise_key(sweep, fronts[3], N_BOOT)],
                      neighbour_noise(sweep, fronts[3], n_boot=N_BOOT), fronts[3].title)


def test_a_front_without_logged_predictions_is_a_note_not_an_error(tiny_sweep, monkeypatch):
    sweep, fronts = _fronts(tiny_sweep)
    on = [t for t, o in zip(fronts[0].trials, fronts[0].on_front, strict=True) if o]
    gone = on[0].run_id
    real_load = query.load_predictions

    def load(s, trials, split):
        if any(t.run_id == gone for t in trials):
            raise query.TrackingError(f"trial {on[0].trial_id} has no predictions/{split}.npz artifact")
        return real_load(s, trials, split)

    monkeypatch.setattr(query, "load_predictions", load)
    cache, notes = Cache(), []
    panels = _data._panels(sweep, fronts, N_BOOT, cache, notes)
    assert len(panels) == len(fronts)
    assert notes == [f"no intervals for {sweep.experiment!r}: trial {on[0].trial_id} has no predictions/dev.npz artifact"]
    for front in fronts:
        key = _data._noise_key(sweep, front, N_BOOT)
        has_gone = any(t.run_id == gone for t, o in zip(front.trials, front.on_front, strict=True) if o)
        assert (key in cache.noise) is not has_gone, front.title
