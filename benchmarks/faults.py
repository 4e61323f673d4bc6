"""Faults injected into real sweeps (built-in ser3 data, minmaxgap MLP, real Ray + MLflow on this machine), measured:
trials finished / lost / repeated, MLflow runs left RUNNING, processes left behind, seconds to recover.

    python benchmarks/faults.py            # all faults, about 5 minutes on 2 cores
    python benchmarks/faults.py driver nan # some of them

- driver: SIGKILL of `fairray sweep` (its own local cluster) once a trial has finished, then `--resume`; seconds
  to recover = the `--resume` run; left = processes of the killed sweep alive 20 s after the kill.
- worker: SIGKILL of a worker node (its raylet and trial processes; `ray start` process group) of a 3-node cluster
  (head with 0 CPUs, two 1-CPU workers) mid-trial, with `budget.max_failures: 2` and a checkpoint every epoch;
  seconds to recover = from the kill to the sweep's end.
- nan: a two-cell ablation whose first cell trains with lr 1e12 (the loss becomes NaN): that trial FAILED with its
  reason, the other cell still finishes; seconds = the sweep.
- postgres: a sweep tracking to an MLflow server on PostgreSQL 15 (artifacts proxied to a local folder); once an
  epoch is logged, `pg_ctl stop -m fast`, 8 s down, `pg_ctl start`; the server answers 503 meanwhile and MLflow's
  client retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES, backoff); seconds to recover = from the restart until the next
  epoch reaches the database.
- s3: a sweep with storage.path on moto's S3 server and MLflow's artifacts proxied to it; the endpoint is SIGKILLed
  once an epoch is logged (checkpoint every epoch, max_failures 0); the sweep must exit 1 with one line naming the
  endpoint, every run closed; "lost" are the trials it failed; seconds = from the kill to the sweep's exit.
- sqlite: two `fairray sweep` processes (2 trials each) started together on one fresh sqlite:/// store; seconds =
  until both ended.

"lost" counts trial runs not FINISHED (for a driver kill: a trial started after Tune last saved its state is
unknown to the restored sweep, its run is closed and a fresh sample takes its place); "repeated" counts trial ids
finished more than once; "epochs redone" the epochs logged twice for one trial (0 when a trial resumes from the
checkpoint of its last epoch).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the cluster helpers of the tests

from mlflow.tracking import MlflowClient  # noqa: E402

from tests.cloud.conftest import Postgres, mlflow_server_process, moto_process, stop  # noqa: E402
from tests.cloud.test_faults import descendants, finished_trials, survivors  # noqa: E402
from tests.cloud.test_multinode import AGENT_PORTS, distinct_ports, ray_start  # noqa: E402

SPEC = REPO / "search_spaces" / "minmaxgap.yaml"


def write_spec(root: Path, **train) -> tuple[Path, str, dict]:
    raw = yaml.safe_load(SPEC.read_text())
    raw["train"].update(train)
    raw["storage"]["path"] = str(root / "runs")
    spec = root / "spec.yaml"
    return spec, f"sqlite:///{root / 'runs' / 'mlflow.db'}", raw


def tally(uri: str, experiment: str = "minmaxgap") -> dict:
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    trials = [r for r in runs if r.data.tags.get("fairray.kind") == "trial"]
    done = Counter(r.data.tags["fairray.trial_id"] for r in trials if r.info.status == "FINISHED")
    return {"finished": len(done), "lost": sum(r.info.status != "FINISHED" for r in trials),
            "repeated": sum(n > 1 for n in done.values()),
            "running": sum(r.info.status == "RUNNING" for r in runs),
            # epochs trained twice: a trial restarted from scratch logs its early epochs again, one resumed from
            # its last checkpoint only the epochs after it
            "redone": sum(len(h) - len({m.step for m in h}) for h in
                          (c.get_metric_history(r.info.run_id, "dev/weighted_f1") for r in trials)),
            "reasons": sorted({r.data.tags.get("fairray.failure_reason", "")[:60] for r in trials
                               if r.info.status == "FAILED"})}


def fairray(*args: str, env: dict | None = None, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fairray", *args, "--quiet"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def driver_kill(root: Path) -> dict:
    spec, uri, raw = write_spec(root, epochs=10)
    raw["budget"].update(num_samples=6, max_concurrent=2)
    spec.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen([sys.executable, "-m", "fairray", "sweep", str(spec), "--quiet"], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    seen: dict[int, float] = {}
    while finished_trials(root / "runs" / "mlflow.db") < 1:
        descendants(proc.pid, seen)
        if proc.poll() is not None:
            raise RuntimeError("the sweep ended before any trial finished")
        time.sleep(0.2)
    descendants(proc.pid, seen)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(20)
    left = len(survivors(seen))
    t0 = time.monotonic()
    out = fairray("sweep", str(spec), "--resume", cwd=root)
    seconds = time.monotonic() - t0
    return {**tally(uri), "left": left, "seconds": seconds, "rc": out.returncode, "of": 6}


def worker_kill(root: Path) -> dict:
    spec, uri, raw = write_spec(root, epochs=12, checkpoint_interval_s=0)
    raw["budget"].update(num_samples=2, max_concurrent=2, max_failures=2)
    spec.write_text(yaml.safe_dump(raw))
    temp = Path(tempfile.mkdtemp(prefix="fr-fb-", dir="/tmp"))
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(token, RAY_USAGE_STATS_ENABLED="0", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    gcs_port, dash_port, client_port, *ports = distinct_ports(3 + 3 * len(AGENT_PORTS))
    gcs = f"127.0.0.1:{gcs_port}"
    procs = [ray_start(["--head", "--num-cpus", "0", "--port", str(gcs_port), "--include-dashboard", "false",
                        "--ray-client-server-port", str(client_port), "--temp-dir", str(temp)], env,
                       temp / "head.log", ports[0::3])]
    try:
        time.sleep(15)
        for i in range(2):
            procs.append(ray_start(["--address", gcs, "--num-cpus", "1"], env, temp / f"w{i}.log", ports[i + 1::3]))
            time.sleep(12)
        sweep = subprocess.Popen([sys.executable, "-m", "fairray", "sweep", str(spec), "--address", gcs, "--quiet"],
                                 cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        db = root / "runs" / "mlflow.db"
        while not _some_epoch_logged(db):
            if sweep.poll() is not None:
                raise RuntimeError("the sweep ended before a trial logged an epoch")
            time.sleep(0.5)
        os.killpg(procs[1].pid, signal.SIGKILL)  # the first worker node, raylet, agents and trial processes
        t0 = time.monotonic()
        rc = sweep.wait(timeout=900)
        seconds = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=40)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
    return {**tally(uri), "left": 0, "seconds": seconds, "rc": rc, "of": 2}


def _some_epoch_logged(db: Path) -> bool:
    import sqlite3

    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return con.execute("select count(*) from metrics where key = 'dev/weighted_f1'").fetchone()[0] >= 2
    except sqlite3.Error:
        return False


def nan_trial(root: Path) -> dict:
    spec, uri, raw = write_spec(root, epochs=2)
    raw["ablations"] = {"nan": {"seeds": [0], "cells": [{"train.lr": [1.0e12, 0.001]}]}}
    spec.write_text(yaml.safe_dump(raw))
    t0 = time.monotonic()
    out = fairray("sweep", str(spec), "--ablation", "nan", cwd=root)
    return {**tally(uri), "left": 0, "seconds": time.monotonic() - t0, "rc": out.returncode, "of": 2}


def _wait_epochs(count, n: int, proc: subprocess.Popen, timeout_s: float = 300) -> int:
    """Poll ``count()`` (epochs logged) until it reaches ``n``; the count."""
    deadline = time.monotonic() + timeout_s
    while (got := count()) < n:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"only {got} epochs logged before the sweep ended or the time ran out")
        time.sleep(0.3)
    return got


def postgres_restart(root: Path) -> dict:
    pg_root = Path(tempfile.mkdtemp(prefix="fr-pgb-", dir="/tmp"))  # the postgres account must reach it
    pg = Postgres(pg_root)
    pg.start()
    try:
        with pg.connect() as conn:
            conn.autocommit = True
            conn.cursor().execute("CREATE DATABASE mlflow")
        conn.close()

        def epochs() -> int:
            try:
                with pg.connect("mlflow") as conn, conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM metrics WHERE key = 'dev/weighted_f1'")
                    return cur.fetchone()[0]
            except Exception:  # noqa: BLE001 - no table yet, or the server is down
                return 0

        store = f"postgresql+psycopg2://fairray@127.0.0.1:{pg.port}/mlflow"
        with mlflow_server_process(store, str(root / "artifacts"), {"PGPASSWORD": pg.password}) as (url, _, _):
            spec, _, raw = write_spec(root, epochs=8)
            raw["budget"].update(num_samples=2, max_concurrent=2)
            raw["tracking"]["uri"] = url
            spec.write_text(yaml.safe_dump(raw))
            proc = subprocess.Popen([sys.executable, "-m", "fairray", "sweep", str(spec), "--quiet"], cwd=root,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _wait_epochs(epochs, 1, proc)
            pg.stop("fast")
            time.sleep(8)
            pg.start()
            t0 = time.monotonic()
            with pg.connect("mlflow") as conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM metrics WHERE key = 'dev/weighted_f1'")
                at_restart = cur.fetchone()[0]
            got = at_restart
            while got <= at_restart and proc.poll() is None:
                time.sleep(0.2)
                got = epochs()
            seconds = time.monotonic() - t0
            rc = proc.wait(timeout=900)
            return {**tally(url), "left": 0, "seconds": seconds, "rc": rc, "of": 2}
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            pg.stop("immediate")
        shutil.rmtree(pg_root, ignore_errors=True)


def s3_stop(root: Path) -> dict:
    with moto_process() as (endpoint, s3_env, moto):
        store = f"sqlite:///{root / 'mlflow.db'}"
        with mlflow_server_process(store, "s3://fairray-test/mlflow", {**s3_env, "MLFLOW_S3_ENDPOINT_URL": endpoint}
                                   ) as (url, _, _):
            spec, _, raw = write_spec(root, epochs=30, checkpoint_interval_s=0)
            raw["budget"].update(num_samples=2, max_concurrent=2, max_failures=0)
            raw["tracking"]["uri"] = url
            raw["storage"]["path"] = "s3://fairray-test/fairray"
            spec.write_text(yaml.safe_dump(raw))
            proc = subprocess.Popen([sys.executable, "-m", "fairray", "sweep", str(spec), "--quiet"], cwd=root,
                                    env={**os.environ, **s3_env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True)
            c = MlflowClient(url)

            def epochs() -> int:
                exp = c.get_experiment_by_name("minmaxgap")
                runs = c.search_runs([exp.experiment_id], max_results=100) if exp else []
                return sum("dev/weighted_f1" in r.data.metrics for r in runs)

            _wait_epochs(epochs, 1, proc)
            stop(moto, timeout_s=0)
            t0 = time.monotonic()
            _, err = proc.communicate(timeout=900)
            seconds = time.monotonic() - t0
            line = err.strip().splitlines()[-1] if err.strip() else ""
            r = {**tally(url), "left": 0, "seconds": seconds, "rc": proc.returncode, "of": 2}
            r["reasons"] = [*r["reasons"], f"last line: {line[:160]}"]
            return r


def sqlite_race(root: Path) -> dict:
    (root / "shared").mkdir()
    uri = f"sqlite:///{root / 'shared' / 'mlflow.db'}"
    procs = []
    for name in ("race-a", "race-b"):
        spec, _, raw = write_spec(root, epochs=4)
        raw.update(name=name)
        raw["tracking"].update(uri=uri, experiment=name)
        raw["storage"]["path"] = str(root / name)
        raw["budget"].update(num_samples=2, max_concurrent=2)
        (root / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "fairray", "sweep", str(root / f"{n}.yaml"), "--quiet"],
                              cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for n in ("race-a", "race-b")]
    rcs = [p.wait(timeout=900) for p in procs]
    seconds = time.monotonic() - t0
    a, b = (tally(uri, n) for n in ("race-a", "race-b"))
    return {**{k: a[k] + b[k] for k in ("finished", "lost", "repeated", "running", "redone", "reasons")},
            "left": 0, "seconds": seconds, "rc": max(rcs), "of": 4}


FAULTS = {"driver": ("SIGKILL driver, --resume", driver_kill), "worker": ("SIGKILL a worker node", worker_kill),
          "nan": ("loss becomes NaN", nan_trial), "postgres": ("restart PostgreSQL", postgres_restart),
          "s3": ("S3 endpoint killed", s3_stop), "sqlite": ("2 sweeps, 1 fresh SQLite", sqlite_race)}


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0] if __doc__ else None)
    parser.add_argument("faults", nargs="*", metavar="FAULT",
                        help=f"faults to inject, in order (default: all): {', '.join(FAULTS)}")
    names = parser.parse_args(argv).faults
    unknown = [n for n in names if n not in FAULTS]
    if unknown:  # (argparse's choices reject the empty default of nargs="*" on Python 3.11)
        parser.error(f"unknown fault {unknown[0]!r}; choose from {', '.join(FAULTS)}")
    rows = []
    for name in names or list(FAULTS):
        label, fn = FAULTS[name]
        with tempfile.TemporaryDirectory(prefix=f"fr-fault-{name}-") as d:
            r = fn(Path(d))
        rows.append((label, r))
        print(f"{label}: {r}", file=sys.stderr, flush=True)
    print(f"{'fault':<26} {'finished':>9} {'lost':>5} {'repeated':>9} {'RUNNING':>8} {'left':>5} {'recover s':>10}"
          f" {'epochs redone':>14} {'exit':>5}")
    for label, r in rows:
        print(f"{label:<26} {r['finished']:>4} of {r['of']:<2} {r['lost']:>5} {r['repeated']:>9} {r['running']:>8}"
              f" {r['left']:>5} {r['seconds']:>10.0f} {r['redone']:>14} {r['rc']:>5}")
    for label, r in rows:
        if r["reasons"]:
            print(f"{label}: FAILED because {'; '.join(r['reasons'])}")


if __name__ == "__main__":
    main(sys.argv[1:])
