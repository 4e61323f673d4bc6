"""Faults injected into real sweeps (built-in ser3 data, minmaxgap MLP, real Ray + MLflow on this machine), measured:
trials finished / lost / repeated, MLflow runs left RUNNING, processes left behind, seconds to recover, epochs
redone and epochs missing.

    python benchmarks/faults.py            # all faults, about 5 minutes on 2 cores
    python benchmarks/faults.py driver nan # some of them

- driver: SIGKILL of `fairray sweep` (its own local cluster) once a trial has finished, then `--resume`; seconds
  to recover = the `--resume` run; left = processes of the killed sweep alive 20 s after the kill.
- worker: SIGKILL of a worker node (its raylet and trial processes; `ray start` process group) of a 3-node cluster
  (head with 0 CPUs, two 1-CPU workers; tests/cloud/test_multinode.py's local_cluster) once both 200-epoch trials
  have logged an epoch, with `budget.max_failures: 2` and a checkpoint every epoch; seconds to recover = from the
  kill until the dead node's trial, retried (its run tagged fairray.resumed), logs an epoch beyond those it had (on
  the surviving node; with one CPU left it may wait for the other trial); left = processes of the sweep or of the
  cluster alive after the cluster was stopped.
- nan: a two-cell ablation whose first cell trains with lr 1e12 (the loss becomes NaN): that trial FAILED with its
  reason, the other cell still finishes; seconds = the sweep.
- postgres: a sweep tracking to an MLflow server on PostgreSQL 15 (artifacts proxied to a local folder); once an
  epoch is logged, `pg_ctl stop -m fast`, 8 s down, `pg_ctl start`; the server answers 503 meanwhile and MLflow's
  client retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES, backoff); seconds to recover = from the restart until an epoch
  beyond those stored at the stop reaches the database.
- s3: a sweep with storage.path on moto's S3 server and MLflow's artifacts proxied to it; the endpoint is SIGKILLed
  once an epoch is logged (checkpoint every epoch, max_failures 0); the sweep must exit 1 with one line naming the
  endpoint, every run closed; "lost" are the trials it failed; seconds = from the kill to the sweep's exit; the
  notes count runs half-written (FINISHED after the kill, FAILED without a reason) and the sweep run's state.
- sqlite: two `fairray sweep` processes (2 trials each) started together on one fresh sqlite:/// store; seconds =
  until both ended.

Every row watches the processes below the sweep (and the cluster) while it runs; "left" counts those alive 20 s
after it ended. "RUNNING" counts MLflow runs (sweep and trials) left RUNNING. "lost" counts trial runs not
FINISHED (for a driver kill: a trial started after Tune last saved its state is unknown to the restored sweep,
its run is closed and a fresh sample takes its place); "repeated" counts trial ids
finished more than once; "epochs redone" the epochs logged twice for one trial (0 or 1 when a trial resumes from
the checkpoint of its last epoch, all it had trained when it restarts from scratch), read from the MLflow metric
history of dev/weighted_f1; "epochs missing" the epochs of a finished trial that never reached the store.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the cluster helpers of the tests

from mlflow.tracking import MlflowClient  # noqa: E402

from tests.cloud.conftest import Postgres, mlflow_server_process, moto_process, stop  # noqa: E402
from tests.cloud.test_faults import descendants, finished_trials, survivors  # noqa: E402
from tests.cloud.test_faults_cluster import runs_training  # noqa: E402
from tests.cloud.test_multinode import local_cluster  # noqa: E402

SPEC = REPO / "search_spaces" / "minmaxgap.yaml"
METRIC = "dev/weighted_f1"


def write_spec(root: Path, **train) -> tuple[Path, str, dict]:
    raw = yaml.safe_load(SPEC.read_text())
    raw["train"].update(train)
    raw["storage"]["path"] = str(root / "runs")
    spec = root / "spec.yaml"
    return spec, f"sqlite:///{root / 'runs' / 'mlflow.db'}", raw


class Watch:
    """Every process below the watched ones, seen while they ran (pid -> start time): what a sweep started, so that
    what outlives it can be counted afterwards."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}

    def poll(self, *procs: subprocess.Popen) -> None:
        for p in procs:
            descendants(p.pid, self.seen)

    def wait(self, *procs: subprocess.Popen, timeout_s: float = 900) -> list[int]:
        """Poll until every one of ``procs`` has exited; their exit codes."""
        deadline = time.monotonic() + timeout_s
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"the sweep did not end within {timeout_s:.0f} s")
            self.poll(*procs)
            time.sleep(0.2)
        return [p.returncode for p in procs]

    def left(self, grace_s: float = 20) -> list[str]:
        """The processes seen that are still alive ``grace_s`` after the sweep ended (sooner when none is)."""
        deadline = time.monotonic() + grace_s
        while (alive := survivors(self.seen)) and time.monotonic() < deadline:
            time.sleep(0.5)
        return alive


