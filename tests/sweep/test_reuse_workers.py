"""``backend: train`` with ``resources.reuse_workers: true``, end to end (real Ray Tune, Optuna, MLflow, built-in data,
one local Ray started here with a few CPUs): a trial process keeps its worker group across its trials (one worker
process for two trials, checked in Ray's actor table against the trials' MLflow run times), two gloo workers train
as a Ray Train TorchTrainer's two workers do, a worker killed mid-trial fails the trial and Tune's retry resumes it
from its checkpoint on a fresh group, a MOASHA stop ends a slow trial at its rung on the kept group (its rows and
run closed by the trial itself), and no worker outlives the sweep. Bad values: one line, exit 2. (The group's actor
protocol, with scripted trials: tests/train/test_group.py.)"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

OBJECTIVES = [{"metric": "dev/weighted_f1", "direction": "max"},
              {"metric": "dev/tpr_gap/gender/worst:language", "direction": "min"}]


def _spec(tmp: Path, *, workers: int = 1, reuse: bool = True, trials: int = 2, epochs: int = 2,
          lr: list[float] | None = None, **budget) -> Path:
    space = ({"train.lr": {"type": "categorical", "choices": lr}} if lr else
             {"train.lr": {"type": "loguniform", "low": 1e-3, "high": 3e-3}})
    raw = {"name": "reuse", "method": {"name": "erm"}, "model": {"name": "mlp", "hidden": 16},
           "train": {"epochs": epochs, "batch_size": 32, "s_min": 1, "checkpoint_interval_s": 0},
           "search": {"sampler": "random", "space": space, "objectives": OBJECTIVES},
           "budget": {"num_samples": trials, "max_concurrent": 1, "seed": 0, "max_failures": 0, **budget},
           "resources": {"backend": "train", "num_workers": workers, "cpus_per_worker": 1,
                         **({"reuse_workers": True} if reuse else {})},
           "storage": {"path": str(tmp / "runs")}}
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ray_up():
    import ray

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ray.init(address="local", num_cpus=3, include_dashboard=True, configure_logging=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _actors(gcs: str, class_name: str, state: str | None = None):
    from ray.util.state import list_actors

    filters = [("class_name", "=", class_name)] + ([("state", "=", state)] if state else [])
    return list_actors(address=gcs, filters=filters, detail=True, limit=10_000, raise_on_missing_output=False)


def _sweep(path: Path):
    from fairray.config import load_spec
    from fairray.sweep import run_sweep

    return run_sweep(load_spec(path), verbose=0)  # joins the Ray of this module and leaves it up


def _trial_runs(outcome):
    client = MlflowClient(outcome.tracking_uri)
    exp = client.get_experiment_by_name(outcome.experiment)
    return client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{outcome.sweep_run_id}'")


def _trials_by_pid(pid: int) -> list[str]:
    """The trials whose start the group worker ``pid`` logged (GroupWorker.run) in this Ray session's logs."""
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    out = []
    for f in logs.glob(f"worker-*-{pid}.out"):
        out += [line.split("trial ", 1)[1].split(" ", 1)[0] for line in f.read_text().splitlines()
                if line.startswith("fairray: trial ") and line.endswith(f"pid {pid}")]
    return out


def _new_workers(gcs: str, before: set[str]):
    return [a for a in _actors(gcs, "GroupWorker") if a.actor_id not in before]


def test_two_trials_run_on_one_worker_process_which_ends_with_the_sweep(ray_up, tmp_path):
    before = {a.actor_id for a in _actors(ray_up, "GroupWorker")}
    trainers_before = len(_actors(ray_up, "RayTrainWorker"))
    outcome = _sweep(_spec(tmp_path))
    assert (outcome.n_trials, outcome.n_finished, outcome.n_errored) == (2, 2, 0), outcome
    runs = sorted(_trial_runs(outcome), key=lambda r: r.info.start_time)
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    workers = _new_workers(ray_up, before)
    assert len(workers) == 1, [(a.pid, a.state) for a in workers]  # one group, made once, for both trials
    (worker,) = workers
    # the worker's Ray log names the process that ran each trial: the same one for both
    ran = _trials_by_pid(worker.pid)
    assert sorted(ran) == sorted(r.data.tags["fairray.trial_id"] for r in runs), (ran, worker.pid)
    assert worker.state == "DEAD"  # torn down with the sweep: nothing left running
    assert len(_actors(ray_up, "RayTrainWorker")) == trainers_before  # no Ray Train run was started
    for r in runs:  # each trial its own MLflow run with its end checkpoint and metrics
        assert "dev/weighted_f1" in r.data.metrics
        assert any(f.path == "checkpoint" for f in MlflowClient(outcome.tracking_uri).list_artifacts(r.info.run_id))


