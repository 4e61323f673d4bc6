"""A sweep's trial runs read in bulk from MLflow's SQL store are the runs ``MlflowClient.search_runs`` returns.

Each case logs a small sweep into a real store (SQLite here; PostgreSQL in ``tests/cloud/test_trial_runs_postgres.py``)
with fairray's tracking code and MLflow's client: runs of every status, one deleted, one of another sweep, metrics
whose latest value is not the last one logged (an older step logged after a newer one), NaN and ±inf, then compares
:func:`fairray.tracking.trial_runs` with ``search_runs`` field by field.
"""

from __future__ import annotations

import math

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fairray.tracking import TrialRun, _bulk, client, ensure_experiment, trial_runs
from fairray.tracking import _mlflow as tracking_mlflow

PARENT_TAG = "mlflow.parentRunId"


def log_small_sweep(uri: str, storage: str) -> tuple[MlflowClient, object]:
    """A parent run with five trial runs (FINISHED, FAILED, KILLED, RUNNING, one deleted), a run of another parent,
    and a run without parent; returns (client, the parent run)."""
    experiment_id = ensure_experiment(uri, "bulk", storage)
    c = client(uri)
    parent = c.create_run(experiment_id, run_name="sweep-bulk", tags={"fairray.kind": "sweep"})
    other = c.create_run(experiment_id, run_name="sweep-other", tags={"fairray.kind": "sweep"})
    t = 1_700_000_000_000
    for i, status in enumerate(["FINISHED", "FAILED", "KILLED", "RUNNING", "FINISHED"]):
        run = TrialRun.open(uri, experiment_id, parent.info.run_id, f"t{i}",
                            {"fairray.kind": "trial", "fairray.method": "erm" if i % 2 else "minmaxgap"},
                            {"train.lr": str(10.0 ** -i), "model.hidden": str(16 * (i + 1)), "method.name": "erm"})
        rows = [Metric(f"dev/k{j}", 0.01 * j + step + i, t + step, step) for step in range(4) for j in range(30)]
        rows += [Metric("dev/late", 5.0, t + 50, 5), Metric("dev/late", 1.0, t + 60, 3),  # step 3 after step 5
                 Metric("dev/tie", 1.0, t + 1, 2), Metric("dev/tie", 2.0, t + 2, 2),  # same step, newer time
                 Metric("dev/nan", math.nan, t, 0), Metric("dev/inf", math.inf, t, 0),
                 Metric("dev/-inf", -math.inf, t, 0), Metric("test/f1", 1 / 3 + i, t, 9)]
        c.log_batch(run.run_id, metrics=rows[:90])
        tracking_mlflow._send_metrics(c, run.run_id, rows[90:])  # and through fairray's own insert path
        if status == "RUNNING":
            continue
        c.set_terminated(run.run_id, status=status)
        if i == 4:
            c.delete_run(run.run_id)  # search_runs leaves a deleted run out
    c.create_run(experiment_id, run_name="stray", tags={PARENT_TAG: other.info.run_id})
    c.create_run(experiment_id, run_name="orphan")
    return c, parent


def assert_same_runs(got: list, want: list) -> None:
    """The same runs in the same order: info, tags, params, latest metrics (NaN where NaN, else rel 1e-12)."""
    assert [r.info.run_id for r in got] == [r.info.run_id for r in want]
    for a, b in zip(got, want, strict=True):
        for field in ("run_id", "run_name", "status", "experiment_id", "user_id", "start_time", "end_time",
                      "lifecycle_stage", "artifact_uri"):
            assert getattr(a.info, field) == getattr(b.info, field), (b.info.run_id, field)
        assert a.data.tags == b.data.tags
        assert a.data.params == b.data.params
        assert a.data.metrics.keys() == b.data.metrics.keys()
        for key, value in b.data.metrics.items():
            other = a.data.metrics[key]
            assert (math.isnan(value) and math.isnan(other)) or math.isclose(other, value, rel_tol=1e-12), key
        history = {m.key: (m.step, m.timestamp) for m in b.data._metric_objs}
        assert {m.key: (m.step, m.timestamp) for m in a.data._metric_objs} == history


