"""Ctrl-C a real sweep, then `--resume` it: finished trials are kept, interrupted ones continue in their
own MLflow runs, the rest are sampled, and nothing is left RUNNING."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from fairray.cli import main

pytestmark = pytest.mark.slow
SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "minmaxgap.yaml"


def _runs(uri: str):
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("minmaxgap")
    return [] if exp is None else c.search_runs([exp.experiment_id], max_results=1000)


def _finished_trials_readonly(db: Path) -> int:
    """Poll without MLflow: a client on a store another process is still creating would race its migration."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return con.execute("select count(*) from runs r join tags t on r.run_uuid = t.run_uuid "
                               "where t.key = 'fairray.kind' and t.value = 'trial' and r.status = 'FINISHED'"
                               ).fetchone()[0]
    except sqlite3.Error:  # tables not created yet
        return 0


def test_interrupt_then_resume(tmp_path):
    raw = yaml.safe_load(SPEC.read_text())
    raw["train"]["epochs"] = 40
    raw["budget"].update(num_samples=5, max_concurrent=2)
    raw["storage"]["path"] = str(tmp_path / "runs")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"

    proc = subprocess.Popen([sys.executable, "-m", "fairray", "sweep", str(spec), "--quiet"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(1)
        if _finished_trials_readonly(tmp_path / "runs" / "mlflow.db") >= 1:
            break
        assert proc.poll() is None, proc.stdout.read()
    else:
        proc.kill()
        pytest.fail("no trial finished within 240 s")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "--resume" in out

    runs = _runs(uri)
    parent = [r for r in runs if r.data.tags.get("fairray.kind") == "sweep"]
    assert len(parent) == 1 and parent[0].info.status == "KILLED"
    assert not [r for r in runs if r.info.status == "RUNNING"]
    finished_before = {r.data.tags["fairray.trial_id"] for r in runs
                       if r.data.tags.get("fairray.kind") == "trial" and r.info.status == "FINISHED"}
    assert 1 <= len(finished_before) < 5

    assert main(["sweep", str(spec), "--resume", "--quiet"]) == 0
    runs = _runs(uri)
    trials = [r for r in runs if r.data.tags.get("fairray.kind") == "trial"]
    assert sorted(r.info.status for r in trials) == ["FINISHED"] * 5
    assert finished_before <= {r.data.tags["fairray.trial_id"] for r in trials}
    assert [r.info.status for r in runs if r.data.tags.get("fairray.kind") == "sweep"] == ["FINISHED"]