def sweep(spec: Path, *args: str, cwd: Path, env: dict | None = None, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    full = {**os.environ, **(env or {})}
    full.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "fairray", "sweep", str(spec), *args, "--quiet"], cwd=cwd,
                            env=full, stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def tally(uri: str, epochs: int, experiment: str = "minmaxgap") -> dict:
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    trials = [r for r in runs if r.data.tags.get("fairray.kind") == "trial"]
    done = Counter(r.data.tags["fairray.trial_id"] for r in trials if r.info.status == "FINISHED")
    steps = {r.info.run_id: [m.step for m in c.get_metric_history(r.info.run_id, METRIC)] for r in trials}
    return {"finished": len(done), "lost": sum(r.info.status != "FINISHED" for r in trials),
            "repeated": sum(n > 1 for n in done.values()),
            "running": sum(r.info.status == "RUNNING" for r in runs),
            # epochs trained twice: a trial restarted from scratch logs its early epochs again, one resumed from
            # its last checkpoint only the epochs after it
            "redone": sum(len(s) - len(set(s)) for s in steps.values()),
            # epochs of a finished trial that never reached the store (steps 0..epochs: the epoch-0 evaluation)
            "missing": sum(epochs + 1 - len(set(steps[r.info.run_id])) for r in trials if r.info.status == "FINISHED"),
            "resumed": sum(r.data.tags.get("fairray.resumed") == "true" for r in trials),
            "steps": steps, "runs": runs,
            "reasons": sorted({r.data.tags.get("fairray.failure_reason", "")[:60] for r in trials
                               if r.info.status == "FAILED"}), "notes": []}


def row(t: dict, watch: Watch, seconds: float, rc: int, of: int) -> dict:
    left = watch.left()
    t = {**t, "left": len(left), "seen": len(watch.seen), "seconds": seconds, "rc": rc, "of": of}
    if left:
        t["notes"] = [*t["notes"], f"left behind: {'; '.join(left)[:400]}"]
    return t


