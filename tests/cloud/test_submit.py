"""``fairray submit`` against a real Ray head (``ray start --head`` with its dashboard and job API on 127.0.0.1 and
token authentication), and what a sweep leaves behind: no credential of its environment in the MLflow store, its
artifacts, the Ray results or the job's logs.

One head for the module (about 7 s to start), one tiny sweep (2 trials x 1 epoch of the built-in data), stopped by
handle at the end: SIGTERM to this test's ``ray start --block`` and SIGKILL to what is left of its process group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

SECRET_NAMES = ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "RAY_AUTH_TOKEN")  # set by the head fixture

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "search_spaces" / "erm.yaml"


@pytest.fixture(scope="module")
def sweep(head, tmp_path_factory):
    """``fairray submit`` of a 2-trial sweep; (its folder, the spec's tracking URI, exit code, printed output)."""
    url, _, env = head
    root = tmp_path_factory.mktemp("submit")
    work = root / "work"
    work.mkdir()
    raw = yaml.safe_load(SPEC.read_text())
    raw["name"] = "erm-submit"
    raw["train"]["epochs"] = 1
    raw["budget"].update(num_samples=2, max_concurrent=2)
    raw["storage"] = {"path": str(root / "runs")}  # absolute: the job runs in its own copy of the working dir
    uri = f"sqlite:///{root / 'runs' / 'mlflow.db'}"
    raw["tracking"] = {"uri": uri}
    (work / "erm.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    out = subprocess.run([sys.executable, "-m", "fairray", "submit", "erm.yaml", "--address", url, "--quiet"],
                         capture_output=True, text=True, timeout=400, env={**os.environ, **env}, cwd=work)
    return root, uri, out


def test_submit_runs_the_sweep_on_the_cluster_and_mlflow_has_its_runs(sweep):
    root, uri, out = sweep
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "submitted job fairray-erm-submit-" in out.stderr
    assert "fairray sweep erm.yaml --address auto --quiet" in out.stderr
    assert "sweep 'erm-submit': 2 trials finished" in out.stdout  # the job's own logs, followed
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("erm-submit").experiment_id])
    kinds = sorted(r.data.tags.get("fairray.kind") for r in runs)
    assert kinds == ["sweep", "trial", "trial"] and all(r.info.status == "FINISHED" for r in runs)
    assert list((root / "runs" / "ray").iterdir())  # Ray results of the sweep, under its storage path


def test_no_credential_reaches_mlflow_the_ray_results_or_the_job(sweep, head):
    """The secrets were in the environment of the driver and the trials; they are in no file the sweep wrote, no
    MLflow param or tag, and not in the job's record (entrypoint, runtime env, metadata) or logs."""
    root, uri, out = sweep
    url, client, env = head
    assert out.returncode == 0
    probe = client.submit_job(entrypoint='test -n "$AWS_SECRET_ACCESS_KEY" && echo secret-is-set')
    assert client.get_job_status(probe) is not None
    from fairray.sweep.submit import Submission, follow

    assert follow(Submission(probe, url, "", root)) == 0  # the jobs' environment did hold the secret
    needles = [env[k].encode() for k in SECRET_NAMES]
    files = [p for p in (root / "runs").rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in files) and any(p.suffix == ".pt" for p in files)
    assert any("mlartifacts" in p.parts for p in files) and any("ray" in p.parts for p in files)
    leaked = [str(p) for p in files if any(n in p.read_bytes() for n in needles)]
    assert leaked == []
    c = MlflowClient(uri)
    for run in c.search_runs([c.get_experiment_by_name("erm-submit").experiment_id]):
        values = [*run.data.params.values(), *run.data.tags.values()]
        assert not [v for v in values if any(n.decode() in v for n in needles)], run.info.run_id
    (job,) = [j for j in client.list_jobs() if (j.submission_id or "").startswith("fairray-erm-submit-")]
    record = repr(job) + client.get_job_logs(job.submission_id) + out.stdout + out.stderr
    assert not [n for n in needles if n.decode() in record]



