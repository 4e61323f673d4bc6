"""Faults injected into real sweeps: SIGKILL of the driver mid-sweep leaves no process of its local Ray cluster
behind, and ``--resume`` finishes every trial once, none twice, with no MLflow run left RUNNING."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from fairray.cli import main

pytestmark = pytest.mark.slow
SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "minmaxgap.yaml"


def finished_trials(db: Path) -> int:
    """Read the store without MLflow: a client on a store another process is still creating races its migration."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return con.execute("select count(*) from runs r join tags t on r.run_uuid = t.run_uuid "
                               "where t.key = 'fairray.kind' and t.value = 'trial' and r.status = 'FINISHED'"
                               ).fetchone()[0]
    except sqlite3.Error:  # tables not created yet
        return 0


def descendants(pid: int, seen: dict[int, float]) -> None:
    """Add every process below ``pid`` to ``seen`` (pid -> start time, so that a reused pid is not mistaken)."""
    try:
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                seen.setdefault(child.pid, child.create_time())
    except psutil.Error:
        pass


def survivors(seen: dict[int, float]) -> list[str]:
    out = []
    for pid, created in seen.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{pid} {proc.name()} {' '.join(proc.cmdline())[:120]}")
        except psutil.Error:
            pass
    return out


def sweep_spec(tmp_path: Path, *, epochs: int, num_samples: int) -> tuple[Path, str]:
    raw = yaml.safe_load(SPEC.read_text())
    raw["train"]["epochs"] = epochs
    raw["budget"].update(num_samples=num_samples, max_concurrent=2)
    raw["storage"]["path"] = str(tmp_path / "runs")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    return spec, f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"


def test_sigkill_driver_leaves_nothing_and_resume_finishes(tmp_path):
    spec, uri = sweep_spec(tmp_path, epochs=10, num_samples=3)
    proc = subprocess.Popen([sys.executable, "-m", "fairray", "sweep", str(spec), "--quiet"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    seen: dict[int, float] = {}
    deadline = time.monotonic() + 120
    while finished_trials(tmp_path / "runs" / "mlflow.db") < 1:
        descendants(proc.pid, seen)
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no trial finished in time: {proc.stdout.read().decode(errors='replace')[-3000:]}")
        time.sleep(0.2)
    descendants(proc.pid, seen)
    names = " ".join(psutil.Process(p).name() for p in seen if psutil.pid_exists(p))
    assert "raylet" in names and "gcs_server" in names, names  # the sweep's own local cluster was seen
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()

    left = survivors(seen)
    deadline = time.monotonic() + 20
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = survivors(seen)
    assert not left, f"processes of the killed sweep outlived it: {left}"

    assert main(["sweep", str(spec), "--resume", "--quiet"]) == 0
    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("minmaxgap").experiment_id],
                                         max_results=1000)
    trials = [r for r in runs if r.data.tags.get("fairray.kind") == "trial"]
    finished = [r.data.tags["fairray.trial_id"] for r in trials if r.info.status == "FINISHED"]
    assert len(finished) == len(set(finished)) == 3, [(r.data.tags["fairray.trial_id"], r.info.status)
                                                      for r in trials]  # the budget, each trial once
    # A trial started after Tune last saved its state is unknown to the restored sweep: its run is closed, not
    # left RUNNING, and a fresh sample takes its place (benchmarks/faults.py counts these as lost).
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
