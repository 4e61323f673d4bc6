"""Trial states as Prometheus metrics, for the cluster view (``dashboards/grafana/fairray-sweep.json``).

Ray exports node, task, actor and object-store metrics, but Ray Tune exports nothing about trials. The driver's
:class:`TrialStateMetrics` callback fills that gap through ``ray.util.metrics``, which Ray's metrics agent
serves (prefixed ``ray_``) on the node's ``--metrics-export-port`` next to Ray's own:

- ``ray_fairray_sweep_trials{sweep, state}``: how many of the sweep's trials are in each Tune state
  (PENDING, RUNNING, PAUSED, TERMINATED, ERROR), every state always set, zeros included;
- ``ray_fairray_sweep_trials_finished_total{sweep, state}``: trials Tune is done with (TERMINATED or ERROR),
  counted when it is, so ``rate()`` of it is the sweep's trial throughput.
"""

from __future__ import annotations

import time

from ray.tune import Callback

#: Tune's trial states (``ray.tune.experiment.Trial``), each one series of the gauge
STATES = ("PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR")
#: the gauge is recomputed at most this often (seconds): Tune's loop steps many times a second
REFRESH_S = 1.0


class TrialStateMetrics(Callback):
    """Counts the sweep's trials per state into Ray's metrics, from the Tune driver.

    Parameters
    ----------
    sweep
        The sweep's name, the ``sweep`` label of every series (one Prometheus can watch several sweeps).
    """

    def __init__(self, sweep: str):
        from ray.util.metrics import Counter, Gauge

        self._sweep = sweep
        self._last = float("-inf")
        self._trials = Gauge("fairray_sweep_trials", description="Trials of a fairray sweep per Tune state.",
                             tag_keys=("sweep", "state"))
        self._finished = Counter("fairray_sweep_trials_finished",
                                 description="Trials of a fairray sweep that Tune is done with, by end state.",
                                 tag_keys=("sweep", "state"))

    def _publish(self, trials) -> None:
        counts = dict.fromkeys(STATES, 0)
        for trial in trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        for state, n in counts.items():
            self._trials.set(n, tags={"sweep": self._sweep, "state": state})
        self._last = time.monotonic()

    def on_step_end(self, iteration, trials, **info) -> None:
        if time.monotonic() - self._last >= REFRESH_S:
            self._publish(trials)

    def _done(self, state: str, trials) -> None:
        self._finished.inc(1, tags={"sweep": self._sweep, "state": state})
        self._publish(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._done("TERMINATED", trials)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._done("ERROR", trials)

    def on_experiment_end(self, trials, **info) -> None:
        self._publish(trials)
