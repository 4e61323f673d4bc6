"""A sweep's trials log through one MLflow writer actor (fairray/tracking/_writer.py): with real Ray, real Tune and
a real SQLite store, the trial processes never import MLflow or SQLAlchemy, yet every trial's run is complete
(FINISHED, every epoch, its artifacts); a retry resumes its own run through the writer; a call repeated stores
once; a writer that dies is restarted and the trial's calls go on; a store error reaches the trial and its end
still closes the run with its status."""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from fairray.config import load_spec
from fairray.sweep import run_sweep
from fairray.tracking import RemoteTrialRun, ensure_experiment, start_sweep_run, start_writer, stop_writer

pytestmark = pytest.mark.slow
SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "minmaxgap.yaml"
OBJECTIVE = "dev/weighted_f1"


@pytest.fixture
def probed_ray(tmp_path, monkeypatch):
    """A local Ray whose every worker records its imports of MLflow, SQLAlchemy and the training loop."""
    probe = tmp_path / "probe"
    probe.mkdir()
    monkeypatch.setenv("FAIRRAY_IMPORT_PROBE", str(probe))  # the local cluster's workers inherit it
    # the probe module by its own folder (another installed package may be called ``tests``)
    path = [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": "_import_probe.install"})
    try:
        yield probe
    finally:
        ray.shutdown()


def _imports(probe: Path) -> dict[int, set[str]]:
    return {int(p.stem): set(p.read_text().split()) for p in probe.glob("*.txt")}


@pytest.mark.parametrize("writer", [True, False], ids=["writer", "direct"])
def test_trial_processes_import_no_mlflow_and_runs_are_complete(probed_ray, tmp_path, writer):
    """``tracking.writer: false``: the same complete runs, written by the trial processes themselves."""
    epochs = 2
    raw = yaml.safe_load(SPEC.read_text())
    raw["tracking"]["writer"] = writer
    raw["train"]["epochs"] = epochs
    raw["search"]["sampler"] = "random"
    raw["budget"].update(num_samples=4, max_concurrent=2, max_failures=0)
    raw["resources"].update(backend="function", cpus_per_worker=1)
    raw["storage"]["path"] = str(tmp_path / "runs")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))

    out = run_sweep(load_spec(spec), verbose=0)
    assert out.n_finished == out.n_trials == 4, out

    c = MlflowClient(out.tracking_uri)
    runs = c.search_runs([c.get_experiment_by_name(out.experiment).experiment_id], max_results=100)
    trials = [r for r in runs if r.data.tags.get("fairray.kind") == "trial"]
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    for r in trials:
        steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, OBJECTIVE))
        assert steps == list(range(epochs + 1)), steps  # every epoch, then the final evaluation
        assert "test/weighted_f1" in r.data.metrics and float(r.data.params["train.epochs"]) == epochs
        files = {a.path for folder in ("checkpoint", "predictions") for a in c.list_artifacts(r.info.run_id, folder)}
        assert {"checkpoint/model.pt", "predictions/dev.npz", "predictions/test.npz"} <= files, files

    # the processes that ran trials (Tune records each result's pid) imported the loop but no MLflow
    pids = set()
    for result in Path(out.ray_path).glob("*/result.json"):
        pids |= {json.loads(line)["pid"] for line in result.read_text().splitlines() if line.strip()}
    imports = _imports(probed_ray)
    assert pids and pids <= set(imports), (pids, imports)  # the probe ran in every trial process
    for pid in pids:
        assert "fairray.train.loop" in imports[pid], imports[pid]
        if writer:
            assert not imports[pid] & {"mlflow", "sqlalchemy", "alembic"}, (pid, imports[pid])
        else:  # each trial process opened the store itself
            assert {"mlflow", "sqlalchemy"} <= imports[pid], (pid, imports[pid])
    writers = [pid for pid, names in imports.items() if pid not in pids and "mlflow" in names]
    assert len(writers) == (1 if writer else 0), imports  # the one writer did, so the probe sees MLflow imports