def _final_metrics(outcome) -> dict[str, float]:
    (run,) = _trial_runs(outcome)
    assert run.info.status == "FINISHED"
    return run.data.metrics


def test_two_gloo_workers_train_as_ray_train_does(ray_up, tmp_path):
    """The same configuration on two CPU workers: a reused group (gloo, DDP) against a Ray Train TorchTrainer."""
    before = {a.actor_id for a in _actors(ray_up, "GroupWorker")}
    (tmp_path / "group").mkdir()
    (tmp_path / "train").mkdir()
    group = _sweep(_spec(tmp_path / "group", workers=2, trials=1, epochs=3, lr=[2e-3]))
    train = _sweep(_spec(tmp_path / "train", workers=2, reuse=False, trials=1, epochs=3, lr=[2e-3]))
    assert len(_new_workers(ray_up, before)) == 2
    a, b = _final_metrics(group), _final_metrics(train)
    keys = ["dev/loss", "train/loss", "dev/weighted_f1", "test/weighted_f1", "dev/tpr_gap/gender/worst:language"]
    for key in keys:
        assert a[key] == pytest.approx(b[key], abs=1e-4), (key, a[key], b[key])


def test_a_killed_worker_fails_the_trial_and_its_retry_resumes_on_a_fresh_group(ray_up, tmp_path):
    before = {a.actor_id for a in _actors(ray_up, "GroupWorker")}
    path = _spec(tmp_path, trials=1, epochs=40, max_failures=1)
    killed: list[int] = []

    def kill_after_first_checkpoint():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            # the trial's third checkpoint is in Ray's storage, so Tune has long registered its first (a checkpoint
            # reaches storage before its report reaches Tune): a retry has something to resume from
            if list((tmp_path / "runs" / "ray").glob("*/trial_*/checkpoint_000002")):
                alive = [a for a in _new_workers(ray_up, before) if a.state == "ALIVE"]
                if alive:
                    os.kill(alive[0].pid, signal.SIGKILL)
                    killed.append(alive[0].pid)
            time.sleep(0.1)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    outcome = _sweep(path)
    killer.join(timeout=5)
    assert killed, "the worker was never seen alive after the first checkpoint"
    assert (outcome.n_finished, outcome.n_errored) == (1, 0), outcome
    workers = _new_workers(ray_up, before)
    assert len(workers) == 2 and {a.state for a in workers} == {"DEAD"}, [(a.pid, a.state) for a in workers]
    assert killed[0] in {a.pid for a in workers}
    (run,) = _trial_runs(outcome)
    assert run.info.status == "FINISHED"
    history = MlflowClient(outcome.tracking_uri).get_metric_history(run.info.run_id, "dev/weighted_f1")
    steps = [m.step for m in history]
    assert set(range(40)) <= set(steps)  # every epoch logged, across the two attempts
    # the retry started from a checkpoint, not from scratch: its first epoch was trained (and logged) once only.
    # (Tune's result.json is no witness: on a retry Tune restores it from storage, where the first rows may not have
    # been synced yet, so the first attempt's rows can be lost there.)
    assert steps.count(0) == 1, sorted(steps)
    iterations = [json.loads(line)["training_iteration"] for f in Path(outcome.ray_path).glob("trial_*/result.json")
                  for line in f.read_text().splitlines() if line.strip()]
    assert iterations.count(1) <= 1, iterations  # Tune's count went on across the retry instead of restarting at 1