def search(c: MlflowClient, parent) -> list:
    return c.search_runs([parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
                         max_results=10000)


@pytest.fixture()
def sqlite_sweep(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c, parent = log_small_sweep(uri, str(tmp_path))
    return uri, c, parent


def test_bulk_read_is_what_search_runs_returns(sqlite_sweep):
    uri, c, parent = sqlite_sweep
    want = search(c, parent)
    got = trial_runs(uri, parent)
    assert_same_runs(got, want)
    assert len(got) == 4 and {r.info.status for r in got} == {"FINISHED", "FAILED", "KILLED", "RUNNING"}
    latest = {r.data.tags["fairray.trial_id"]: r.data.metrics for r in got}
    assert latest["t0"]["dev/late"] == 5.0 and latest["t0"]["dev/tie"] == 2.0  # MLflow's latest, not the last row
    assert math.isnan(latest["t1"]["dev/nan"]) and latest["t1"]["dev/inf"] > 1e308 > -1e308 > latest["t1"]["dev/-inf"]
    assert latest["t3"]["dev/k29"] == pytest.approx(0.29 + 3 + 3)


def test_an_unnamed_run_takes_its_run_name_tag_as_search_runs_does(sqlite_sweep):
    uri, c, parent = sqlite_sweep
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.begin() as conn:  # a run logged by an older MLflow, without a name column value
            conn.execute(sqlalchemy.text("UPDATE runs SET name = NULL WHERE run_uuid IN (SELECT run_uuid FROM tags "
                                         "WHERE key = 'fairray.trial_id' AND value = 't1')"))
    finally:
        engine.dispose()
    got = trial_runs(uri, parent)
    assert_same_runs(got, search(c, parent))
    assert "t1" in {r.info.run_name for r in got}


def test_sql_store_is_read_without_search_runs(sqlite_sweep, monkeypatch):
    """Were the bulk read to fall back (an MLflow upgrade renaming its tables or columns), this fails instead of
    the dashboard's cold read quietly taking seconds longer."""
    uri, _, parent = sqlite_sweep

    def refuse(*args, **kwargs):
        raise AssertionError("search_runs called")

    monkeypatch.setattr(MlflowClient, "search_runs", refuse)
    assert len(trial_runs(uri, parent)) == 4


def test_a_database_error_of_the_bulk_read_falls_back_to_search_runs(sqlite_sweep, monkeypatch):
    uri, c, parent = sqlite_sweep
    from sqlalchemy.exc import OperationalError

    def broken(*args, **kwargs):
        try:
            raise OperationalError("SELECT", {}, Exception("database is locked"))
        except OperationalError as exc:
            raise MlflowException(str(exc)) from exc

    monkeypatch.setattr(_bulk, "sql_child_runs", broken)
    assert_same_runs(trial_runs(uri, parent), search(c, parent))


def test_another_error_of_the_bulk_read_is_raised(sqlite_sweep, monkeypatch):
    uri, _, parent = sqlite_sweep

    def invalid(*args, **kwargs):
        raise MlflowException("not a database error")

    monkeypatch.setattr(_bulk, "sql_child_runs", invalid)
    with pytest.raises(MlflowException, match="not a database error"):
        trial_runs(uri, parent)


def test_a_store_without_sql_is_read_with_search_runs_page_by_page(tmp_path, monkeypatch):
    """A file store (as a tracking server) has no SQL tables: every run, over several pages of search_runs."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.x keeps it in maintenance mode
    uri = (tmp_path / "mlruns").as_uri()
    c, parent = log_small_sweep(uri, str(tmp_path))
    assert _bulk.sql_child_runs(c._tracking_client.store, parent.info.experiment_id, parent.info.run_id) is None
    monkeypatch.setattr(tracking_mlflow, "_SEARCH_PAGE", 3)
    got = trial_runs(uri, parent)
    assert len(got) == 4
    assert_same_runs(got, search(c, parent))
