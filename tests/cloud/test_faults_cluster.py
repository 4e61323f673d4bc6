"""Faults of the trials themselves, injected into real sweeps: a worker node of a 3-node loopback Ray cluster is
SIGKILLed mid-trial (the trial resumes from its last checkpoint on the other node, within ``budget.max_failures``),
and a trial whose loss becomes NaN ends FAILED with the reason while the sweep goes on."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from fairray.cli import main
from tests.cloud.test_multinode import cluster  # noqa: F401 - the fixture: head (0 CPUs) and two 1-CPU workers

pytestmark = pytest.mark.slow
SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "minmaxgap.yaml"
METRIC = "dev/weighted_f1"


def write_spec(tmp_path: Path, *, train: dict, budget: dict, **extra) -> tuple[Path, str]:
    raw = yaml.safe_load(SPEC.read_text())
    raw["train"].update(train)
    raw["budget"].update(budget)
    raw["storage"]["path"] = str(tmp_path / "runs")
    raw.update(extra)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    return spec, f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"


def runs_training(db: Path) -> int:
    """Runs that have logged an epoch so far, read without MLflow (a client on a store being created races its
    migration)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return con.execute("select count(distinct run_uuid) from metrics where key = ?", (METRIC,)).fetchone()[0]
    except sqlite3.Error:
        return 0


def test_worker_node_killed_mid_trial_resumes_from_its_checkpoint(cluster, tmp_path):  # noqa: F811
    gcs, _, client_env, procs, _ = cluster
    epochs = 200  # long enough (tens of seconds) that both trials are mid-training when the node dies
    spec, uri = write_spec(tmp_path, train={"epochs": epochs, "checkpoint_interval_s": 0},
                           budget={"num_samples": 2, "max_concurrent": 2, "max_failures": 2})
    env = {**os.environ, **client_env}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "fairray", "sweep", str(spec), "--address", gcs, "--quiet"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while runs_training(tmp_path / "runs" / "mlflow.db") < 2:  # both trials (one per worker node) are training
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no epochs logged in time: {proc.communicate()[0][-3000:]}")
        time.sleep(0.3)
    os.killpg(procs[1].pid, signal.SIGKILL)  # the first worker node: its raylet, agents and trial process
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]

    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("minmaxgap").experiment_id], max_results=100)
    trials = [r for r in runs if r.data.tags.get("fairray.kind") == "trial"]
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3, [(r.data.tags, r.info.status) for r in runs]
    assert sorted(Counter(r.data.tags["fairray.trial_id"] for r in trials).values()) == [1, 1]  # one run each
    resumed = [r for r in trials if r.data.tags.get("fairray.resumed") == "true"]
    assert len(resumed) == 1, [r.data.tags for r in trials]  # the killed node's trial, retried once
    histories = {r.data.tags["fairray.trial_id"]: [m.step for m in c.get_metric_history(r.info.run_id, METRIC)]
                 for r in trials}
    for steps in histories.values():
        assert sorted(set(steps)) == list(range(epochs + 1)), (histories, out[-4000:])
        # resumed from the checkpoint of its last finished epoch: at most the epoch in progress is trained again
        assert len(steps) - len(set(steps)) <= 1, steps


def test_nan_trial_fails_with_its_reason_and_the_sweep_goes_on(tmp_path):
    spec, uri = write_spec(tmp_path, train={"epochs": 2}, budget={"max_concurrent": 2},
                           ablations={"nan": {"seeds": [0], "cells": [{"train.lr": [1.0e12, 0.001]}]}})
    rc = main(["sweep", str(spec), "--ablation", "nan", "--quiet"])
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("minmaxgap").experiment_id], max_results=100)
    trials = {float(r.data.params["train.lr"]): r for r in runs if r.data.tags.get("fairray.kind") == "trial"}
    assert sorted(trials) == [0.001, 1.0e12]
    diverged, healthy = trials[1.0e12], trials[0.001]
    assert diverged.info.status == "FAILED", diverged.info
    reason = diverged.data.tags["fairray.failure_reason"]
    assert reason.startswith("TrialError: ") and "nan" in reason.lower(), reason
    assert healthy.info.status == "FINISHED" and "test/weighted_f1" in healthy.data.metrics
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert rc == 0  # the sweep went on and ended: one trial finished, one failed for a reason of its own
