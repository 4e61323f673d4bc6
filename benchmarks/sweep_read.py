"""The cold read of a 500-trial sweep (what ``fairray dashboard`` does once before it listens), old path vs new.

The store is the one of ``benchmarks/dashboard_page.py`` (500 trial runs logged from two real trials). Side by side
in one run, alternately, median of ``--repeats``:

- ``load_sweep``: the trial runs read with ``search_runs`` (old) or the bulk SQL read of
  :func:`fairray.tracking.trial_runs` (new);
- the whiskers: :func:`fairray.frontier.query.neighbour_noise` front by front (old: each front's predictions read
  and resampled on their own) or :func:`~fairray.frontier.query.shared_neighbour_noise` of all fronts (new: each
  trial's predictions read once, one resample per split);
- the whole ``collect`` on a cold cache, each path with its own read and whiskers.

    python benchmarks/sweep_read.py [--trials 500] [--repeats 3] [--n-boot 200] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dashboard_page  # noqa: E402  (its store builder)


def _search_trial_runs(uri, sweep_run):
    from fairray.tracking import client

    return client(uri).search_runs([sweep_run.info.experiment_id], filter_string=(
        f"tags.`mlflow.parentRunId` = '{sweep_run.info.run_id}'"), max_results=10000)


@contextmanager
def old_path():
    import fairray.dashboard._data as data
    import fairray.frontier.query as query

    def front_by_front(sweep, fronts, **options):
        return [query.shared_neighbour_noise(sweep, [front], **options)[0] for front in fronts]

    saved = query.trial_runs, data.shared_neighbour_noise
    query.trial_runs, data.shared_neighbour_noise = _search_trial_runs, front_by_front
    try:
        yield
    finally:
        query.trial_runs, data.shared_neighbour_noise = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--keep", metavar="DIR", help="build the store in DIR and keep it (reused when it exists)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from fairray.dashboard import Cache, collect
    from fairray.dashboard._data import _panels, sweep_fronts
    from fairray.frontier.query import load_sweep

    tmp_ctx = tempfile.TemporaryDirectory(prefix="fairray-sweep-read-") if not args.keep else None
    tmp = Path(args.keep or tmp_ctx.name)
    tmp.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{tmp / 'bench' / 'runs' / 'mlflow.db'}"
    if not (tmp / "bench" / "runs" / "mlflow.db").exists():
        template_uri, template_exp, raw = dashboard_page.tiny_real_sweep(tmp)
        dashboard_page.synthesize_sweep(template_uri, template_exp, raw, tmp / "bench", args.trials)
    exp = dashboard_page.EXPERIMENT
    load_sweep(uri, exp)  # imports and the store's schema check warm for both paths
    print("load average before: {:.2f} {:.2f} {:.2f} (1, 5, 15 min; {} cores)".format(*os.getloadavg(), os.cpu_count()))
    times: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    for _ in range(args.repeats):
        for name in ("old", "new"):
            ctx = old_path() if name == "old" else _nothing()
            with ctx:
                t0 = time.perf_counter()
                sweep = load_sweep(uri, exp)
                t1 = time.perf_counter()
                fronts = sweep_fronts(sweep, "language")
                t2 = time.perf_counter()
                _panels(sweep, fronts, args.n_boot, Cache(), [])
                t3 = time.perf_counter()
                collect(uri, exp, n_boot=args.n_boot, cache=Cache())
                t4 = time.perf_counter()
            for phase, dt in (("load_sweep", t1 - t0), ("fronts", t2 - t1), ("whiskers", t3 - t2),
                              ("collect (cold)", t4 - t3)):
                times[name].setdefault(phase, []).append(dt)
    n_points = sum(int(f.on_front.sum()) for f in fronts)
    n_trials = len({t.run_id for f in fronts for t, o in zip(f.trials, f.on_front, strict=True) if o})
    print(f"{len(sweep.trials)} trials, {len(fronts)} fronts, {n_points} Pareto points ({n_trials} distinct trials), "
          f"--n-boot {args.n_boot}; median of {args.repeats}, old and new alternately")
    for phase in times["old"]:
        old, new = statistics.median(times["old"][phase]), statistics.median(times["new"][phase])
        print(f"  {phase:15s} old {old:6.2f} s   new {new:6.2f} s   old/new {old / new:5.1f}x")
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if tmp_ctx is not None:
        tmp_ctx.cleanup()


@contextmanager
def _nothing():
    yield


if __name__ == "__main__":
    main()