def driver_kill(root: Path) -> dict:
    spec, uri, raw = write_spec(root, epochs=10)
    raw["budget"].update(num_samples=6, max_concurrent=2)
    spec.write_text(yaml.safe_dump(raw))
    watch = Watch()
    proc = sweep(spec, cwd=root)
    while finished_trials(root / "runs" / "mlflow.db") < 1:
        watch.poll(proc)
        if proc.poll() is not None:
            raise RuntimeError("the sweep ended before any trial finished")
        time.sleep(0.2)
    watch.poll(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_left = watch.left()  # processes of the killed sweep alive 20 s after the kill
    t0 = time.monotonic()
    resume = sweep(spec, "--resume", cwd=root)
    (rc,) = watch.wait(resume)
    r = row(tally(uri, 10), watch, time.monotonic() - t0, rc, 6)
    if killed_left:
        r["notes"].append(f"{len(killed_left)} of the killed sweep's processes alive 20 s after the kill")
    return r


def _last_steps(db: Path) -> dict[str, int]:
    """The last epoch each run has logged so far, read without MLflow."""
    import sqlite3

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return dict(con.execute("select run_uuid, max(step) from metrics where key = ? group by run_uuid",
                                (METRIC,)).fetchall())


def _resumed_runs(db: Path) -> set[str]:
    """The runs tagged fairray.resumed so far (a retried trial opening its run again), read without MLflow."""
    import sqlite3

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return {r for (r,) in con.execute("select run_uuid from tags where key = 'fairray.resumed' and value = 'true'")}


def worker_kill(root: Path) -> dict:
    epochs = 200  # tens of seconds: both trials are mid-training when the node dies (as in the test)
    spec, uri, raw = write_spec(root, epochs=epochs, checkpoint_interval_s=0)
    raw["budget"].update(num_samples=2, max_concurrent=2, max_failures=2)
    spec.write_text(yaml.safe_dump(raw))
    watch = Watch()
    with local_cluster() as (gcs, _, client_env, procs, _):
        watch.poll(*procs)
        proc = sweep(spec, "--address", gcs, cwd=root, env=client_env)
        db = root / "runs" / "mlflow.db"
        deadline = time.monotonic() + 240
        while runs_training(db) < 2:  # both trials (one per worker node) are training
            watch.poll(proc, *procs)
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the trials did not both log an epoch in time")
            time.sleep(0.3)
        watch.poll(proc, *procs)
        at_kill = _last_steps(db)
        node: dict[int, float] = {}
        descendants(procs[1].pid, node)  # the first worker node: raylet, agents and trial processes, ...
        os.killpg(procs[1].pid, signal.SIGKILL)  # ... its process group at once, and ...
        for pid, created in node.items():  # ... any that left the group (a trial kept training without this)
            with contextlib.suppress(psutil.Error):
                if (q := psutil.Process(pid)).create_time() == created:
                    q.kill()
        t0, killed_ms = time.monotonic(), time.time() * 1000
        last = dict(at_kill)  # run -> the last epoch it logged, as of the previous poll
        retried: dict[str, tuple[float, int]] = {}  # run -> (seconds from the kill to its retry, epochs it had)
        trained: dict[str, float] = {}  # run -> seconds from the kill to its first epoch logged after its retry
        deadline = t0 + 900
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the sweep did not end within 900 s of the kill")
            watch.poll(proc, *procs)
            now, steps, resumed = time.monotonic() - t0, _last_steps(db), _resumed_runs(db)
            for run in resumed - retried.keys():  # the retried trial opened its run again: what it had before
                retried[run] = (now, last.get(run, -1))
            for run, (_, before) in retried.items():
                if run not in trained and steps.get(run, -1) > before:
                    trained[run] = now
            last = steps
            time.sleep(0.3)
        rc = proc.returncode
        ended = time.monotonic() - t0
    # recovered: the dead node's trial, retried from its checkpoint, has trained an epoch again
    seconds = max(trained.values()) if trained and len(trained) == len(retried) else float("nan")
    # the cluster is stopped now: nothing of it, nor of the sweep, may be left (row() counts what is)
    t = tally(uri, epochs)
    t["notes"] = [f"at the kill the trials had logged epochs {sorted(at_kill.values())}; {t['resumed']} trial"
                  " resumed (fairray.resumed)",
                  *(f"trial run {run[:8]} retried {at:.1f} s after the kill (had logged epoch {before}), trained"
                    f" an epoch again {trained[run]:.1f} s after it" if run in trained else
                    f"trial run {run[:8]} retried {at:.1f} s after the kill, never trained again"
                    for run, (at, before) in retried.items()),
                  f"the sweep ended {ended:.0f} s after the kill",
                  *(f"trial run {r.info.run_id[:8]} (not retried) ended {(r.info.end_time - killed_ms) / 1000:.1f} s"
                    " after the kill" for r in t["runs"] if r.data.tags.get("fairray.kind") == "trial"
                    and r.info.run_id not in retried),
                  *(f"trial run {run[:8]}: {len(s)} epoch logs, {len(s) - len(set(s))} epochs logged twice"
                    for run, s in t["steps"].items())]
    return row(t, watch, seconds, rc, 2)


def nan_trial(root: Path) -> dict:
    spec, uri, raw = write_spec(root, epochs=2)
    raw["ablations"] = {"nan": {"seeds": [0], "cells": [{"train.lr": [1.0e12, 0.001]}]}}
    spec.write_text(yaml.safe_dump(raw))
    watch = Watch()
    t0 = time.monotonic()
    (rc,) = watch.wait(sweep(spec, "--ablation", "nan", cwd=root))
    return row(tally(uri, 2), watch, time.monotonic() - t0, rc, 2)


def _wait_epochs(count, n: int, proc: subprocess.Popen, watch: Watch, timeout_s: float = 300) -> int:
    """Poll ``count()`` (epochs logged) until it reaches ``n``; the count."""
    deadline = time.monotonic() + timeout_s
    while (got := count()) < n:
        watch.poll(proc)
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
        conn = pg.connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()

        def epochs() -> int:
            try:
                with pg.connect("mlflow") as conn, conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM metrics WHERE key = %s", (METRIC,))
                    return cur.fetchone()[0]
            except Exception:  # noqa: BLE001 - no table yet, or the server is down
                return 0

        store = f"postgresql+psycopg2://fairray@127.0.0.1:{pg.port}/mlflow"
        with mlflow_server_process(store, str(root / "artifacts"), {"PGPASSWORD": pg.password}) as (url, _, log):
            n_epochs = 200  # ~0.1 s an epoch: the trials train through the 8 s outage and after it
            spec, _, raw = write_spec(root, epochs=n_epochs)
            raw["budget"].update(num_samples=2, max_concurrent=2)
            raw["tracking"]["uri"] = url
            spec.write_text(yaml.safe_dump(raw))
            watch = Watch()
            proc = sweep(spec, cwd=root)
            _wait_epochs(epochs, 1, proc, watch)
            before = epochs()  # what the database holds when it goes down (a read just after the start may fail)
            pg.stop("fast")  # every connection of the MLflow server dropped; its requests answer 503
            down = time.monotonic()
            while time.monotonic() - down < 8:
                watch.poll(proc)
                time.sleep(0.2)
            pg.start()
            t0 = time.monotonic()
            down_s = t0 - down
            got = epochs()
            while got <= before and proc.poll() is None:  # until a further epoch reaches the database
                watch.poll(proc)
                time.sleep(0.2)
                got = epochs()
            seconds = time.monotonic() - t0 if got > before else float("nan")
            (rc,) = watch.wait(proc)
            r = row(tally(url, n_epochs), watch, seconds, rc, 2)
            r["notes"].append(f"PostgreSQL down {down_s:.1f} s with {before} epochs stored; the MLflow server "
                              f"answered 503 {log.read_text(errors='replace').count(' 503 ')} times meanwhile")
            return r
    finally:
        if pg.running():
            with contextlib.suppress(subprocess.SubprocessError):
                pg.stop("immediate")
        shutil.rmtree(pg_root, ignore_errors=True)


def s3_stop(root: Path) -> dict:
    with moto_process() as (endpoint, s3_env, moto):
        store = f"sqlite:///{root / 'mlflow.db'}"
        with mlflow_server_process(store, "s3://fairray-test/mlflow", {**s3_env, "MLFLOW_S3_ENDPOINT_URL": endpoint}
                                   ) as (url, _, _):
            n_epochs = 30
            spec, _, raw = write_spec(root, epochs=n_epochs, checkpoint_interval_s=0)
            raw["budget"].update(num_samples=2, max_concurrent=2, max_failures=0)
            raw["tracking"]["uri"] = url
            raw["storage"]["path"] = "s3://fairray-test/fairray"
            spec.write_text(yaml.safe_dump(raw))
            watch = Watch()
            proc = sweep(spec, cwd=root, env=s3_env, stderr=subprocess.PIPE)
            err: list[str] = []
            reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
            reader.start()  # the pipe drained from the start, so that the sweep never blocks on it
            c = MlflowClient(url)

            def epochs() -> int:
                exp = c.get_experiment_by_name("minmaxgap")
                runs = c.search_runs([exp.experiment_id], max_results=100) if exp else []
                return sum(METRIC in r.data.metrics for r in runs)

            _wait_epochs(epochs, 1, proc, watch)
            killed_ms = time.time() * 1000
            stop(moto, timeout_s=0)  # SIGKILL: the endpoint refuses every connection from now on
            t0 = time.monotonic()
            (rc,) = watch.wait(proc)
            seconds = time.monotonic() - t0
            reader.join(timeout=30)
            text = (err[0] if err else "").strip()
            line = text.splitlines()[-1] if text else ""
            r = row(tally(url, n_epochs), watch, seconds, rc, 2)
            runs = c.search_runs([c.get_experiment_by_name("minmaxgap").experiment_id], max_results=100)
            # half-written: a run presented as FINISHED that ended after the store was gone, or a run closed
            # without a reason
            late = [r_.info.run_id[:8] for r_ in runs if r_.info.status == "FINISHED" and r_.info.end_time >= killed_ms]
            unexplained = [r_.info.run_id[:8] for r_ in runs if r_.info.status == "FAILED"
                           and not r_.data.tags.get("fairray.failure_reason")]
            sweep_run = [r_ for r_ in runs if r_.data.tags.get("fairray.kind") == "sweep"]
            r["notes"].append(f"runs FINISHED after the kill: {len(late)} {late}; FAILED without a reason: "
                              f"{len(unexplained)} {unexplained}; sweep run "
                              + (f"{sweep_run[0].info.status}, its reason names the endpoint: "
                                 f"{endpoint in sweep_run[0].data.tags.get('fairray.failure_reason', '')}"
                                 if sweep_run else "missing"))
            ok = line.startswith(f"fairray: error: storage.path s3://fairray-test/fairray: the object store at "
                                 f"{endpoint}")
            r["notes"].append(f"last line{' (names storage.path and the endpoint)' if ok else ' (UNEXPECTED)'}:"
                              f" {line[:200]}")
            return r


def sqlite_race(root: Path) -> dict:
    (root / "shared").mkdir()  # the folder only: the store is created by the sweeps themselves
    uri = f"sqlite:///{root / 'shared' / 'mlflow.db'}"
    for name in ("race-a", "race-b"):
        spec, _, raw = write_spec(root, epochs=4)
        raw.update(name=name)
        raw["tracking"].update(uri=uri, experiment=name)
        raw["storage"]["path"] = str(root / name)
        raw["budget"].update(num_samples=2, max_concurrent=2)
        (root / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    watch = Watch()
    t0 = time.monotonic()
    procs = [sweep(root / f"{n}.yaml", cwd=root) for n in ("race-a", "race-b")]  # both open the fresh store
    rcs = watch.wait(*procs)
    seconds = time.monotonic() - t0
    a, b = (tally(uri, 4, n) for n in ("race-a", "race-b"))
    both = {k: a[k] + b[k] for k in ("finished", "lost", "repeated", "running", "redone", "missing", "resumed",
                                     "reasons", "notes")}
    return row(both, watch, seconds, max(rcs), 4)


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
    load = os.getloadavg()
    rows = []
    for name in names or list(FAULTS):
        label, fn = FAULTS[name]
        with tempfile.TemporaryDirectory(prefix=f"fr-fault-{name}-") as d:
            r = fn(Path(d))
        rows.append((label, r))
        print(f"{label}: {({k: v for k, v in r.items() if k not in ('steps', 'runs')})}", file=sys.stderr,
              flush=True)
    print(f"{'fault':<26} {'finished':>9} {'lost':>5} {'repeated':>9} {'RUNNING':>8} {'left':>5} {'recover s':>10}"
          f" {'seen':>8} {'epochs redone':>14} {'epochs missing':>15} {'exit':>5}")
    for label, r in rows:
        print(f"{label:<26} {r['finished']:>4} of {r['of']:<2} {r['lost']:>5} {r['repeated']:>9} {r['running']:>8}"
              f" {r['left']:>5} {r['seconds']:>10.0f} {r['seen']:>8} {r['redone']:>14} {r['missing']:>15} {r['rc']:>5}")
    for label, r in rows:
        if r["reasons"]:
            print(f"{label}: FAILED because {'; '.join(r['reasons'])}")
        for note in r["notes"]:
            print(f"{label}: {note}")
    print(f"load average (1, 5, 15 min) before: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, after: "
          + " ".join(f"{x:.1f}" for x in os.getloadavg()) + f"; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")

if __name__ == "__main__":
    main(sys.argv[1:])
