"""One MLflow writer per sweep: trial processes log through it and never import MLflow themselves.

Importing ``mlflow`` (~1.8 s, most of it MLflow's GenAI package) and its SQL store module (SQLAlchemy, Alembic:
2-7 s on a loaded 2-core machine) cost every trial process seconds before its first trial could log, once per
concurrency slot. A sweep now starts one :class:`TrackingWriter` Ray actor as soon as Ray is up (its imports
overlap the trial processes' start); trials hold a :class:`RemoteTrialRun`, which has :class:`TrialRun`'s
methods and forwards them to the writer. ``fairray train`` (no sweep) keeps the direct :class:`TrialRun`.

Lifecycle and guarantees:

- Nothing but ``flush()``, ``finish`` and ``end`` waits for the writer: ``open`` (which resumes the run of a retried
  trial, found by trial id, exactly as :meth:`TrialRun.open`: the writer runs that code), the metric sends (one at
  most every :attr:`RemoteTrialRun.flush_s`, as before) and artifacts are sent and the trial goes on; the actor runs
  one caller's calls in the order they were sent, and a later call receives ``open``'s result by reference. An
  error of a call (the store refused it) is raised in the trial at its next send or wait, so a store failure still
  fails the trial, which Tune retries.
- ``flush()`` (before every checkpoint is reported) waits until the writer has stored everything sent: a trial
  resumed from that checkpoint loses no epoch. The loop sends the rows before it writes the checkpoint, so the
  writer stores them meanwhile.
- Artifacts travel through Ray's object store, one object per file (put straight from the file's memory map: a
  large ``model.pt`` is never copied into the trial's or the writer's heap, nor held with the other files), so
  the trial's folder may be removed as soon as the call is sent, and a trial on another node than the writer
  needs no access to the artifact store: the writer, on the driver's node, uploads them wherever the experiment
  keeps artifacts (a local folder, S3, a tracking server's proxy). Uploads run in their own concurrency group
  (:data:`ARTIFACT_THREADS` threads), so one trial's large upload does not hold up other trials' metrics and
  ``flush()``: a trial's artifacts may thus be stored after its later metric rows, but ``finish`` and ``end``
  are sent only once its uploads are done (``finish`` raises an upload's error: the run ends FAILED, not
  FINISHED without its checkpoint).
- ``finish`` and ``end`` wait until the run is closed (and raise what any earlier call raised), so a trial ends
  only once its run is FINISHED / FAILED / KILLED. A trial process killed before it closed its run leaves it
  RUNNING, as before: the driver drains the writer (:func:`stop_writer`: every call already received is run, and no upload is cut off)
  before :func:`close_orphan_trials` closes what is left.
- The writer is pinned to the driver's node (it reaches the store as the driver does) and holds no CPU. If it
  dies, Ray restarts it and runs the calls it had not answered again, once (see :data:`MAX_RESTARTS`).
- One writer serialises a sweep's store writes (one thread: a caller's calls stay in order); on SQLite, which takes
  one writer at a time, that costs nothing. A tracking server with many concurrent trials gets one request at a
  time (artifact uploads aside).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
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
#: A writer that died is always restarted (-1), and each call it had not answered is run again once on the new one
#: (:data:`CALL_RETRIES`): each is safe to repeat (``open`` finds the run it made by trial id; a metric row stored
#: twice is refused by the store's key and skipped by ``log_batch``; artifacts are overwritten; ending a run twice
#: ends it once). A call that kills the writer every time thus fails its own trial only, not the sweep's logging.
MAX_RESTARTS = -1
CALL_RETRIES = 1
#: Threads of the writer's ``artifacts`` concurrency group: uploads beside the one thread of metric and run calls.
ARTIFACT_THREADS = 2
ARTIFACTS = "artifacts"


class TrackingWriter:
    """The MLflow side of a sweep's trial runs, run as a Ray actor (see the module docstring).

    Lifecycle: created by the driver when Ray is up (imports MLflow and its store module, writes nothing);
    :meth:`ready` opens the store once the sweep's run exists; trials call :meth:`open`, :meth:`log`,
    :meth:`log_artifacts`, then :meth:`finish` or :meth:`end`; the driver calls :meth:`drain`, then kills it.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._uploading = 0  # log_artifacts calls running now (in the artifacts group), for drain
        self._idle = threading.Condition()
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

    # ``run``: what :meth:`open` returned, ``(run_id, resumed)``, or a run id

    def log(self, run: tuple[str, bool] | str, rows: list[tuple]) -> None:
        _send_metrics(client(self.uri), _run_id(run), _metrics_of(rows))

    def log_artifacts(self, run: tuple[str, bool] | str, files: list[tuple[str, Any]],
                      artifact_path: str | None) -> None:
        """Store ``files`` (``(relative path, object ref of the file's bytes)``; plain bytes are accepted too) under
        the run's ``artifact_path``; runs in the ``artifacts`` concurrency group (see the module docstring)."""
        with self._idle:
            self._uploading += 1
        try:
            self._upload(run, files, artifact_path)
        finally:
            with self._idle:
                self._uploading -= 1
                self._idle.notify_all()

    def _upload(self, run: tuple[str, bool] | str, files: list[tuple[str, Any]], artifact_path: str | None) -> None:
        import ray

        with tempfile.TemporaryDirectory(prefix="fairray-writer-") as d:
            for rel, data in files:
                path = Path(d, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(data, ray.ObjectRef):
                    data = ray.get(data)  # a read-only view of the object store's copy, not a heap copy
                with open(path, "wb") as f:
                    f.write(memoryview(data))
                del data  # one file's object pinned at a time
            client(self.uri).log_artifacts(_run_id(run), d, artifact_path)

    def finish(self, run: tuple[str, bool] | str, rows: list[tuple]) -> None:
        self.log(run, rows)
        end_run(self.uri, _run_id(run), "FINISHED")

    def end(self, run: tuple[str, bool] | str, status: str, reason: str, rows: list[tuple]) -> None:
        try:
            self.log(run, rows)  # the epochs before a failure stay visible; a store that is down still gets it
        finally:
            end_run(self.uri, _run_id(run), status, reason)

    def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
        """Wait until no upload is running (they run in the ``artifacts`` group, beside this one); every other call
        the writer received before this one has run already (one thread, in order). True when idle, False after
        ``timeout_s``. So that the driver's kill afterwards cuts no artifact in half; an upload still queued behind
        the group's threads is not waited for (it never started: its run is closed as an orphan)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._uploading == 0, timeout=timeout_s)


def _run_id(run: tuple[str, bool] | str) -> str:
    return run if isinstance(run, str) else run[0]


def start_writer(uri: str, cls: type[TrackingWriter] = TrackingWriter):
    """A :class:`TrackingWriter` actor of store ``uri`` on this driver's node (Ray must be up); returns its handle at
    once (its imports run meanwhile). ``cls``: a subclass (the tests' fault injection)."""
    import ray

    options: dict[str, Any] = {"num_cpus": 0, "max_restarts": MAX_RESTARTS, "max_task_retries": CALL_RETRIES}
    if not ray.util.client.ray.is_connected():  # a Ray Client driver is not a node: the writer goes anywhere
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                        soft=False)
    return ray.remote(concurrency_groups={ARTIFACTS: ARTIFACT_THREADS})(cls).options(**options).remote(uri)


def stop_writer(writer, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    """Run every call ``writer`` has received (waiting at most ``timeout_s``), then end it. Safe to call twice;
    None (``tracking.writer: false``: no writer) does nothing."""
    if writer is None:
        return
    import ray

    try:
        ray.get(writer.drain.remote(timeout_s), timeout=timeout_s + 10)
    except Exception:  # dead, or stuck on a store that does not answer: what it left RUNNING is closed as orphans
        pass
    finally:
        with contextlib.suppress(Exception):  # already gone, or Ray is down
            ray.kill(writer, no_restart=True)


class RemoteTrialRun:
    """:class:`TrialRun`'s interface, forwarded to a sweep's :class:`TrackingWriter` (see the module docstring):
    the trial process imports no MLflow. Only ``flush()``, ``finish`` and ``end`` wait for the writer."""

    #: Per-epoch metrics are sent at most this many seconds after they were logged (as ``TrialRun.flush_s``).
    flush_s = 5.0

    def __init__(self, writer, uri: str, opened) -> None:
        """``opened``: the object ref of the writer's ``open`` (``(run_id, resumed)``), passed to every later call,
        which Ray runs once it is ready."""
        self.writer, self.uri, self._opened = writer, uri, opened
        self._pending: list[tuple] = []
        self._sent: list = [opened]  # object refs of calls not yet seen to succeed
        self._uploads: list = []  # object refs of log_artifacts calls (in their own concurrency group)
        self._flushed = time.monotonic()

    @classmethod
    def open(cls, writer, uri: str, experiment_id: str, parent_run_id: str | None, trial_id: str,
             tags: Mapping[str, str], params: Mapping[str, str]) -> RemoteTrialRun:
        """The trial's run, opened (or resumed, found by trial id) by the writer without waiting for it."""
        return cls(writer, uri, writer.open.remote(experiment_id, parent_run_id, trial_id, dict(tags), dict(params)))

    @property
    def run_id(self) -> str:
        import ray

        return ray.get(self._opened)[0]

    @property
    def resumed(self) -> bool:
        import ray

        return ray.get(self._opened)[1]

    def log(self, values: Mapping[str, float], step: int) -> None:
        self._pending.extend(_rows(values, step))
        if len(self._pending) >= _BATCH or time.monotonic() - self._flushed >= self.flush_s:
            self._send()

    def _send(self) -> None:
        """Send the buffered rows without waiting; raise the error of an earlier call that has failed."""
        import ray

        pending, self._pending = self._pending, []
        if pending:
            self._sent.append(self.writer.log.remote(self._opened, pending))
        self._flushed = time.monotonic()
        done, self._sent = ray.wait(self._sent, num_returns=len(self._sent), timeout=0)
        ray.get(done)

    def _wait(self) -> None:
        import ray

        sent, self._sent = self._sent, []
        ray.get(sent)

    def flush(self, wait: bool = True) -> None:
        """Send the buffered metrics; with ``wait``, return once the writer has stored everything sent so far."""
        self._send()
        if wait:
            self._wait()

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Send the files under ``local_dir``, each its own object in Ray's object store (copied there now: the
        folder may go as soon as this returns); the writer uploads them beside other trials' calls."""
        import ray

        root = Path(local_dir)
        files = [(p.relative_to(root).as_posix(), ray.put(_mapped(p))) for p in sorted(root.rglob("*")) if p.is_file()]
        self._send()
        ref = self.writer.log_artifacts.options(concurrency_group=ARTIFACTS).remote(self._opened, files, artifact_path)
        self._uploads.append(ref)
        self._sent.append(ref)

    def _uploaded(self) -> list:
        """Wait until every upload sent has ended (stored or failed); returns their refs."""
        import ray

        uploads, self._uploads = self._uploads, []
        if uploads:
            ray.wait(uploads, num_returns=len(uploads))
        return uploads

    def finish(self) -> None:
        import ray

        ray.get(self._uploaded())  # an upload's error is raised before the run is marked FINISHED
        pending, self._pending = self._pending, []
        ref = self.writer.finish.remote(self._opened, pending)
        self._wait()
        ray.get(ref)

    def end(self, status: str, reason: str) -> None:
        import ray

        self._uploaded()
        pending, self._pending = self._pending, []
        ref = self.writer.end.remote(self._opened, status, reason, pending)  # runs after every earlier call
        try:
            self._wait()
        finally:
            ray.get(ref)


def _mapped(path: Path):
    """The bytes of ``path`` as a read-only memory map (``ray.put`` copies them into the object store without a heap
    copy); an empty file as empty bytes (nothing to map)."""
    import numpy as np

    if path.stat().st_size == 0:
        return b""
    # a plain ndarray view: pickle protocol 5 (Ray's serialiser) hands a plain ndarray's memory over out of band,
    # while a memmap subclass is pickled inline, i.e. copied into the pickle stream on the heap
    return np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)
