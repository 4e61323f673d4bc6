"""One MLflow writer per sweep: trial processes log through it and never import MLflow themselves.

Importing ``mlflow`` (~1.8 s, most of it MLflow's GenAI package) and its SQL store module (SQLAlchemy, Alembic:
2-7 s on a loaded 2-core machine) cost every trial process seconds before its first trial could log, once per
concurrency slot. A sweep now starts one :class:`TrackingWriter` Ray actor as soon as Ray is up (its imports
overlap the trial processes' start); trials hold a :class:`RemoteTrialRun`, which has :class:`TrialRun`'s
methods and forwards them to the writer. ``fairray train`` (no sweep) keeps the direct :class:`TrialRun`.

Lifecycle and guarantees:

- ``open`` waits for the writer (the run id is needed); a retried trial resumes its own run, found by trial id,
  exactly as :meth:`TrialRun.open` does (the writer runs that code).
- Metrics are buffered in the trial as before (one send at most every :attr:`RemoteTrialRun.flush_s`) and sent
  without waiting; the actor runs one caller's calls in the order they were sent. An error of a send (the store
  refused the rows) is raised in the trial at its next call that looks (the next send, ``flush``, ``finish``), so a
  store failure still fails the trial, which Tune retries. ``flush`` (called before every checkpoint) waits until
  the writer has stored everything sent: a trial resumed from that checkpoint loses no epoch.
- Artifacts travel as bytes in the call (through Ray's object store when large), so the trial's folder may be
  removed as soon as the call is sent, and a trial on another node than the writer needs no access to the
  artifact store: the writer, on the driver's node, uploads them wherever the experiment keeps artifacts (a local
  folder, S3, a tracking server's proxy).
- ``finish`` and ``end`` wait until the run is closed (and raise what any earlier send raised), so a trial ends
  only once its run is FINISHED / FAILED / KILLED. A trial process killed before it closed its run leaves it
  RUNNING, as before: the driver drains the writer (:func:`stop_writer`: every call already received is run)
  before :func:`close_orphan_trials` closes what is left.
- The writer is pinned to the driver's node (it reaches the store as the driver does) and holds no CPU. If it
  dies, calls in flight fail their trials (retried by Tune), and Ray restarts it for the next calls.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fairray.tracking._mlflow import (
    _BATCH,
    _metrics_of,
    _open_trial_run,
    _rows,
    _send_metrics,
    client,
    end_run,
)

#: Seconds the driver waits, at the end of a sweep, for the writer to run the calls it has received (a store that
#: stopped answering is not waited for longer: what is left RUNNING is closed FAILED by ``close_orphan_trials``).
DRAIN_TIMEOUT_S = 120.0
#: Seconds a trial's ``open`` waits for a writer that is restarting (a retry can come right after the crash that
#: failed its trial; ``open`` finds the run by trial id, so repeating it is safe).
OPEN_RETRY_S = 60.0
#: Restarts of a writer that died (its in-flight calls fail their trials; later calls go to the new one).
MAX_RESTARTS = 3


class TrackingWriter:
    """The MLflow side of a sweep's trial runs, run as a Ray actor (see the module docstring).

    Lifecycle: created by the driver when Ray is up (imports MLflow and its store module, writes nothing);
    :meth:`ready` opens the store once the sweep's run exists; trials call :meth:`open`, :meth:`log`,
    :meth:`log_artifacts`, then :meth:`finish` or :meth:`end`; the driver calls :meth:`drain`, then kills it.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        import mlflow.tracking  # noqa: F401

        if not uri.startswith(("http://", "https://", "databricks")):
            # a database store: its module (SQLAlchemy, Alembic) is the larger import; a tracking-only MLflow
            # install has none
            with contextlib.suppress(ImportError):
                import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    def ready(self) -> None:
        """Open the store (its schema check), so the first trial's ``open`` does not wait for it."""
        client(self.uri)

    def open(self, experiment_id: str, parent_run_id: str | None, trial_id: str, tags: Mapping[str, str],
             params: Mapping[str, str]) -> tuple[str, bool]:
        return _open_trial_run(self.uri, experiment_id, parent_run_id, trial_id, tags, params)

    def log(self, run_id: str, rows: list[tuple]) -> None:
        _send_metrics(client(self.uri), run_id, _metrics_of(rows))

    def log_artifacts(self, run_id: str, files: list[tuple[str, bytes]], artifact_path: str | None) -> None:
        with tempfile.TemporaryDirectory(prefix="fairray-writer-") as d:
            for rel, data in files:
                path = Path(d, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            client(self.uri).log_artifacts(run_id, d, artifact_path)

    def finish(self, run_id: str, rows: list[tuple]) -> None:
        self.log(run_id, rows)
        end_run(self.uri, run_id, "FINISHED")

    def end(self, run_id: str, status: str, reason: str, rows: list[tuple]) -> None:
        try:
            self.log(run_id, rows)  # the epochs before a failure stay visible; a store that is down still gets it
        finally:
            end_run(self.uri, run_id, status, reason)

    def drain(self) -> None:
        """Nothing: it runs after every call the writer received before it."""


def start_writer(uri: str):
    """A :class:`TrackingWriter` actor of store ``uri`` on this driver's node (Ray must be up); returns its handle at
    once (its imports run meanwhile)."""
    import ray

    options: dict[str, Any] = {"num_cpus": 0, "max_restarts": MAX_RESTARTS, "max_task_retries": 0}
    if not ray.util.client.ray.is_connected():  # a Ray Client driver is not a node: the writer goes anywhere
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                        soft=False)
    return ray.remote(TrackingWriter).options(**options).remote(uri)


