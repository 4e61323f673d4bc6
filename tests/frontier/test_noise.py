"""Speaker-bootstrap whiskers of several fronts from one shared resample (no MLflow: hand-built trial records and
predictions, ``load_predictions`` replaced by a dict lookup).

Each front's whiskers are checked against a reference computed here from the definition: the front's own
Pareto-optimal trials, :func:`~fairray.metrics.replicate_matrix` on their predictions alone and
:func:`~fairray.metrics.interval`. Shared and per-front paths that drew different replicates would differ far
beyond the 1e-9 the comparison allows.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import fairray.metrics
from fairray.errors import TrackingError
from fairray.frontier import query
from fairray.frontier.pareto import Direction
from fairray.frontier.query import Sweep, TrialRecord, fronts, neighbour_noise, shared_neighbour_noise
from fairray.metrics import Predictions, interval, replicate_matrix

UTIL, GAP = "dev/weighted_f1", "dev/tpr_gap/gender"
N_BOOT = 40
LEVEL = 0.9
SEED = 3


def _predictions(seed: int, groups: pd.DataFrame | None = None) -> Predictions:
    """One trial's dev predictions: 4 classes, 2 languages x 2 genders, 3 speakers per cell, 6 clips each; the
    same clips and speakers for every trial, its own errors."""
    speaker, gender, language = [], [], []
    for lang in ("en", "de"):
        for g in ("F", "M"):
            for k in range(3):
                speaker += [f"{lang}{g}{k}"] * 6
                gender += [g] * 6
                language += [lang] * 6
    n = len(speaker)
    y_true = np.random.default_rng(0).integers(0, 4, n)  # one test set
    rng = np.random.default_rng(100 + seed)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, 4, n))
    return Predictions(uid=[f"u{i}" for i in range(n)], speaker=speaker,
                       groups=pd.DataFrame({"gender": gender, "language": language}) if groups is None else groups,
                       y_true=y_true, y_pred=y_pred, classes=[f"c{i}" for i in range(4)], attribute="gender",
                       stratum="language")


# (utility, gap) overall, on en and on de: t1..t3 trade off everywhere, t4 is on the de front only
POINTS = {
    "t1": ((0.70, 0.30), (0.72, 0.35), (0.60, 0.40)),
    "t2": ((0.60, 0.10), (0.55, 0.05), (0.58, 0.20)),
    "t3": ((0.50, 0.05), (0.50, 0.01), (0.40, 0.30)),
    "t4": ((0.40, 0.50), (0.30, 0.60), (0.50, 0.15)),
}  # fmt: skip


def _sweep(points=POINTS, extra: dict[str, float] | None = None) -> Sweep:
    trials = []
    for tid, (overall, en, de) in points.items():
        metrics = {UTIL: overall[0], GAP: overall[1]}
        for lang, (u, g) in (("en", en), ("de", de)):
            metrics[f"{UTIL}/language:{lang}"], metrics[f"{GAP}/language:{lang}"] = u, g
        trials.append(TrialRecord(f"run-{tid}", tid, {}, metrics | (extra or {})))
    return Sweep("tiny", "parent", ((UTIL, Direction.MAX), (GAP, Direction.MIN)), tuple(trials), 0, "sqlite:///x",
                 "gender")


@pytest.fixture
def store(monkeypatch):
    """``{run_id: Predictions}`` that ``load_predictions`` reads from (a run missing from it has none logged);
    ``store.loads`` counts each run's reads."""

    class Store(dict):
        loads: dict[str, int]

    preds = Store({f"run-t{k}": _predictions(k) for k in range(1, 5)})
    preds.loads = {}

    def load(sweep, trials, split):
        assert split == "dev"
        out = []
        for t in trials:
            preds.loads[t.run_id] = preds.loads.get(t.run_id, 0) + 1
            if t.run_id not in preds:
                raise TrackingError(f"trial {t.trial_id} (run {t.run_id}) has no predictions/{split}.npz artifact")
            out.append(preds[t.run_id])
        return out

    monkeypatch.setattr(query, "load_predictions", load)
    return preds


def reference_noise(front, preds, *, n_boot: int = N_BOOT, seed: int = SEED, level: float = LEVEL) -> dict:
    """The definition: the front's Pareto-optimal trials along its first objective, resampled on their own
    (``preds``: run id -> Predictions). The dashboard's whisker tests check against it too."""
    on = [i for i in range(len(front.trials)) if front.on_front[i]]
    sign = -1.0 if front.directions[0] is Direction.MAX else 1.0
    on.sort(key=lambda i: sign * front.values[i][0])
    full, reps = replicate_matrix([preds[front.trials[i].run_id] for i in on], list(front.objectives),
                                  n_boot=n_boot, seed=seed)
    out = {}
    for a, i in enumerate(on):
        entry = {"ci": {k: interval(full[a, j], reps[a, :, j], level) for j, k in enumerate(front.objectives)}}
        if a + 1 < len(on):
            entry["next"] = front.trials[on[a + 1]].trial_id
            for j, k in enumerate(front.objectives):
                entry[k] = interval(full[a, j] - full[a + 1, j], reps[a, :, j] - reps[a + 1, :, j], level)
        out[front.trials[i].trial_id] = entry
    return out