def test_the_rayjob_entrypoint_gets_tracking_uri_and_bucket_from_the_heads_environment(head, tmp_path):
    """clusters/kuberay/rayjob.yaml's entrypoint, as KubeRay's HTTPMode posts it, run by a real head whose
    environment holds MLFLOW_TRACKING_URI and FAIRRAY_STORAGE_PATH (a pod's env from the Secret): each ``--set``
    arrives as one argument with the value. ``fairray`` is swapped for a program that prints its arguments."""
    from fairray.sweep.submit import Submission, follow

    url, client, _ = head
    entrypoint = yaml.safe_load((REPO / "clusters" / "kuberay" / "rayjob.yaml").read_text())["spec"]["entrypoint"]
    assert entrypoint.startswith("fairray sweep ")
    (tmp_path / "argv.py").write_text("import json, sys\nprint('ARGV', json.dumps(sys.argv[1:]))\n")
    job = client.submit_job(entrypoint="python argv.py " + entrypoint.removeprefix("fairray "),
                            runtime_env={"working_dir": str(tmp_path),
                                         "env_vars": {"MLFLOW_TRACKING_URI": "http://mlflow.example:5000",
                                                      "FAIRRAY_STORAGE_PATH": "s3://bucket/fair ray"}})
    assert follow(Submission(job, url, "", tmp_path)) == 0
    (line,) = [x for x in client.get_job_logs(job).splitlines() if x.startswith("ARGV ")]
    argv = json.loads(line.removeprefix("ARGV "))
    assert argv[:4] == ["sweep", "/fairray/spec/sweep.yaml", "--address", "auto"]
    assert "tracking.uri=http://mlflow.example:5000" in argv and "storage.path=s3://bucket/fair ray" in argv


def test_ctrl_c_stops_the_job_and_the_sweep_stops_as_after_a_local_ctrl_c(head, tmp_path):
    """SIGINT to ``fairray submit``: the job gets SIGINT (RAY_JOB_STOP_SIGNAL), the sweep saves its state and
    closes its MLflow runs (KILLED, none left RUNNING), the job ends STOPPED and the command exits 130."""
    url, client, env = head
    raw = yaml.safe_load(SPEC.read_text())
    raw["name"] = "erm-stop"
    raw["train"]["epochs"] = 200  # long enough to be interrupted mid-trial
    raw["train"]["checkpoint_interval_s"] = 0  # a checkpoint per epoch: the signal below waits for the first one
    raw["budget"].update(num_samples=2, max_concurrent=2)
    raw["storage"] = {"path": str(tmp_path / "runs")}
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    raw["tracking"] = {"uri": uri}
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "erm.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = subprocess.Popen([sys.executable, "-m", "fairray", "submit", "erm.yaml", "--address", url, "--quiet"],
                            cwd=tmp_path / "work", env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        deadline = time.monotonic() + 240
        for line in proc.stdout:  # until a trial has reported its first epoch
            seen.append(line)
            if "Checkpoint successfully created" in line or time.monotonic() > deadline:
                break
        assert any("Checkpoint successfully created" in x for x in seen), "".join(seen[-40:])
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(seen) + rest
    assert proc.returncode == 130, text[-3000:]
    assert "stopping job fairray-erm-stop-" in text and "STOPPED" in text
    (job,) = [j for j in client.list_jobs() if (j.submission_id or "").startswith("fairray-erm-stop-")]
    assert str(job.status).endswith("STOPPED")
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("erm-stop").experiment_id])
    statuses = {r.data.tags["fairray.kind"]: r.info.status for r in runs if r.data.tags["fairray.kind"] == "sweep"}
    assert statuses == {"sweep": "KILLED"} and not [r for r in runs if r.info.status == "RUNNING"]
