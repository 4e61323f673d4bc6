"""The bulk read of a sweep's trial runs on a real PostgreSQL store is what ``search_runs`` returns (the SQLite
cases and their helpers are ``tests/tracking/test_trial_runs.py``; the server is this package's ``postgres``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fairray.tracking import trial_runs

pytestmark = pytest.mark.slow

_CASES = Path(__file__).resolve().parents[1] / "tracking" / "test_trial_runs.py"


def _cases():
    spec = importlib.util.spec_from_file_location("fairray_trial_runs_cases", _CASES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bulk_read_on_postgresql_is_what_search_runs_returns(postgres, tmp_path, monkeypatch):
    import psycopg2

    host, port, user, password = postgres
    conn = psycopg2.connect(host=host, port=port, user=user, password=password, dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE bulk_runs")
    conn.close()
    cases = _cases()
    uri = f"postgresql+psycopg2://{user}:{password}@{host}:{port}/bulk_runs"
    c, parent = cases.log_small_sweep(uri, str(tmp_path))
    want = cases.search(c, parent)
    monkeypatch.setattr(MlflowClient, "search_runs", lambda *a, **k: pytest.fail("search_runs called"))
    got = trial_runs(uri, parent)
    cases.assert_same_runs(got, want)
    assert len(got) == 4