def test_remote_run_resumes_reports_store_errors_and_survives_a_writer_restart(probed_ray, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = ensure_experiment(uri, "w", str(tmp_path))
    parent = start_sweep_run(uri, experiment_id, "w", str(tmp_path), {}, [(OBJECTIVE, "max")]).run_id
    writer = start_writer(uri)
    try:
        ray.get(writer.ready.remote())
        run = RemoteTrialRun.open(writer, uri, experiment_id, parent, "t0", {"fairray.kind": "trial"}, {"p": "1"})
        assert not run.resumed
        run.log({OBJECTIVE: 0.25}, step=0)
        art = tmp_path / "art"
        (art / "groups").mkdir(parents=True)
        (art / "groups" / "dev.csv").write_text("a,b\n1,2\n")
        run.log_artifacts(art)
        run.flush()
        c = MlflowClient(uri)
        assert [m.value for m in c.get_metric_history(run.run_id, OBJECTIVE)] == [0.25]

        # a call that reaches the writer twice (Ray retries calls of a writer that died) stores its rows once
        again = [(OBJECTIVE, 0.5, 1_700_000_000_000, 1)]
        ray.get([writer.log.remote(run.run_id, again), writer.log.remote(run.run_id, again)])
        assert sorted(m.value for m in c.get_metric_history(run.run_id, OBJECTIVE)) == [0.25, 0.5]

        # the writer dies mid-trial: Ray restarts it and the trial's calls go on, none lost
        ray.kill(writer, no_restart=False)
        run.log({OBJECTIVE: 0.625}, step=2)
        run.flush()
        # a retry of the trial (on the restarted writer) resumes the same run and finishes it
        retry = RemoteTrialRun.open(writer, uri, experiment_id, parent, "t0", {"fairray.kind": "trial"}, {"p": "1"})
        assert retry.resumed and retry.run_id == run.run_id
        retry.log({OBJECTIVE: 0.75}, step=3)
        retry.finish()
        done = c.get_run(run.run_id)
        assert done.info.status == "FINISHED" and done.data.tags["fairray.resumed"] == "true"
        assert sorted(m.value for m in c.get_metric_history(run.run_id, OBJECTIVE)) == [0.25, 0.5, 0.625, 0.75]
        (tmp_path / "dl").mkdir()
        assert Path(c.download_artifacts(run.run_id, "groups/dev.csv", str(tmp_path / "dl"))).read_text() == "a,b\n1,2\n"

        # a store error (a deleted run: MLflow refuses its metrics) reaches the trial at its next wait ...
        gone = RemoteTrialRun.open(writer, uri, experiment_id, parent, "t2", {"fairray.kind": "trial"}, {})
        c.delete_run(gone.run_id)
        gone.log({OBJECTIVE: 1.0}, step=0)
        with pytest.raises(Exception, match="(?i)active"):
            gone.flush()
        # ... and a trial's end closes its run with its status and reason, after its last metrics
        other = RemoteTrialRun.open(writer, uri, experiment_id, parent, "t1", {"fairray.kind": "trial"}, {})
        other.log({OBJECTIVE: 0.1}, step=0)
        other.end("FAILED", "TrialError: diverged")
        failed = c.get_run(other.run_id)
        assert failed.info.status == "FAILED" and failed.data.tags["fairray.failure_reason"] == "TrialError: diverged"
        assert [m.value for m in c.get_metric_history(other.run_id, OBJECTIVE)] == [0.1]
    finally:
        stop_writer(writer)


@pytest.fixture
def faults(monkeypatch):
    """tests/tracking/_writer_faults.py, importable here and (through PYTHONPATH, set by ``probed_ray``) in workers."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import _writer_faults

    return _writer_faults


def _store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = ensure_experiment(uri, "w", str(tmp_path))
    parent = start_sweep_run(uri, experiment_id, "w", str(tmp_path), {}, [(OBJECTIVE, "max")]).run_id
    return uri, experiment_id, parent


def test_a_large_upload_holds_up_no_other_trial_and_finish_waits_for_it(probed_ray, tmp_path, faults):
    """Artifacts go one object-store object per file and are uploaded in their own concurrency group: while one
    trial's upload is stuck, another trial's metrics are stored (its flush returns); the first trial's finish
    returns only once its upload is stored, and its artifacts arrive byte for byte."""
    import threading

    uri, experiment_id, parent = _store(tmp_path)
    writer = start_writer(uri, faults.BlockedUploads)
    try:
        big = RemoteTrialRun.open(writer, uri, experiment_id, parent, "big", {"fairray.kind": "trial"}, {})
        small = RemoteTrialRun.open(writer, uri, experiment_id, parent, "small", {"fairray.kind": "trial"}, {})
        art = tmp_path / "art"
        (art / "checkpoint").mkdir(parents=True)
        model = os.urandom(8 * 2**20)
        (art / "checkpoint" / "model.pt").write_bytes(model)
        (art / "empty.txt").write_bytes(b"")
        big.log({OBJECTIVE: 0.5}, step=0)
        big.log_artifacts(art)
        # the upload is under way (stuck): the other trial's metrics are stored meanwhile
        received = faults.marker(uri, "received")
        ray.get(writer.ready.remote())  # the writer's main thread is free (the upload holds another)
        small.log({OBJECTIVE: 0.25}, step=0)
        small.flush()
        c = MlflowClient(uri)
        assert [m.value for m in c.get_metric_history(small.run_id, OBJECTIVE)] == [0.25]
        deadline = time.monotonic() + 60  # the upload's own thread writes the marker: wait for it, untimed
        while not received.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received.exists() and not faults.marker(uri, "release").exists()
        # the driver's drain waits for a running upload (its kill afterwards would cut the artifact in half)
        assert ray.get(writer.drain.remote(0.5)) is False
        ready, _ = ray.wait(list(big._uploads), timeout=0)
        assert not ready, "the upload ended before its release: the flush above waited for it"
        # each file came as its own object-store object, not as bytes inside the call
        assert received.read_text().split() == ["ObjectRef", "ObjectRef"], received.read_text()

        done = threading.Event()
        finisher = threading.Thread(target=lambda: (big.finish(), done.set()), daemon=True)
        finisher.start()
        finisher.join(timeout=2.0)
        assert not done.is_set() and c.get_run(big.run_id).info.status == "RUNNING"  # waits for its upload
        faults.marker(uri, "release").touch()
        finisher.join(timeout=120)
        assert done.is_set() and c.get_run(big.run_id).info.status == "FINISHED"
        assert ray.get(writer.drain.remote(0.5)) is True  # no upload running any more
        (tmp_path / "dl").mkdir()
        got = Path(c.download_artifacts(big.run_id, "checkpoint/model.pt", str(tmp_path / "dl")))
        assert got.read_bytes() == model
        assert Path(c.download_artifacts(big.run_id, "empty.txt", str(tmp_path / "dl"))).read_bytes() == b""
        small.finish()
    finally:
        faults.marker(uri, "release").touch()
        stop_writer(writer)


def test_a_writer_killed_before_the_params_are_logged_resumes_the_run_with_them(probed_ray, tmp_path, faults):
    """The writer's process dies between ``create_run`` and the params' ``log_batch``: Ray restarts it and runs the
    ``open`` again, which finds the run (by trial id) and logs the params it lacks; the trial goes on in that run."""
    uri, experiment_id, parent = _store(tmp_path)
    writer = start_writer(uri, faults.DiesBeforeParams)
    try:
        params = {f"p{i}": str(i) for i in range(120)}  # more than one params batch
        run = RemoteTrialRun.open(writer, uri, experiment_id, parent, "t0", {"fairray.kind": "trial"}, params)
        run.log({OBJECTIVE: 0.5}, step=0)
        run.finish()
        assert faults.marker(uri, "died").exists()  # the first writer did die
        c = MlflowClient(uri)
        trials = [r for r in c.search_runs([experiment_id]) if r.data.tags.get("fairray.trial_id") == "t0"]
        assert [r.info.run_id for r in trials] == [run.run_id]  # one run, not a second one for the retry
        done = c.get_run(run.run_id)
        assert done.data.params == params and done.info.status == "FINISHED"
        assert [m.value for m in c.get_metric_history(run.run_id, OBJECTIVE)] == [0.5]
        # opening it again (a retried trial) logs nothing twice and changes nothing
        again = RemoteTrialRun.open(writer, uri, experiment_id, parent, "t0", {"fairray.kind": "trial"}, params)
        assert again.resumed and again.run_id == run.run_id
        again.finish()
        assert c.get_run(run.run_id).data.params == params
    finally:
        stop_writer(writer)


def test_a_file_goes_to_the_object_store_out_of_band_not_pickled_inline(tmp_path):
    """``_mapped``: the file's bytes travel as one out-of-band pickle-5 buffer (what Ray copies into the object store
    straight from the memory map), not inside the pickle stream (a heap copy of the whole file)."""
    from fairray.tracking._writer import _mapped

    path = tmp_path / "model.pt"
    data = os.urandom(1 << 20)
    path.write_bytes(data)
    buffers: list[pickle.PickleBuffer] = []
    stream = pickle.dumps(_mapped(path), protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 1 and len(stream) < 4096, (len(buffers), len(stream))
    assert bytes(buffers[0].raw()) == data
    assert pickle.loads(stream, buffers=buffers).tobytes() == data
    (tmp_path / "empty").write_bytes(b"")
    assert _mapped(tmp_path / "empty") == b""