@pytest.mark.parametrize(("resources", "message"), [
    ({"backend": "train", "reuse_workers": "yes"}, "resources.reuse_workers: expected true or false, got 'yes'"),
    ({"backend": "function", "reuse_workers": True}, "reuse_workers: true keeps a worker group across trials of "
                                                     "backend: train, but the backend is 'function'"),
])
def test_a_bad_reuse_workers_value_is_one_line_and_exit_2(tmp_path, capsys, resources, message):
    from fairray.cli import main

    path = _spec(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["resources"] = resources
    path.write_text(yaml.safe_dump(raw))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()  # nothing written


GOOD, BAD, GOOD2 = 3e-3, 1e-6, 2.9e-3
#: The dominated trial's model and batch: epochs of several seconds (~30 GFLOP each: 2,562 rows through a 1024-wide,
#: three-deep MLP in batches of 8), longer than STOP_GRACE_S, where a stop answered one report late killed the group.
SLOW = {"model.hidden": 1024, "train.batch_size": 8}
FAST = {"model.hidden": 16, "train.batch_size": 32}


def test_moasha_stops_a_trial_at_its_rung_and_the_group_runs_the_next_trial(ray_up, tmp_path):
    """A stop from Tune (MOASHA) ends the dominated trial on its workers at the report Tune decided on: its rows up to
    the rung all in MLflow and none after, its run closed KILLED by the trial itself (not left RUNNING for the sweep's
    end to close), and the same worker process, group kept, runs the next trial to its end."""
    import optuna
    from optuna.trial import TrialState

    import fairray.sweep.marks as marks_module
    import fairray.sweep.searcher as searcher_module

    before = {a.actor_id for a in _actors(ray_up, "GroupWorker")}
    grace = 2
    path = _spec(tmp_path, trials=3, epochs=12)
    raw = yaml.safe_load(path.read_text())
    raw["model"]["depth"] = 3
    raw["search"]["space"] = {"train.lr": {"type": "loguniform", "low": BAD, "high": GOOD},
                              "model.hidden": {"type": "categorical", "choices": [16, 1024]},
                              "train.batch_size": {"type": "categorical", "choices": [8, 32]}}
    raw["search"]["early_stopping"] = {"type": "moasha", "grace": grace, "reduction": 2,
                                       "objectives": [{"metric": "dev/weighted_f1", "direction": "max"}]}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    base, close = searcher_module.FairraySearcher, marks_module.close_pruned_runs

    class Enqueued(base):  # the sweep's own searcher, with the configurations queued in a known order
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for params in ({"train.lr": GOOD, **FAST}, {"train.lr": BAD, **SLOW}, {"train.lr": GOOD2, **FAST}):
                self.study.enqueue_trial(params)

    at_end: dict[str, str] = {}

    def closing(uri, experiment_id, parent_run_id, pruned):  # the runs as the trials left them, before the sweep
        client = MlflowClient(uri)  # closes what is still open
        for r in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'"):
            at_end[r.data.tags["fairray.trial_id"]] = r.info.status
        return close(uri, experiment_id, parent_run_id, pruned)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(searcher_module, "FairraySearcher", Enqueued)
        mp.setattr(marks_module, "close_pruned_runs", closing)
        outcome = _sweep(path)
    assert outcome.n_errored == 0 and outcome.n_pruned >= 1 and outcome.n_finished + outcome.n_pruned == 3, outcome
    by_lr = {float(r.data.params["train.lr"]): r for r in _trial_runs(outcome)}
    assert by_lr[GOOD].info.status == "FINISHED" and by_lr[GOOD].data.metrics["final"] == 1.0
    bad = by_lr[BAD]
    assert bad.info.status == "KILLED" and bad.data.tags["fairray.pruned"] == "true", bad.data.tags
    assert "final" not in bad.data.metrics  # stopped on its workers, not trained to the end
    assert at_end[bad.data.tags["fairray.trial_id"]] == "KILLED", at_end  # closed by the trial, not by the sweep
    history = MlflowClient(outcome.tracking_uri).get_metric_history(bad.info.run_id, "dev/weighted_f1")
    assert sorted(m.step for m in history) == list(range(grace)), history  # every epoch to the rung, none after
    assert by_lr[GOOD2].info.status in ("FINISHED", "KILLED")  # ran after the stop (a later rung may prune it)
    parent = MlflowClient(outcome.tracking_uri).get_run(outcome.sweep_run_id)
    study = optuna.load_study(study_name="fairray", storage=parent.data.tags["fairray.optuna_study"])
    assert {t.params["train.lr"]: t.state for t in study.get_trials()}[BAD] == TrialState.PRUNED
    workers = _new_workers(ray_up, before)
    assert len(workers) == 1, [(a.pid, a.state) for a in workers]  # the group was kept through the stop
    (worker,) = workers
    assert sorted(_trials_by_pid(worker.pid)) == sorted(r.data.tags["fairray.trial_id"] for r in by_lr.values())
    assert worker.state == "DEAD"