def _same_interval(a, b, where) -> None:
    assert a.n_boot_valid == b.n_boot_valid, where
    for name in ("estimate", "lo", "hi"):
        x, y = getattr(a, name), getattr(b, name)
        assert (math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-9, (where, name, x, y)


def assert_same_noise(got: dict, want: dict, where: str) -> None:
    assert list(got) == list(want), where  # the same trials, in the same order along the first objective
    for trial, entry in want.items():
        assert got[trial].keys() == entry.keys(), (where, trial)
        assert got[trial].get("next") == entry.get("next"), (where, trial)
        assert got[trial]["ci"].keys() == entry["ci"].keys(), (where, trial)
        for key in entry:
            if key == "next":
                continue
            pairs = entry[key].items() if key == "ci" else [(key, entry[key])]
            for k, want_ci in pairs:
                got_ci = got[trial]["ci"][k] if key == "ci" else got[trial][key]
                _same_interval(got_ci, want_ci, (where, trial, key, k))


def _all_fronts(sweep):
    return [*fronts(sweep), *fronts(sweep, by=["language"])]


def _count_resamples(monkeypatch) -> list[int]:
    """Replace ``fairray.metrics.replicate_matrix`` (what the whiskers resample with) by a counting wrapper:
    the list of the number of prediction sets of each call."""
    calls: list[int] = []
    real = fairray.metrics.replicate_matrix
    monkeypatch.setattr(fairray.metrics, "replicate_matrix",
                        lambda preds, keys, **kw: calls.append(len(preds)) or real(preds, keys, **kw))
    return calls


def test_the_fronts_share_one_resample_and_get_their_own_whiskers(store, monkeypatch):
    sweep = _sweep()
    fs = _all_fronts(sweep)
    assert [f.title for f in fs] == ["all", "language=de", "language=en"]
    calls = _count_resamples(monkeypatch)
    got = shared_neighbour_noise(sweep, fs, n_boot=N_BOOT, level=LEVEL, seed=SEED)
    assert calls == [4]  # one resample of the four distinct Pareto-optimal trials, not one per front
    assert store.loads == {f"run-t{k}": 1 for k in range(1, 5)}  # each trial's predictions read once
    for front, noise in zip(fs, got, strict=True):
        assert len(noise) == int(front.on_front.sum()) >= 3
        assert_same_noise(noise, reference_noise(front, store), front.title)
        assert_same_noise(neighbour_noise(sweep, front, n_boot=N_BOOT, level=LEVEL, seed=SEED),
                          reference_noise(front, store), front.title)


def test_a_front_whose_trials_draw_other_replicates_is_resampled_alone(store, monkeypatch):
    """t4's predictions (on the de front only) fall in other (group, stratum) cells: a union holding them would
    stratify the resample differently and so draw other replicates for the fronts without t4. Those fronts
    share theirs, the de front is resampled on its own trials; all equal their references."""
    groups = store["run-t4"].groups.copy()
    groups.loc[groups.index[:6], "language"] = "fr"  # one speaker's clips in a cell no other trial has
    store["run-t4"] = _predictions(4, groups)
    sweep = _sweep()
    fs = _all_fronts(sweep)
    calls = _count_resamples(monkeypatch)
    got = shared_neighbour_noise(sweep, fs, n_boot=N_BOOT, level=LEVEL, seed=SEED)
    assert sorted(calls) == [3, 3]  # t1..t3 for "all" and en together; de's own t1, t2, t4
    for front, noise in zip(fs, got, strict=True):
        assert_same_noise(noise, reference_noise(front, store), front.title)
    # the check has teeth: the "all" front's trials resampled with t4 (the union of all fronts) draw otherwise
    union = [store[f"run-t{k}"] for k in (1, 2, 3, 4)]
    _, mixed = replicate_matrix(union, [UTIL, GAP], n_boot=N_BOOT, seed=SEED)
    _, own = replicate_matrix(union[:3], [UTIL, GAP], n_boot=N_BOOT, seed=SEED)
    assert not np.allclose(mixed[:3], own, equal_nan=True)


def test_a_trial_without_predictions_costs_only_its_fronts_their_whiskers(store):
    del store["run-t4"]
    sweep = _sweep()
    fs = _all_fronts(sweep)
    got = shared_neighbour_noise(sweep, fs, n_boot=N_BOOT, level=LEVEL, seed=SEED)
    assert isinstance(got[1], TrackingError) and "trial t4 (run run-t4) has no predictions/dev.npz" in str(got[1])
    for i in (0, 2):
        assert_same_noise(got[i], reference_noise(fs[i], store), fs[i].title)
    with pytest.raises(TrackingError, match="trial t4"):
        neighbour_noise(sweep, fs[1], n_boot=N_BOOT)


def test_an_objective_the_predictions_do_not_give_is_its_fronts_error(store):
    """A language the trials' metrics name but their predictions do not hold: that front's error, not the
    others' (which are resampled together with it at first)."""
    sweep = _sweep(extra={f"{UTIL}/language:ja": 0.5, f"{GAP}/language:ja": 0.1})
    fs = _all_fronts(sweep)
    assert [f.title for f in fs] == ["all", "language=de", "language=en", "language=ja"]
    got = shared_neighbour_noise(sweep, fs, n_boot=N_BOOT, level=LEVEL, seed=SEED)
    assert isinstance(got[3], TrackingError) and "do not give" in str(got[3])
    for i in range(3):
        assert_same_noise(got[i], reference_noise(fs[i], store), fs[i].title)
    with pytest.raises(TrackingError, match="choose objectives the trials report"):
        neighbour_noise(sweep, fs[3], n_boot=N_BOOT)


def test_a_front_without_a_pareto_optimal_trial_has_no_whiskers(store):
    nan = (math.nan, math.nan)
    sweep = _sweep({tid: (nan, en, de) for tid, (_, en, de) in POINTS.items()})
    fs = _all_fronts(sweep)
    assert not fs[0].on_front.any()
    got = shared_neighbour_noise(sweep, fs, n_boot=N_BOOT, level=LEVEL, seed=SEED)
    assert got[0] == {} and neighbour_noise(sweep, fs[0], n_boot=N_BOOT) == {}
    assert_same_noise(got[2], reference_noise(fs[2], store), fs[2].title)