def stop_writer(writer, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    """Run every call ``writer`` has received (waiting at most ``timeout_s``), then end it. Safe to call twice."""
    import ray

    try:
        ray.get(writer.drain.remote(), timeout=timeout_s)
    except Exception:  # dead, or stuck on a store that does not answer: what it left RUNNING is closed as orphans
        pass
    finally:
        with contextlib.suppress(Exception):  # already gone, or Ray is down
            ray.kill(writer, no_restart=True)


class RemoteTrialRun:
    """:class:`TrialRun`'s interface, forwarded to a sweep's :class:`TrackingWriter` (see the module docstring):
    the trial process imports no MLflow."""

    #: Per-epoch metrics are sent at most this many seconds after they were logged (as ``TrialRun.flush_s``).
    flush_s = 5.0

    def __init__(self, writer, uri: str, run_id: str, resumed: bool) -> None:
        self.writer, self.uri, self.run_id, self.resumed = writer, uri, run_id, resumed
        self._pending: list[tuple] = []
        self._sent: list = []  # object refs of sends not yet seen to succeed
        self._flushed = time.monotonic()

    @classmethod
    def open(cls, writer, uri: str, experiment_id: str, parent_run_id: str | None, trial_id: str,
             tags: Mapping[str, str], params: Mapping[str, str]) -> RemoteTrialRun:
        import ray

        deadline = time.monotonic() + OPEN_RETRY_S
        while True:
            try:
                run_id, resumed = ray.get(writer.open.remote(experiment_id, parent_run_id, trial_id, dict(tags),
                                                             dict(params)))
                return cls(writer, uri, run_id, resumed)
            except ray.exceptions.ActorUnavailableError:  # restarting after it died: open is safe to repeat
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def log(self, values: Mapping[str, float], step: int) -> None:
        self._pending.extend(_rows(values, step))
        if len(self._pending) >= _BATCH or time.monotonic() - self._flushed >= self.flush_s:
            self._send()

    def _send(self) -> None:
        """Send the buffered rows without waiting; raise the error of an earlier send that has failed."""
        import ray

        pending, self._pending = self._pending, []
        if pending:
            self._sent.append(self.writer.log.remote(self.run_id, pending))
        self._flushed = time.monotonic()
        done, self._sent = ray.wait(self._sent, num_returns=len(self._sent), timeout=0)
        ray.get(done)

    def _wait(self) -> None:
        import ray

        sent, self._sent = self._sent, []
        ray.get(sent)

    def flush(self) -> None:
        """Send the buffered metrics and wait until the writer has stored everything sent so far."""
        self._send()
        self._wait()

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Send the files under ``local_dir`` (read now: the folder may go as soon as this returns)."""
        root = Path(local_dir)
        files = [(p.relative_to(root).as_posix(), p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]
        self._sent.append(self.writer.log_artifacts.remote(self.run_id, files, artifact_path))

    def finish(self) -> None:
        import ray

        pending, self._pending = self._pending, []
        ref = self.writer.finish.remote(self.run_id, pending)
        self._wait()
        ray.get(ref)

    def end(self, status: str, reason: str) -> None:
        import ray

        pending, self._pending = self._pending, []
        ref = self.writer.end.remote(self.run_id, status, reason, pending)  # runs after every earlier send
        try:
            self._wait()
        finally:
            ray.get(ref)

