"""fairray's multi-row metric write into MLflow's SQL store stores what ``MlflowClient.log_batch`` stores.

Each case logs the same metrics to two runs of one real SQLite store, one through fairray
(:func:`fairray.tracking._mlflow._send_metrics`) and one through MLflow's own ``log_batch``, then compares what
MLflow reads back: every key's history (value, step, timestamp; NaN and ±inf included) and its latest value.
"""

from __future__ import annotations

import math

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from fairray.tracking import TrialRun, client, ensure_experiment
from fairray.tracking import _mlflow as tracking_mlflow


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = ensure_experiment(uri, "rows", str(tmp_path))
    return uri, experiment_id


def _runs(uri, experiment_id):
    c = client(uri)
    return c, c.create_run(experiment_id).info.run_id, c.create_run(experiment_id).info.run_id


def _same(value_a: float, value_b: float) -> bool:
    return (math.isnan(value_a) and math.isnan(value_b)) or value_a == pytest.approx(value_b, rel=1e-12)


def _stored(c, run_id):
    """{key: (latest value, [(step, timestamp, value) ...] sorted)} as MLflow reads them back."""
    latest = c.get_run(run_id).data.metrics
    return {k: (v, sorted((m.step, m.timestamp, m.value) for m in c.get_metric_history(run_id, k)))
            for k, v in latest.items()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        (latest_a, hist_a), (latest_b, hist_b) = a[key], b[key]
        assert _same(latest_a, latest_b), (key, latest_a, latest_b)
        assert [h[:2] for h in hist_a] == [h[:2] for h in hist_b], key
        assert all(_same(x[2], y[2]) for x, y in zip(hist_a, hist_b, strict=True)), (key, hist_a, hist_b)


def _both(c, fast, slow, metrics):
    tracking_mlflow._send_metrics(c, fast, list(metrics))
    c.log_batch(slow, metrics=list(metrics))


def test_rows_and_latest_values_match_log_batch(store):
    uri, experiment_id = store
    c, fast, slow = _runs(uri, experiment_id)
    t = 1_700_000_000_000
    epochs = [Metric(f"dev/k{i}", 0.1 * i + step, t + step, step) for step in range(11) for i in range(40)]
    special = [Metric("dev/nan", math.nan, t, 3), Metric("dev/inf", math.inf, t, 3), Metric("dev/-inf", -math.inf, t, 3),
               Metric("dev/k0", 99.0, t + 5, 5),  # an older step than the key's latest in the same batch
               Metric("dev/dup", 1.0, t, 0), Metric("dev/dup", 1.0, t, 0)]  # the same row twice in one batch
    _both(c, fast, slow, epochs + special)
    # a second batch: newer steps move the latest value, older ones (and equal step, older timestamp) do not
    _both(c, fast, slow, [Metric("dev/k1", -5.0, t + 20, 20), Metric("dev/k2", 7.0, t - 1, 0),
                          Metric("dev/k3", 3.5, t + 9, 10), Metric("dev/nan", 2.0, t + 1, 4),
                          Metric("dev/new", 0.25, t, 1)])
    fast_rows, slow_rows = _stored(c, fast), _stored(c, slow)
    _assert_same(fast_rows, slow_rows)
    assert fast_rows["dev/k1"][0] == -5.0 and fast_rows["dev/k2"][0] == pytest.approx(10.2)
    assert fast_rows["dev/inf"][0] > 1e308 and fast_rows["dev/-inf"][0] < -1e308
    assert len(fast_rows["dev/dup"][1]) == 1 and len(fast_rows["dev/k0"][1]) == 12


def test_a_row_already_stored_falls_back_to_log_batch(store):
    """The same row sent twice (a flush retried after its commit) violates the history's primary key: the fast
    path's transaction is rolled back and MLflow's log_batch, which skips stored rows, writes the rest."""
    uri, experiment_id = store
    c, fast, slow = _runs(uri, experiment_id)
    first = [Metric("dev/a", 1.0, 10, 0), Metric("dev/b", 2.0, 10, 0)]
    again = [*first, Metric("dev/a", 3.0, 11, 1)]
    _both(c, fast, slow, first)
    _both(c, fast, slow, again)
    _assert_same(_stored(c, fast), _stored(c, slow))
    assert len(_stored(c, fast)["dev/a"][1]) == 2


def test_invalid_metric_and_deleted_run_are_refused_as_by_log_batch(store):
    uri, experiment_id = store
    c, fast, slow = _runs(uri, experiment_id)
    with pytest.raises(MlflowException, match="Names may only contain"):
        tracking_mlflow._send_metrics(c, fast, [Metric("dev/lang=en/f1", 1.0, 0, 0)])
    with pytest.raises(MlflowException, match="Names may only contain"):
        c.log_batch(slow, metrics=[Metric("dev/lang=en/f1", 1.0, 0, 0)])
    assert c.get_run(fast).data.metrics == {}  # nothing half-written
    c.delete_run(fast)
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        tracking_mlflow._send_metrics(c, fast, [Metric("dev/a", 1.0, 0, 0)])


def test_trial_run_keeps_every_epoch_and_final_key(store):
    """A trial's buffered rows (per-epoch keys, then its final keys) all reach MLflow by ``finish``."""
    uri, experiment_id = store
    run = TrialRun.open(uri, experiment_id, None, "t0", {"fairray.kind": "train"}, {"train.epochs": "3"})
    for epoch in range(3):
        run.log({"dev/weighted_f1": 0.1 * epoch, "dev/loss": 1.0 - 0.1 * epoch}, step=epoch)
    run.log({"test/weighted_f1": 0.4, "test/group:F/f1": math.nan}, step=3)
    run.finish()
    c = client(uri)
    got = c.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.metrics["dev/weighted_f1"] == pytest.approx(0.2)
    assert math.isnan(got.data.metrics["test/group:F/f1"])
    assert [m.step for m in c.get_metric_history(run.run_id, "dev/loss")] == [0, 1, 2]


def test_sql_store_rows_do_not_go_through_log_batch(store, monkeypatch):
    """On MLflow's SQL store a batch of distinct rows (one in-batch repeat included) is written by the multi-row
    path: were it to fall back (an MLflow upgrade changing the store), this fails instead of the sweep slowing."""
    uri, experiment_id = store
    c, fast, _ = _runs(uri, experiment_id)

    def refuse(*args, **kwargs):
        raise AssertionError("log_batch called")

    monkeypatch.setattr(c, "log_batch", refuse)
    rows = [Metric(f"dev/k{i}", float(i), 5, step) for step in range(3) for i in range(400)]
    tracking_mlflow._send_metrics(c, fast, rows + rows[:1])
    assert len(c.get_run(fast).data.metrics) == 400
