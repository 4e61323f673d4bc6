"""Faults of the servers a production sweep tracks to, injected mid-sweep into real ``fairray sweep`` processes,
every server started by the test on loopback: PostgreSQL under the MLflow server is stopped and started again
(nothing is lost), the S3 endpoint dies (one line naming it, a non-zero exit, no run left RUNNING), and two sweeps
start at once on one fresh SQLite store (both finish)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.cloud.conftest import mlflow_server_process

pytestmark = pytest.mark.slow
SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "minmaxgap.yaml"
METRIC = "dev/weighted_f1"


def write_spec(path: Path, *, name: str = "minmaxgap", epochs: int, num_samples: int = 2, **sections) -> Path:
    raw = yaml.safe_load(SPEC.read_text())
    raw["name"] = name
    raw["tracking"]["experiment"] = name
    raw["train"]["epochs"] = epochs
    raw["budget"].update(num_samples=num_samples, max_concurrent=2)
    for key, value in sections.items():
        raw[key].update(value)
    path.write_text(yaml.safe_dump(raw))
    return path


def sweep(spec: Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    full = {**os.environ, **(env or {})}
    full.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "fairray", "sweep", str(spec), "--quiet"], cwd=cwd, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def trial_runs(uri: str, experiment: str) -> list:
    c = MlflowClient(uri)
    return c.search_runs([c.get_experiment_by_name(experiment).experiment_id], max_results=1000)


def test_postgres_restart_mid_sweep_loses_nothing(restartable_postgres, tmp_path):
    pg = restartable_postgres
    store = f"postgresql+psycopg2://fairray@127.0.0.1:{pg.port}/mlflow"
    epochs = 4
    with mlflow_server_process(store, str(tmp_path / "artifacts"), {"PGPASSWORD": pg.password}) as (url, _, log):
        spec = write_spec(tmp_path / "spec.yaml", epochs=epochs, storage={"path": str(tmp_path / "runs")},
                          tracking={"uri": url})
        proc = sweep(spec, tmp_path)
        deadline = time.monotonic() + 180
        while True:  # an epoch of some trial logged: trials are mid-training
            with pg.connect("mlflow") as conn, conn.cursor() as cur:
                cur.execute("SELECT to_regclass('metrics') IS NOT NULL")
                if cur.fetchone()[0]:
                    cur.execute("SELECT count(*) FROM metrics WHERE key = %s", (METRIC,))
                    if cur.fetchone()[0] >= 1:
                        break
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"no epoch logged in time: {proc.communicate()[1][-3000:]}")
            time.sleep(0.3)
        pg.stop("fast")  # every connection of the MLflow server dropped; its requests fail with HTTP 500
        t_down = time.monotonic()
        time.sleep(8)  # several requests of the trials fail meanwhile (HTTP 503) and are retried
        pg.start()
        print(f"postgres down {time.monotonic() - t_down:.1f} s")
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:] + log.read_text(errors="replace")[-3000:]
        print(f"sweep ended {time.monotonic() - t_down:.1f} s after the stop")
        runs = trial_runs(url, "minmaxgap")
        c = MlflowClient(url)
        trials = [r for r in runs if r.data.tags.get("fairray.kind") == "trial"]
        assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
        for r in trials:  # every epoch of every trial logged once, and the final metrics
            steps = [m.step for m in c.get_metric_history(r.info.run_id, METRIC)]
            assert sorted(steps) == list(range(epochs + 1)), steps
            assert "test/weighted_f1" in r.data.metrics
        assert " 503 " in log.read_text(errors="replace")  # the outage was seen by the clients, not missed


def test_s3_endpoint_dies_mid_sweep(tmp_path):
    from tests.cloud.conftest import moto_process, stop

    with moto_process() as (endpoint, s3_env, moto):
        store = f"sqlite:///{tmp_path / 'mlflow.db'}"
        with mlflow_server_process(store, "s3://fairray-test/mlflow", {**s3_env, "MLFLOW_S3_ENDPOINT_URL": endpoint}
                                   ) as (url, _, _):
            # a checkpoint every epoch, so that the trials write to the bucket when it is gone; no retry of a
            # trial whose store is down
            spec = write_spec(tmp_path / "spec.yaml", epochs=30, storage={"path": "s3://fairray-test/fairray"},
                              tracking={"uri": url}, train={"checkpoint_interval_s": 0}, budget={"max_failures": 0})
            proc = sweep(spec, tmp_path, s3_env)
            deadline = time.monotonic() + 180
            c = MlflowClient(url)
            while True:  # the trials are training
                exp = c.get_experiment_by_name("minmaxgap")
                runs = c.search_runs([exp.experiment_id], max_results=100) if exp else []
                if any(METRIC in r.data.metrics for r in runs):
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"no epoch logged in time: {proc.communicate()[1][-3000:]}")
                time.sleep(0.5)
            killed_ms = time.time() * 1000
            stop(moto, timeout_s=0)  # SIGKILL: the endpoint refuses every connection from now on
            _, err = proc.communicate(timeout=400)
            runs = c.search_runs([exp.experiment_id], max_results=100)
    assert proc.returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"fairray: error: storage.path s3://fairray-test/fairray: the object store at {endpoint}"
                           ), err[-3000:]
    assert "--resume" in last
    statuses = [(r.data.tags.get("fairray.kind"), r.info.status) for r in runs]
    assert not [s for s in statuses if s[1] == "RUNNING"], statuses
    sweep_run = next(r for r in runs if r.data.tags.get("fairray.kind") == "sweep")
    assert sweep_run.info.status == "FAILED" and endpoint in sweep_run.data.tags["fairray.failure_reason"]
    trials = [r for r in runs if r.data.tags.get("fairray.kind") == "trial"]
    assert trials
    for r in trials:  # nothing presented as complete that ended after the store was gone
        if r.info.status == "FINISHED":
            assert r.info.end_time < killed_ms, statuses
        else:
            assert r.info.status == "FAILED" and r.data.tags.get("fairray.failure_reason"), statuses


def test_two_sweeps_at_once_on_one_fresh_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    (tmp_path / "shared").mkdir()  # the folder only: the store is created by the sweeps themselves
    specs = [write_spec(tmp_path / f"{name}.yaml", name=name, epochs=2, storage={"path": str(tmp_path / name)},
                        tracking={"uri": uri}) for name in ("race-a", "race-b")]
    procs = [sweep(spec, tmp_path) for spec in specs]  # started together: both open the fresh store at once
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    c = MlflowClient(uri)
    for name in ("race-a", "race-b"):
        runs = c.search_runs([c.get_experiment_by_name(name).experiment_id], max_results=100)
        assert sorted((r.data.tags["fairray.kind"], r.info.status) for r in runs) == \
            [("sweep", "FINISHED"), ("trial", "FINISHED"), ("trial", "FINISHED")]
