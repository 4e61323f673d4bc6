"""The reused worker group's actor protocol (fairray/train/_group.py) on a real local Ray, with scripted trials: a
stop names its trial (a late stop of the previous trial leaves the next one alone, whatever order the actor's two
threads run the calls in: the order is forced here, not timed), a report is held until the trial process has handed
it on, and a trial whose stream ends without its end is an error, not a finished trial. Also: the Tune trial
process of a reused group imports neither torch nor the training stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_up():
    import ray

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


def scripted(n: int, marks: str | None = None):
    """A trial body of ``n`` reports; with ``marks``, a file ``after-i`` there once report ``i`` returned."""

    def job(session) -> None:
        for i in range(n):
            session.report({"i": i}, None)
            if marks:
                Path(marks, f"after-{i}").touch()

    return job


@pytest.fixture
def worker(ray_up):
    import ray

    from fairray.train._group import GroupWorker

    actor = ray.remote(max_concurrency=2, max_restarts=0)(GroupWorker).remote()
    ray.get(actor.setup.remote(0, 1, None, "gloo", 1))
    yield actor
    ray.kill(actor)


def _start(actor, token: str, job):
    return actor.run.options(num_returns="streaming").remote(token, job, None, None)


def _next(stream):
    import ray

    return ray.get(next(stream))


def _drain(actor, token: str, stream) -> list[str]:
    """The rest of a trial's stream, each report acknowledged as the trial process does: its items' kinds."""
    import ray

    kinds = []
    for ref in stream:
        kind, _, _ = ray.get(ref)
        kinds.append(kind)
        if kind == "report":
            ray.get(actor.ack.remote(token))
    return kinds


def test_a_late_stop_of_the_previous_trial_leaves_the_next_one_running(worker):
    import ray

    assert _drain(worker, "A", _start(worker, "A", scripted(2))) == ["report", "report", "done"]
    b = _start(worker, "B", scripted(3))
    assert _next(b)[0] == "report"  # B is under way, held at its first report
    ray.get(worker.stop.remote("A"))  # A's stop, late: it has run (ray.get) while B runs
    ray.get(worker.ack.remote("B"))
    assert _drain(worker, "B", b) == ["report", "report", "done"]  # B ran to its end


def test_a_stop_that_runs_before_its_trial_starts_still_stops_it(worker):
    import ray

    ray.get(worker.stop.remote("C"))  # the actor ran the stop before the trial's call (two threads, no order)
    c = _start(worker, "C", scripted(3))
    assert _next(c)[0] == "report"
    assert _drain(worker, "C", c) == []  # stopped at its first report: no further report, no end
    assert _drain(worker, "D", _start(worker, "D", scripted(1))) == ["report", "done"]  # the worker goes on


def test_a_report_is_held_until_acknowledged_and_a_stop_ends_the_trial_there(worker, tmp_path):
    import ray

    e = _start(worker, "E", scripted(3, str(tmp_path)))
    assert _next(e)[0] == "report"
    ray.get(worker.ack.remote("E"))
    assert _next(e)[0] == "report"  # the second report exists only once the first was acknowledged
    assert (tmp_path / "after-0").exists()
    ray.get(worker.stop.remote("E"))  # Tune stopped the trial at its second report
    assert _drain(worker, "E", e) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after-0"]  # nothing ran past the stopped report


def _in_group(fn):
    """``fn()`` in a Ray task placed as a reused group's Tune trial process (bundle 0 of the trial's group)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from fairray.train._group import GroupShape

    shape = GroupShape(1, 1, 0, 1)
    pg = placement_group(shape.bundles)
    ray.get(pg.ready())
    try:
        task = ray.remote(num_cpus=0)(fn).options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=0, placement_group_capture_child_tasks=True))
        return ray.get(task.remote(shape))
    finally:
        remove_placement_group(pg)


def test_a_trial_whose_stream_ends_without_its_end_raises_and_a_finished_one_keeps_the_group(ray_up):
    def scenario(shape):
        from fairray.train._group import TrialIncomplete, WorkerGroup

        def stray_stop(session) -> None:  # a stop the trial process never sent
            session.stop.set()
            session.report({"i": 0}, None)
            session.report({"i": 1}, None)

        group = WorkerGroup(shape)
        seen = [m["i"] for m, _ in group.run(scripted(2), None, None)]
        try:
            list(group.run(stray_stop, None, None))
        except TrialIncomplete as exc:
            raised = str(exc)
        else:
            raised = None
        again = [m["i"] for m, _ in group.run(scripted(1), None, None)]
        return seen, raised, again, group.alive, group.pids

    seen, raised, again, alive, _ = _in_group(scenario)
    assert seen == [0, 1]
    assert raised is not None and "without its final report" in raised
    assert again == [0] and alive  # the same group ran the next trial


def test_closing_the_reports_stops_the_workers_at_that_report_and_keeps_the_group(ray_up, tmp_path):
    def scenario(shape):
        from fairray.train._group import WorkerGroup

        group = WorkerGroup(shape)
        reports = group.run(scripted(5, str(tmp_path)), None, None)
        next(reports)
        reports.close()  # what tune.report raising (a Tune stop at this report) does in group_trainable
        return sorted(p.name for p in tmp_path.iterdir()), group.alive

    marks, alive = _in_group(scenario)
    assert marks == [] and alive  # stopped at report 0, at once: nothing past it, the group kept


def test_the_trial_process_of_a_reused_group_imports_neither_torch_nor_the_training_stack():
    probe = ("import sys, fairray.sweep._group_trial as g; "
             "from fairray.train._group import GroupShape, TrialJob, group_for; "
             "heavy = [m for m in ('torch', 'fairray.sweep.runner', 'fairray.train.loop', 'mlflow', 'optuna') "
             "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
